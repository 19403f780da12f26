"""The Workload API end to end: a real grpclib server on a Unix socket, attested by
SO_PEERCRED, and py-spiffe's real ``WorkloadApiClient`` in a separate process (tests run as
root, so entries select ``unix:uid:0``)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from workload_support import MemorySource

from identity.attestation import WorkloadAttestation
from identity.ca import CertificateAuthority
from identity.denylist import DenyList
from identity.entries import EntryRepository, EntrySpec, Selector
from identity.keys import MemoryKeyManager
from identity.rotation import AuthorityManager
from identity.service import open_identity
from identity.spiffeid import SpiffeId, TrustDomain
from identity.workload_cache import WorkloadCache
from identity.workload_core import CoreIdentitySource
from identity.workload_server import WorkloadApiServer, build_workload_api_server
from zerogate.clock import SystemClock
from zerogate.config import Settings
from zerogate.store import Database

CLIENT = Path(__file__).with_name("workload_client.py")
TD = TrustDomain("example.org")
WORKLOAD_ID = "spiffe://example.org/workload"
UID = os.getuid()


@dataclass
class Served:
    db: Database
    manager: AuthorityManager
    entries: EntryRepository
    deny: DenyList
    server: WorkloadApiServer
    socket: Path
    entry_id: str


def make_core(db: Database) -> tuple[AuthorityManager, CertificateAuthority, EntryRepository]:
    clock = SystemClock()
    manager = AuthorityManager(trust_domain=TD, db=db, keys=MemoryKeyManager(), clock=clock)
    manager.tick()  # prepare + activate the first CA and JWT key
    ca = CertificateAuthority(manager, clock=clock)
    entries = EntryRepository(db, clock=clock, trust_domain=TD)
    return manager, ca, entries


def entry_spec(spiffe_id: str, *selectors: str) -> EntrySpec:
    return EntrySpec(
        spiffe_id=SpiffeId.parse(spiffe_id), selectors=tuple(Selector.parse(s) for s in selectors)
    )


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    db = Database.open(f"sqlite:///{tmp_path / 'zerogate.db'}")
    manager, ca, entries = make_core(db)
    entry = entries.create(entry_spec(WORKLOAD_ID, f"unix:uid:{UID}"))
    deny = DenyList(db, clock=SystemClock(), refresh_s=0.0)
    cache = WorkloadCache(CoreIdentitySource(ca, entries), gate=deny, poll_interval_s=0.05)
    sock = tmp_path / "workload.sock"
    server = WorkloadApiServer(sock, cache, WorkloadAttestation())
    await server.start()
    try:
        yield Served(db, manager, entries, deny, server, sock, entry.id)
    finally:
        await server.stop()
        db.close()


def _env(sock: Path) -> dict[str, str]:
    return {**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"unix://{sock}"}


async def run_client(sock: Path, *args: str, timeout: float = 30) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT),
        *args,
        env=_env(sock),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines, err.decode()
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def test_py_spiffe_client_completes_every_call(served: Served) -> None:
    result = await run_client(served.socket, "all", "spiffe://example.org/db")
    assert result["x509_spiffe_id"] == WORKLOAD_ID
    assert result["verified_root"]  # the chain verified against the fetched bundle
    assert result["jwt_spiffe_id"] == WORKLOAD_ID
    assert result["jwt_audience"] == ["spiffe://example.org/db"]
    assert result["validated_spiffe_id"] == WORKLOAD_ID
    assert result["jwt_bundle_kids"]  # JWKS keys each carry a kid


async def test_watcher_receives_rotated_svid(served: Served) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT),
        "watch",
        env=_env(served.socket),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None

    async def next_update() -> dict[str, Any]:
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)  # type: ignore[union-attr]
            assert line, "watcher exited"
            msg: dict[str, Any] = json.loads(line)
            assert msg["event"] != "error", msg
            if msg["event"] == "update":
                return msg

    try:
        first = await next_update()
        assert first["spiffe_ids"] == [WORKLOAD_ID]
        assert first["anchors"] == 1
        served.manager.force_rotate()  # forced rotation: a new signing CA
        second = await next_update()
        assert second["serial"] != first["serial"]
        assert second["issuer"] != first["issuer"] or second["anchors"] == 2
        assert second["anchors"] == 2  # old and new CA both in the bundle
        assert not second["verified_root"].startswith("verify failed"), second
    finally:
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 20)


async def test_missing_security_header_is_invalid_argument(served: Served) -> None:
    for method in ("FetchX509SVID", "FetchJWTBundles", "ValidateJWTSVID"):
        result = await run_client(served.socket, "raw", method, "--no-header")
        assert result["code"] == "INVALID_ARGUMENT", (method, result)
        assert "security header" in result["details"]


async def test_caller_without_entry_is_permission_denied(served: Served) -> None:
    served.entries.delete(served.entry_id)
    served.entries.create(entry_spec("spiffe://example.org/other", "unix:uid:4242"))
    for method in ("FetchX509SVID", "FetchX509Bundles", "FetchJWTBundles"):
        result = await run_client(served.socket, "raw", method)
        assert result["code"] == "PERMISSION_DENIED", (method, result)
    result = await run_client(served.socket, "raw", "FetchJWTSVID", "--audience", "x")
    assert result["code"] == "PERMISSION_DENIED"


async def test_empty_audience_is_invalid_argument(served: Served) -> None:
    result = await run_client(served.socket, "raw", "FetchJWTSVID")
    assert result["code"] == "INVALID_ARGUMENT"
    assert "audience" in result["details"]


async def test_bad_token_to_validate_is_invalid_argument(served: Served) -> None:
    result = await run_client(
        served.socket, "raw", "ValidateJWTSVID", "--audience", "a", "--token", "not.a.jwt"
    )
    assert result["code"] == "INVALID_ARGUMENT"


async def test_validate_returns_claims_with_aud_list(served: Served) -> None:
    fetched = await run_client(served.socket, "raw", "FetchJWTSVID", "--audience", "svc-a")
    ((spiffe_id, token),) = fetched["svids"]
    assert spiffe_id == WORKLOAD_ID
    result = await run_client(
        served.socket, "raw", "ValidateJWTSVID", "--audience", "svc-a", "--token", token
    )
    assert result["code"] == "OK"
    assert result["spiffe_id"] == WORKLOAD_ID
    assert result["claims"]["aud"] == ["svc-a"]
    assert result["claims"]["sub"] == WORKLOAD_ID
    wrong = await run_client(
        served.socket, "raw", "ValidateJWTSVID", "--audience", "svc-b", "--token", token
    )
    assert wrong["code"] == "INVALID_ARGUMENT"


async def test_jwt_bundles_hold_only_jwt_keys_with_kid(served: Served) -> None:
    result = await run_client(served.socket, "raw", "FetchJWTBundles")
    assert result["code"] == "OK"
    ((td, jwks),) = result["bundles"].items()
    assert td == "spiffe://example.org"
    assert jwks["keys"]
    for key in jwks["keys"]:
        assert key["use"] == "jwt-svid" and key["kid"]
        assert "x5c" not in key


async def test_requested_spiffe_id_not_entitled_is_permission_denied(served: Served) -> None:
    result = await run_client(
        served.socket,
        "raw",
        "FetchJWTSVID",
        "--audience",
        "a",
        "--spiffe-id",
        "spiffe://example.org/not-mine",
    )
    assert result["code"] == "PERMISSION_DENIED"


async def test_socket_is_world_connectable_and_stale_socket_replaced(tmp_path: Path) -> None:
    import socket as socketlib

    sock = tmp_path / "workload.sock"
    stale = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # a socket file nobody listens on, as after a crash
    source = MemorySource(TD)
    server = WorkloadApiServer(sock, WorkloadCache(source))
    await server.start()
    try:
        assert server.ready()
        assert stat.S_IMODE(sock.stat().st_mode) == 0o777
    finally:
        await server.stop()
    assert not server.ready()
    assert not sock.exists()


class RawStream:
    """A raw FetchX509SVID stream in a client process: one JSON line per message, then the
    final status."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def open(cls, sock: Path) -> RawStream:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CLIENT),
            "stream",
            env=_env(sock),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def next(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        assert line, "stream client exited"
        msg: dict[str, Any] = json.loads(line)
        return msg

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


async def test_deleted_entry_stops_being_served_at_once(served: Served) -> None:
    second = served.entries.create(entry_spec("spiffe://example.org/second", f"unix:uid:{UID}"))
    stream = await RawStream.open(served.socket)
    try:
        first = await stream.next()
        assert sorted(first["svids"]) == sorted([WORKLOAD_ID, "spiffe://example.org/second"])
        served.entries.delete(second.id)
        update = await stream.next()
        assert update["svids"] == [WORKLOAD_ID]
        served.entries.delete(served.entry_id)
        end = await stream.next()
        # never an empty svids list: the stream ends with PERMISSION_DENIED (5.2.1)
        assert end["code"] == "PERMISSION_DENIED", end
    finally:
        await stream.close()


async def test_disabled_entry_ends_stream(served: Served) -> None:
    stream = await RawStream.open(served.socket)
    try:
        assert (await stream.next())["svids"] == [WORKLOAD_ID]
        served.entries.update(served.entry_id, {"disabled": True})
        end = await stream.next()
        assert end["code"] == "PERMISSION_DENIED", end
    finally:
        await stream.close()


async def test_denied_spiffe_id_ends_stream(served: Served) -> None:
    stream = await RawStream.open(served.socket)
    try:
        assert (await stream.next())["svids"] == [WORKLOAD_ID]
        served.deny.add("spiffe_id", WORKLOAD_ID, reason="quarantined by test")
        end = await stream.next()
        assert end["code"] == "PERMISSION_DENIED", end
    finally:
        await stream.close()
    result = await run_client(served.socket, "raw", "FetchJWTSVID", "--audience", "x")
    assert result["code"] == "PERMISSION_DENIED"


async def test_serve_wiring_on_the_configured_socket(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, trust_domain="example.org", identity={"key_store": "memory"}
    )
    db = Database.open(settings.effective_database_url)
    identity = open_identity(settings, db)
    identity.entries.create(entry_spec(WORKLOAD_ID, f"unix:uid:{UID}"))
    server = build_workload_api_server(settings, identity)
    await server.start()
    try:
        assert server.socket_path == tmp_path / "workload.sock"
        result = await run_client(server.socket_path, "raw", "FetchJWTSVID", "--audience", "a")
        assert result["code"] == "OK"
        identity.deny_list.add("spiffe_id", WORKLOAD_ID, reason="revoked")
        result = await run_client(server.socket_path, "raw", "FetchJWTSVID", "--audience", "a")
        assert result["code"] == "PERMISSION_DENIED"
    finally:
        await server.stop()
        db.close()


async def test_stop_ends_open_streams(served: Served) -> None:
    stream = await RawStream.open(served.socket)
    try:
        assert (await stream.next())["svids"] == [WORKLOAD_ID]
        await asyncio.wait_for(served.server.stop(), 10)
        end = await stream.next()
        assert end["code"] in ("UNAVAILABLE", "CANCELLED"), end
    finally:
        await stream.close()


async def test_duplicate_hints_are_not_served_twice(served: Served) -> None:
    served.entries.update(served.entry_id, {"hint": "internal"})
    spec = entry_spec("spiffe://example.org/second", f"unix:uid:{UID}")
    spec.hint = "internal"
    served.entries.create(spec)
    spec3 = entry_spec("spiffe://example.org/third", f"unix:uid:{UID}")
    spec3.hint = "external"
    served.entries.create(spec3)
    result = await run_client(served.socket, "raw", "FetchX509SVID")
    assert result["code"] == "OK"
    # sorted by SPIFFE ID: .../second keeps "internal", .../workload repeats it and is left out
    assert result["svids"] == ["spiffe://example.org/second", "spiffe://example.org/third"]


def test_version_reads_while_a_writer_holds_the_write_slot(tmp_path: Path) -> None:
    """The Workload API cache polls ``version()``; it must not queue for the write slot that
    event ingestion and the audit chain hold (it used to read inside a write transaction),
    and it still sees a change committed by the writer."""
    db = Database.open(f"sqlite:///{tmp_path / 'zerogate.db'}")
    try:
        _, ca, entries = make_core(db)
        source = CoreIdentitySource(ca, entries)
        before = source.version()
        holding, release = threading.Event(), threading.Event()

        def writer() -> None:
            with db.begin():
                holding.set()
                release.wait(30)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert holding.wait(30)
            # inside a write transaction this waited 10 s for the slot, then raised StoreError
            assert source.version() == before
        finally:
            release.set()
            thread.join(30)
        entries.create(entry_spec(f"spiffe://{TD}/reader", "unix:uid:1000"))
        assert source.version() != before
    finally:
        db.close()
