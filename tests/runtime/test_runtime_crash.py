"""A SIGKILL during ingestion loses no acknowledged event (real uvicorn child process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from runtime_app import FALCO_ID
from runtime_corpus import corpus_raw

from runtime.events import EventStore
from zerogate.audit import tail
from zerogate.store import Database

CHILD = Path(__file__).parent / "crash_child.py"
HEADERS = {"x-test-spiffe-id": FALCO_ID, "content-type": "application/json"}


def _start(database_url: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp_path / "port"
    port_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), database_url, str(tmp_path / "audit.pem"), str(port_file)],
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text():
            base = f"http://127.0.0.1:{port_file.read_text()}"
            try:
                httpx.get(base + "/docs", timeout=1)
                return proc, base
            except httpx.TransportError:
                pass
        assert proc.poll() is None, "child exited during start"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("child did not start")


def test_sigkill_loses_no_acknowledged_event(database_url: str, tmp_path: Path) -> None:
    proc, base = _start(database_url, tmp_path)
    template = corpus_raw()[0]
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender(worker: int) -> None:
        with httpx.Client(base_url=base, timeout=5) as client:
            for i in range(100_000):
                if stop.is_set():
                    return
                alert = json.loads(json.dumps(template))
                alert["output_fields"]["evt.num"] = worker * 1_000_000 + i
                try:
                    reply = client.post("/v1/runtime/falco", json=alert, headers=HEADERS)
                except httpx.TransportError:
                    return  # the server died mid-request: not acknowledged
                if reply.status_code == 200:
                    with lock:
                        acked.append(reply.json()["event_id"])

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if len(acked) >= 150:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # while requests are in flight
    proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert len(acked) >= 150

    db = Database.open(database_url)
    try:
        stored = EventStore(db).event_ids()
        missing = set(acked) - stored
        assert not missing, f"{len(missing)} acknowledged events lost"
        audited = {r.payload["event_id"] for r in tail(db, n=100_000, kind="runtime.event")}
        assert set(acked) <= audited
    finally:
        db.close()

    # a restart audits whatever the kill left stored-but-unaudited, each event exactly once
    proc, base = _start(database_url, tmp_path)
    try:
        db = Database.open(database_url)
        assert EventStore(db).unaudited() == []
        ids = [r.payload["event_id"] for r in tail(db, n=100_000, kind="runtime.event")]
        assert len(ids) == len(set(ids)) == EventStore(db).count()
        db.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)
