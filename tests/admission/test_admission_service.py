"""AdmissionService: templates from ``admission.gatekeeper_dir`` plus applied objects from the
store, reloaded into one Gatekeeper set; a bad template is reported, the rest stay active."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from admission_support import LIBRARY, REPO, constraint

from admission.objects import ObjectStore
from admission.review import API_VERSION
from admission.service import AdmissionService
from admission.verify import review_for
from policy.errors import PolicyCompileError
from policy.opa_embedded import OpaEmbeddedEngine
from policy.store import PolicyStore
from zerogate.config import AdmissionSettings
from zerogate.store import Database

PRIVILEGED_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p", "namespace": "default"},
    "spec": {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]},
}


async def test_directory_and_store_are_merged(database: Database, tmp_path: Path) -> None:
    gk_dir = tmp_path / "gatekeeper"
    gk_dir.mkdir()
    shutil.copy(LIBRARY / "privileged-containers" / "template.yaml", gk_dir / "t1.yaml")
    broken = yaml.safe_load((LIBRARY / "host-namespaces" / "template.yaml").read_text())
    broken["spec"]["targets"][0]["rego"] = 'package x\n\nviolation[{"msg": m}] { m := nope() }\n'
    (gk_dir / "t2.yaml").write_text(yaml.safe_dump(broken))
    store = ObjectStore(database)
    store.apply([(dict(constraint("K8sPSPPrivilegedContainer", "no-priv").raw), "test")])

    service = AdmissionService(
        AdmissionSettings(gatekeeper_dir=gk_dir), native=None, audit=None, db=database
    )
    await service.start()
    try:
        assert service.ready()
        errors = service.gatekeeper.errors
        assert list(errors) == ["k8spsphostnamespace"]
        assert (
            errors["k8spsphostnamespace"][0].file == "gatekeeper/k8spsphostnamespace/template.rego"
        )
        violations, _ = service.gatekeeper.review(review_for(PRIVILEGED_POD))
        assert [v.constraint.name for v in violations] == ["no-priv"]
        # a constraint applied later is active after reload
        store.apply([(dict(constraint("K8sPSPPrivilegedContainer", "second").raw), "test")])
        service.reload()
        violations, _ = service.gatekeeper.review(review_for(PRIVILEGED_POD))
        assert sorted(v.constraint.name for v in violations) == ["no-priv", "second"]
    finally:
        await service.stop()
    assert not service.ready()


def _policy_dir(tmp_path: Path, *, root_data: dict[str, object] | None = None) -> Path:
    """A copy of the shipped native admission policy (with its data) to edit; ``root_data``
    is written as the top-level data.json."""
    root = tmp_path / "rego"
    shutil.copytree(REPO / "rego" / "admission", root / "admission")
    for test in root.rglob("*_test.rego"):
        test.unlink()
    if root_data:
        (root / "data.json").write_text(json.dumps(root_data))
    return root


def _review(pod: dict[str, object]) -> bytes:
    """An AdmissionReview of a CREATE of ``pod``, as the API server sends it."""
    request = {**review_for(pod), "uid": "u-1"}
    return json.dumps(
        {"apiVersion": API_VERSION, "kind": "AdmissionReview", "request": request}
    ).encode()


async def _service(tmp_path: Path, store: PolicyStore) -> AdmissionService:
    gk_dir = tmp_path / "gatekeeper"
    gk_dir.mkdir(exist_ok=True)
    shutil.copy(LIBRARY / "privileged-containers" / "template.yaml", gk_dir / "t1.yaml")
    (gk_dir / "c1.yaml").write_text(
        yaml.safe_dump(dict(constraint("K8sPSPPrivilegedContainer", "no-priv").raw))
    )
    service = AdmissionService(
        AdmissionSettings(gatekeeper_dir=gk_dir),
        native=lambda path, input_: store.engine.evaluate(path, input_),
        audit=None,
        native_source=store,
    )
    await service.start()
    return service


async def test_native_policy_is_compiled_in_and_follows_reloads(tmp_path: Path) -> None:
    root = _policy_dir(tmp_path)
    store = PolicyStore(OpaEmbeddedEngine(), root)
    store.reload(reason="start")
    service = await _service(tmp_path, store)
    try:
        assert service.gatekeeper.native_revision == store.revision
        answer = await service.admitter.validate(_review(PRIVILEGED_POD))
        message = answer["response"]["status"]["message"]
        assert "[no-priv]" in message  # Gatekeeper
        assert "[zerogate.admission] container 'c' must not be privileged" in message  # native
        first = store.revision

        # a reloaded native policy is what the next review is judged by
        policy = root / "admission" / "policy.rego"
        policy.write_text(
            policy.read_text()
            + '\ndeny contains "no pods named p" if object_under_review.metadata.name == "p"\n'
        )
        store.reload(reason="test")
        assert store.revision != first
        assert service.gatekeeper.native_revision == store.revision
        answer = await service.admitter.validate(_review(PRIVILEGED_POD))
        assert "[zerogate.admission] no pods named p" in answer["response"]["status"]["message"]
        # reloading the templates (a `zerogate admission apply`) keeps the native policy in
        service.reload()
        assert service.gatekeeper.native_revision == store.revision

        # a bad native revision is refused by the store: admission keeps the good one
        policy.write_text("package zerogate.admission\n\ndeny contains x if {\n")
        with pytest.raises(PolicyCompileError):
            store.reload(reason="test")
        answer = await service.admitter.validate(_review(PRIVILEGED_POD))
        assert "[zerogate.admission] no pods named p" in answer["response"]["status"]["message"]
    finally:
        await service.stop()
        store.engine.close()


async def test_native_policy_that_cannot_share_the_engine_runs_on_its_own(
    tmp_path: Path,
) -> None:
    # data.inventory is Gatekeeper's: a native policy with that key keeps its own engine
    root = _policy_dir(tmp_path, root_data={"inventory": {"mine": True}})
    store = PolicyStore(OpaEmbeddedEngine(), root)
    store.reload(reason="start")
    service = await _service(tmp_path, store)
    try:
        assert service.gatekeeper.native_revision is None
        answer = await service.admitter.validate(_review(PRIVILEGED_POD))
        message = answer["response"]["status"]["message"]
        assert "[no-priv]" in message
        assert "[zerogate.admission] container 'c' must not be privileged" in message
    finally:
        await service.stop()
        store.engine.close()


async def test_merged_engine_without_a_native_decision_fails_closed(tmp_path: Path) -> None:
    root = tmp_path / "rego"
    (root / "other").mkdir(parents=True)
    (root / "other" / "p.rego").write_text("package other\n\nx := 1\n")
    store = PolicyStore(OpaEmbeddedEngine(), root)
    store.reload(reason="start")
    service = await _service(tmp_path, store)
    try:
        assert service.gatekeeper.native_revision == store.revision
        compliant = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ok"}, "spec": {}}
        answer = await service.admitter.validate(_review(compliant))
        assert answer["response"]["allowed"] is False
        assert "zerogate.admission.decision is undefined" in answer["response"]["status"]["message"]
    finally:
        await service.stop()
        store.engine.close()
