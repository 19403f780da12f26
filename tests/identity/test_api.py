"""The identity HTTP API: request/response logic via TestClient, TLS via a real uvicorn."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from identity.api import router
from identity.bundle import Bundle, validate_jwt_svid
from identity.service import IdentityService, open_identity
from identity.spiffeid import SpiffeId, TrustDomain
from identity.tls import client_ssl_context
from zerogate.audit import AuditLog, tail
from zerogate.config import Settings
from zerogate.store import Database

TD = TrustDomain("example.org")
ADMIN = "spiffe://example.org/admin"
WORKLOAD = "spiffe://example.org/workload"


def header_caller(request: Request) -> SpiffeId | None:
    """Stands in for the server's mTLS caller dependency: the ID arrives in a header."""
    value = request.headers.get("x-test-caller")
    return SpiffeId.parse(value) if value else None


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[IdentityService, AuditLog, Database]]:
    db = Database.open(f"sqlite:///{tmp_path / 'z.db'}")
    audit = AuditLog.open(db, signing_key=tmp_path / "audit.pem")
    settings = Settings(
        data_dir=tmp_path, trust_domain="example.org", identity={"key_store": "memory"}
    )
    svc = open_identity(settings, db, audit)
    svc.entries.create({"spiffe_id": ADMIN, "selectors": ["unix:uid:0"], "admin": True})
    svc.entries.create({"spiffe_id": WORKLOAD, "selectors": ["unix:uid:1000"], "jwt_svid_ttl": 60})
    yield svc, audit, db
    audit.close()
    db.close()


@pytest.fixture
def client(service: tuple[IdentityService, AuditLog, Database]) -> TestClient:
    app = FastAPI()
    app.include_router(router(service[0], header_caller))
    return TestClient(app)


def _as(who: str) -> dict[str, str]:
    return {"x-test-caller": who}


def test_bundle_is_public(client: TestClient) -> None:
    resp = client.get("/v1/bundle")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    bundle = Bundle.from_json(TD, resp.content)
    assert len(bundle.x509_authorities) == 1 and len(bundle.jwt_authorities) == 1


def test_entries_need_an_admin(client: TestClient) -> None:
    assert client.get("/v1/entries").status_code == 401
    resp = client.get("/v1/entries", headers=_as(WORKLOAD))
    assert resp.status_code == 403 and "not an admin" in resp.json()["message"]
    assert client.get("/v1/entries", headers=_as(ADMIN)).status_code == 200


def test_entry_crud(
    client: TestClient, service: tuple[IdentityService, AuditLog, Database]
) -> None:
    h = _as(ADMIN)
    body = {"spiffe_id": "spiffe://example.org/new", "selectors": ["k8s:ns:prod"]}
    created = client.post("/v1/entries", json=body, headers=h)
    assert created.status_code == 201, created.text
    entry = created.json()
    assert client.get(f"/v1/entries/{entry['id']}", headers=h).json() == entry
    patched = client.patch(
        f"/v1/entries/{entry['id']}", params={"revision": 1}, json={"hint": "x"}, headers=h
    )
    assert patched.status_code == 200 and patched.json()["revision"] == 2
    stale = client.patch(
        f"/v1/entries/{entry['id']}", params={"revision": 1}, json={"hint": "y"}, headers=h
    )
    assert stale.status_code == 409 and stale.json()["code"] == "entry_conflict"
    assert client.post("/v1/entries", json=body, headers=h).status_code == 409
    assert client.delete(f"/v1/entries/{entry['id']}", headers=h).status_code == 200
    missing = client.get(f"/v1/entries/{entry['id']}", headers=h)
    assert missing.status_code == 404 and missing.json()["code"] == "entry_not_found"
    _, audit, db = service
    audit.flush()
    payload = [r for r in tail(db, 20) if r.kind == "identity.entry.created"][-1].payload
    assert payload["actor"] == ADMIN


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"spiffe_id": "spiffe://example.org/x", "selectors": []}, "at least one selector"),
        ({"spiffe_id": "spiffe://EXAMPLE.org/x", "selectors": ["a:b"]}, "trust domain"),
        ({"spiffe_id": "spiffe://example.org/x", "selectors": ["a:b"], "bogus": 1}, "unknown"),
        (["not", "an", "object"], "JSON object"),
    ],
)
def test_bad_entries_get_400(client: TestClient, body: object, message: str) -> None:
    resp = client.post("/v1/entries", json=body, headers=_as(ADMIN))
    assert resp.status_code == 400 and message in resp.json()["message"]


def test_jwt_svid_for_the_caller(
    client: TestClient, service: tuple[IdentityService, AuditLog, Database]
) -> None:
    svc = service[0]
    resp = client.post("/v1/svid/jwt", json={"audience": ["inference"]}, headers=_as(WORKLOAD))
    assert resp.status_code == 200, resp.text
    data = resp.json()
    claims = validate_jwt_svid(data["token"], "inference", svc.ca.bundle(), svc.ca.clock.now())
    assert str(claims.spiffe_id) == WORKLOAD
    # the entry's jwt_svid_ttl (60 s) caps what the caller asks for
    assert (claims.expires_at - claims.issued_at).total_seconds() <= 60  # type: ignore[operator]


def test_jwt_svid_refusals(
    client: TestClient, service: tuple[IdentityService, AuditLog, Database]
) -> None:
    aud = {"audience": ["inference"]}
    assert client.post("/v1/svid/jwt", json=aud).status_code == 401
    stranger = client.post("/v1/svid/jwt", json=aud, headers=_as("spiffe://example.org/nobody"))
    assert stranger.status_code == 403 and "no enabled registration entry" in stranger.text
    other = client.post("/v1/svid/jwt", json={**aud, "spiffe_id": ADMIN}, headers=_as(WORKLOAD))
    assert other.status_code == 403
    assert (
        client.post("/v1/svid/jwt", json={"audience": []}, headers=_as(WORKLOAD)).status_code == 422
    )
    service[0].deny_list.add("spiffe_id", WORKLOAD, reason="test")
    denied = client.post("/v1/svid/jwt", json=aud, headers=_as(WORKLOAD))
    assert denied.status_code == 403 and denied.json()["code"] == "identity_denied"


async def test_bundle_over_real_tls_with_the_server_svid(
    service: tuple[IdentityService, AuditLog, Database], tmp_path: Path
) -> None:
    svc = service[0]
    svid = svc.ca.issue_server_svid(svc.server_id, svc.server_dns_names)
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(svid.chain_pem())
    key.write_bytes(svid.key_pem())
    key.chmod(0o600)
    app = FastAPI()
    app.include_router(router(svc, header_caller))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, ssl_certfile=str(cert), ssl_keyfile=str(key), log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        verify = client_ssl_context(svc.ca.bundle())
        async with httpx.AsyncClient(verify=verify) as http:
            resp = await http.get(f"https://localhost:{port}/v1/bundle")
        assert resp.status_code == 200
        assert (
            Bundle.from_json(TD, resp.content).x509_authorities == svc.ca.bundle().x509_authorities
        )
        # a client trusting another CA refuses the server
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"https://localhost:{port}/v1/bundle")
    finally:
        server.should_exit = True
        await task
        sock.close()
