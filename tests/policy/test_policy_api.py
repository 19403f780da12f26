"""The OPA-compatible REST API and bundle server, served by a real uvicorn on loopback and
driven by the real ``opa-python-client`` (plus plain HTTP for shapes the client hides)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from opa_client import OpaClient
from opa_client.errors import DeletePolicyError, PolicyNotFoundError, RegoParseError
from policy_helpers import make_app, make_service, never_admin, serve
from typer.testing import CliRunner

from policy.bundle import opa_file_hash, read_bundle
from policy.cache import DecisionCache
from policy.cli import app as cli_app
from policy.opa_embedded import OpaEmbeddedEngine
from policy.service import PolicyService
from policy.store import PolicyStore

AUTHZ = 'package httpapi.authz\n\ndefault allow := false\n\nallow if input.user == "alice"\n'
BROKEN = "package httpapi.authz\n\nallow if {\n  input.user ==\n}\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "rego"
    (root / "app").mkdir(parents=True)
    (root / "app" / "policy.rego").write_text(
        'package zerogate.app\n\ndecision := {"allow": input.n > 1}\n'
    )
    (root / "app" / "policy_test.rego").write_text(
        "package zerogate.app_test\n\nimport data.zerogate.app\n\n"
        'test_n if app.decision.allow with input as {"n": 2}\n'
    )
    (root / "app" / "data.json").write_text('{"limit": 3}')
    return root


@pytest.fixture
def served(tree: Path) -> Iterator[tuple[str, PolicyService]]:
    service = make_service(tree)
    with serve(make_app(service)) as url:
        yield url, service
    service.close()


def _client(url: str) -> OpaClient:
    port = int(url.rsplit(":", 1)[1])
    return OpaClient(host="127.0.0.1", port=port, timeout=5)


def test_opa_python_client_round_trip(served: tuple[str, PolicyService]) -> None:
    url, service = served
    client = _client(url)
    assert client.check_health() is True
    assert client.update_policy_from_string(AUTHZ, "authz") is True
    assert set(client.get_policies_list()) == {"authz", "app/policy.rego"}
    assert client.query_rule({"user": "alice"}, "httpapi.authz", "allow")["result"] is True
    answer = client.query_rule({"user": "bob"}, "httpapi/authz", "allow")
    assert answer["result"] is False and answer["decision_id"]
    policy = client.get_policy("authz")["result"]
    assert policy["raw"] == AUTHZ
    assert [p["value"] for p in policy["ast"]["package"]["path"]] == ["data", "httpapi", "authz"]
    info = client.get_policies_info()["authz"]
    assert info["path"].endswith("/httpapi/authz")
    revision = service.revision

    with pytest.raises(RegoParseError) as refused:
        client.update_policy_from_string(BROKEN, "authz", rego_compat=False)
    assert refused.value.expression == "invalid_parameter"
    location = refused.value.errors[0]["location"]
    assert (location["file"], location["row"], location["col"]) == ("authz", 5, 1)
    assert client.query_rule({"user": "alice"}, "httpapi.authz", "allow")["result"] is True
    assert service.revision == revision

    assert client.delete_policy("authz") is True
    assert "result" not in client.query_rule({"user": "alice"}, "httpapi.authz", "allow")
    with pytest.raises(PolicyNotFoundError):
        client.get_policy("authz")
    with pytest.raises(DeletePolicyError):
        client.delete_policy("app/policy.rego")  # file-backed: delete the file instead
    client.close_connection()


def test_data_api_shapes(served: tuple[str, PolicyService]) -> None:
    url, service = served
    with httpx.Client(base_url=url) as http:
        ok = http.post(
            "/v1/data/zerogate/app/decision?metrics&provenance", json={"input": {"n": 5}}
        )
        body = ok.json()
        assert ok.status_code == 200 and body["result"] == {"allow": True}
        assert body["metrics"]["timer_rego_query_eval_ns"] > 0
        assert body["provenance"]["bundles"]["zerogate"]["revision"] == service.revision
        undefined = http.post("/v1/data/zerogate/app/nothing", json={"input": {}}).json()
        assert "result" not in undefined and undefined["decision_id"]
        got = http.get("/v1/data/app/limit")
        assert got.json()["result"] == 3
        with_input = http.get("/v1/data/zerogate/app/decision", params={"input": '{"n": 0}'})
        assert with_input.json()["result"] == {"allow": False}
        bad = http.post("/v1/data/zerogate/app", content=b"{not json")
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_parameter"
        not_object = http.post("/v1/data/zerogate/app", json=[1])
        assert not_object.status_code == 400
        deep = b"[" * 5000 + b"]" * 5000  # RecursionError in json.loads: was a 500 / reset
        too_deep = http.post("/v1/data/zerogate/app", content=b'{"input": ' + deep + b"}")
        assert too_deep.status_code == 400 and "nested too deeply" in too_deep.text
        too_deep_get = http.get("/v1/data/zerogate/app", params={"input": deep.decode()})
        assert too_deep_get.status_code == 400 and "nested too deeply" in too_deep_get.text
        huge = http.post("/v1/data/zerogate/app", content=b'{"input": {"n": 1e400}}')
        assert huge.status_code == 400 and "out of range" in huge.text  # was an eval 500
        assert http.put("/v1/data/app/limit", json=9).status_code == 204
        assert http.get("/v1/data/app/limit").json()["result"] == 9
        assert http.delete("/v1/data/app/limit").status_code == 204
        assert http.get("/v1/data/app/limit").json()["result"] == 3
        missing = http.delete("/v1/data/app/never")
        assert missing.status_code == 404 and missing.json()["code"] == "resource_not_found"


def test_eval_error_is_500_with_opa_shape(served: tuple[str, PolicyService]) -> None:
    url, _ = served
    with httpx.Client(base_url=url) as http:
        put = http.put("/v1/policies/conflict", content="package c\nv := input.a\nv := input.b\n")
        assert put.status_code == 200
        answer = http.post("/v1/data/c/v", json={"input": {"a": 1, "b": 2}})
        assert answer.status_code == 500
        assert answer.json()["code"] == "internal_error"
        assert "conflict" in answer.json()["message"]


def test_writes_need_admin(tree: Path) -> None:
    service = make_service(tree)
    with serve(make_app(service, never_admin)) as url, httpx.Client(base_url=url) as http:
        assert http.put("/v1/policies/x", content=AUTHZ).status_code == 403
        assert http.delete("/v1/policies/app/policy.rego").status_code == 403
        assert http.put("/v1/data/app/limit", json=1).status_code == 403
        assert http.post("/v1/policies/reload").status_code == 403
        assert http.get("/v1/policies").status_code == 200
        assert http.post("/v1/data/app/limit").json()["result"] == 3
    service.close()


def test_reload_api(served: tuple[str, PolicyService], tree: Path) -> None:
    url, service = served
    first = service.revision
    with httpx.Client(base_url=url) as http:
        (tree / "app" / "data.json").write_text('{"limit": 4}')
        done = http.post("/v1/policies/reload")
        assert done.status_code == 200
        assert done.json()["result"]["revision"] == service.revision != first
        second = service.revision
        (tree / "app" / "policy.rego").write_text("package zerogate.app\nallow if {\n")
        refused = http.post("/v1/policies/reload")
        assert refused.status_code == 400
        error = refused.json()["errors"][0]
        assert error["location"]["file"] == "app/policy.rego"
        assert error["location"]["row"] >= 2
        assert service.revision == second


def test_health_reports_not_ready_before_a_revision() -> None:
    store = PolicyStore(OpaEmbeddedEngine(), None)
    service = PolicyService(store, cache=DecisionCache(10), audit=None)
    with serve(make_app(service)) as url, httpx.Client(base_url=url) as http:
        assert http.get("/health").status_code == 500
        store.reload()
        assert http.get("/health").status_code == 200
    service.close()


def test_bundle_equals_offline_build_and_supports_etag(
    served: tuple[str, PolicyService], tree: Path, tmp_path: Path
) -> None:
    url, service = served
    out = tmp_path / "offline.tar.gz"
    result = CliRunner().invoke(cli_app, ["bundle", "build", str(tree), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with httpx.Client(base_url=url) as http:
        first = http.get("/bundles/zerogate.tar.gz")
        assert first.status_code == 200
        assert first.content == out.read_bytes()
        manifest = json.loads(read_bundle(first.content)[".manifest"])
        assert manifest["revision"] == service.revision
        assert manifest["roots"] == ["app", "zerogate/app"]
        etag = first.headers["etag"]
        again = http.get("/bundles/zerogate.tar.gz", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        (tree / "app" / "data.json").write_text('{"limit": 5}')
        service.reload()
        changed = http.get("/bundles/zerogate.tar.gz", headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        assert http.get("/bundles/other.tar.gz").status_code == 404


def test_signed_bundle_follows_opa_signing_spec(tree: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    service = make_service(tree)
    application = make_app(service)
    from policy.api import router

    application.router.routes.clear()
    application.include_router(router(service, lambda: None, signing_key=key))
    with serve(application) as url, httpx.Client(base_url=url) as http:
        files = read_bundle(http.get("/bundles/zerogate.tar.gz").content)
    token = json.loads(files.pop(".signatures.json"))["signatures"][0]
    claims = jwt.decode(token, key.public_key(), algorithms=["ES256"])
    listed = {f["name"]: f["hash"] for f in claims["files"]}
    assert set(listed) == set(files)
    for name, body in files.items():
        assert listed[name] == opa_file_hash(name, body)
    assert listed["app/policy.rego"] == hashlib.sha256(files["app/policy.rego"]).hexdigest()
    service.close()
