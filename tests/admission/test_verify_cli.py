"""``zerogate admission verify|apply|sync|list|manifests`` through the Typer app."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
import yaml
from admission_support import HERE, LIBRARY, REPO
from typer.testing import CliRunner

from admission.cli import app
from admission.manifests import webhook_configurations
from admission.objects import ObjectStore
from zerogate.store import Database

runner = CliRunner()
SUITES = sorted(LIBRARY.glob("*/suite.yaml"))
SHIPPED = HERE / "suites" / "shipped" / "suite.yaml"


def test_library_and_shipped_suites_pass() -> None:
    assert len(SUITES) >= 10
    result = runner.invoke(app, ["verify", *map(str, SUITES), str(SHIPPED)])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok\t") == len(SUITES) + 1
    assert "FAIL" not in result.output


def test_run_filter_and_verbose() -> None:
    result = runner.invoke(app, ["verify", "-v", "--run", "privileged$", str(SHIPPED)])
    assert result.exit_code == 0, result.output
    assert "--- PASS: zerogate-admission/privileged" in result.output
    assert "PASS: 1/1" in result.output


def test_failing_case_exits_2_and_says_why(tmp_path: Path) -> None:
    suite_dir = tmp_path / "allowedrepos"
    shutil.copytree(LIBRARY / "allowedrepos", suite_dir)
    suite = suite_dir / "suite.yaml"
    doc = yaml.safe_load(suite.read_text())
    doc["tests"][0]["cases"][0]["assertions"] = [{"violations": 1}]  # the allowed pod
    suite.write_text(yaml.safe_dump(doc))
    result = runner.invoke(app, ["verify", str(suite)])
    assert result.exit_code == 2
    assert "--- FAIL: repo-is-openpolicyagent/example-allowed" in result.output
    assert "got 0 violations, want 1" in result.output
    assert f"FAIL\t{suite}" in result.output


def test_suite_that_cannot_run_exits_1(tmp_path: Path) -> None:
    (tmp_path / "suite.yaml").write_text("kind: NotASuite\n")
    result = runner.invoke(app, ["verify", str(tmp_path / "suite.yaml")])
    assert result.exit_code == 1
    assert "kind must be Suite" in result.output
    assert runner.invoke(app, ["verify", str(tmp_path / "missing.yaml")]).exit_code == 1


@pytest.fixture
def configured(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the CLI's settings at the test database (environment, as an operator would)."""
    monkeypatch.setenv("ZEROGATE_DATABASE_URL", database_url)
    monkeypatch.setenv("ZEROGATE_DATA_DIR", str(tmp_path / "data"))
    return database_url


def test_apply_persists_and_refuses_broken_templates(configured: str, tmp_path: Path) -> None:
    template = LIBRARY / "privileged-containers" / "template.yaml"
    cons = next((LIBRARY / "privileged-containers" / "samples").glob("*/constraint.yaml"))
    result = runner.invoke(app, ["apply", str(template), str(cons)])
    assert result.exit_code == 0, result.output
    assert "applied template/k8spspprivilegedcontainer" in result.output
    assert "applied constraint/K8sPSPPrivilegedContainer/psp-privileged-container" in result.output
    # they survive: a fresh Database sees them
    db = Database.open(configured)
    try:
        applied = ObjectStore(db).load()
        assert [t.name for t in applied.templates] == ["k8spspprivilegedcontainer"]
        assert [c.key for c in applied.constraints] == [
            "K8sPSPPrivilegedContainer/psp-privileged-container"
        ]
    finally:
        db.close()
    listed = runner.invoke(app, ["list", "--output", "json"])
    assert listed.exit_code == 0, listed.output
    assert '"name": "k8spspprivilegedcontainer"' in listed.output
    # a template that does not compile is refused, nothing stored
    bad = tmp_path / "bad.yaml"
    body = yaml.safe_load(template.read_text())
    body["metadata"]["name"] = "k8sbroken"
    body["spec"]["crd"]["spec"]["names"]["kind"] = "K8sBroken"
    body["spec"]["targets"][0]["rego"] = (
        'package broken\n\nviolation[{"msg": m}] {\n  m := nope(1)\n}\n'
    )
    bad.write_text(yaml.safe_dump(body))
    result = runner.invoke(app, ["apply", str(bad)])
    assert result.exit_code == 2
    assert "k8sbroken: gatekeeper/k8sbroken/template.rego:4:" in result.output
    db = Database.open(configured)
    try:
        assert [t.name for t in ObjectStore(db).load().templates] == ["k8spspprivilegedcontainer"]
    finally:
        db.close()
    result = runner.invoke(app, ["apply", str(REPO / "pyproject.toml")])
    assert result.exit_code == 1


def test_sync_inventory(configured: str, tmp_path: Path) -> None:
    objs = tmp_path / "inv.yaml"
    objs.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {env: prod}}\n---\n"
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\n"
        "metadata: {name: a, namespace: prod}\nspec: {}\n"
    )
    result = runner.invoke(app, ["sync", str(objs)])
    assert result.exit_code == 0, result.output
    assert "synced 2 objects" in result.output
    db = Database.open(configured)
    try:
        inv = ObjectStore(db).load().inventory
        assert sorted(o["kind"] for o in inv) == ["Ingress", "Namespace"]
    finally:
        db.close()
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Namespace\n")
    result = runner.invoke(app, ["sync", str(bad)])
    assert result.exit_code == 1
    assert "need apiVersion, kind and metadata.name" in result.output


CA = b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def test_manifests(tmp_path: Path, configured: str) -> None:
    pem = tmp_path / "bundle.pem"
    pem.write_bytes(CA)
    result = runner.invoke(
        app, ["manifests", "--ca-bundle", str(pem), "--namespace", "zg", "--service", "hook"]
    )
    assert result.exit_code == 0, result.output
    validating, mutating = yaml.safe_load_all(result.output)
    assert validating["kind"] == "ValidatingWebhookConfiguration"
    assert mutating["kind"] == "MutatingWebhookConfiguration"
    for doc, path in ((validating, "/admission/validate"), (mutating, "/admission/mutate")):
        hook = doc["webhooks"][0]
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["sideEffects"] == "None"
        assert hook["failurePolicy"] == "Fail"
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == CA
        assert hook["clientConfig"]["service"] == {
            "namespace": "zg",
            "name": "hook",
            "path": path,
            "port": 443,
        }
        assert hook["namespaceSelector"]["matchExpressions"] == [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["kube-system", "zg"],
            }
        ]
    assert validating["webhooks"][0]["timeoutSeconds"] == 4  # 3 s deadline + 1
    assert mutating["webhooks"][0]["timeoutSeconds"] == 2
    assert mutating["webhooks"][0]["rules"][0]["resources"] == ["pods"]
    not_pem = tmp_path / "x.pem"
    not_pem.write_text("hello")
    result = runner.invoke(app, ["manifests", "--ca-bundle", str(not_pem)])
    assert result.exit_code == 1 and "PEM" in result.output


def test_manifests_default_to_the_live_trust_bundle(configured: str) -> None:
    """Without --ca-bundle the caBundle is our CA's bundle (what ``zerogate bundle show``
    prints); before any CA exists the command says how to get one."""
    result = runner.invoke(app, ["manifests"])
    assert result.exit_code == 1
    assert "start zerogate serve once or pass --ca-bundle" in result.output
    from identity.service import open_identity
    from zerogate.config import load_settings

    settings = load_settings()
    db = Database.open(configured)
    try:
        bundle_pem = open_identity(settings, db, None).ca.bundle().to_pem().encode()
    finally:
        db.close()
    result = runner.invoke(app, ["manifests"])
    assert result.exit_code == 0, result.output
    for doc in yaml.safe_load_all(result.output):
        assert base64.b64decode(doc["webhooks"][0]["clientConfig"]["caBundle"]) == bundle_pem


def test_fail_open_maps_to_ignore() -> None:
    docs = webhook_configurations(ca_bundle_pem=CA, failure_mode="allow", validate_timeout_s=40)
    assert docs[0]["webhooks"][0]["failurePolicy"] == "Ignore"
    assert docs[0]["webhooks"][0]["timeoutSeconds"] == 30  # Kubernetes' maximum
