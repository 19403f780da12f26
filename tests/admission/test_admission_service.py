"""AdmissionService: templates from ``admission.gatekeeper_dir`` plus applied objects from the
store, reloaded into one Gatekeeper set; a bad template is reported, the rest stay active."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from admission_support import LIBRARY, constraint

from admission.objects import ObjectStore
from admission.service import AdmissionService
from admission.verify import review_for
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
