"""The group-commit writer: durability, concurrency, bad input, checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from zerogate.audit import AuditLog, tail, verify
from zerogate.clock import ManualClock
from zerogate.errors import AuditError, PayloadError
from zerogate.store import Database
from zerogate.store.tables import audit_checkpoint, audit_log


def _count(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one())


def test_append_resolves_to_gapless_seq(audit_log: AuditLog, database: Database) -> None:
    seqs = [audit_log.append("test.one", {"n": n}).result(timeout=10) for n in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    records = tail(database, 3)
    assert [r.seq for r in records] == [3, 4, 5]
    assert records[-1].payload == {"n": 4}
    assert records[-1].kind == "test.one"


def test_append_many_gets_consecutive_seqs_among_single_appends(
    database: Database, tmp_path: Path
) -> None:
    log = AuditLog.open(database, signing_key=tmp_path / "k.pem", checkpoint_every=50)
    singles: list[int] = []
    batches: list[list[int]] = []

    def single_writer() -> None:
        futures = [log.append("test.single", {"i": i}) for i in range(300)]
        singles.extend(f.result(timeout=60) for f in futures)

    thread = threading.Thread(target=single_writer)
    thread.start()
    futures = [
        log.append_many("test.batch", [{"b": b, "i": i} for i in range(40)]) for b in range(10)
    ]
    batches = [f.result(timeout=60) for f in futures]
    thread.join()
    assert log.append_many("test.batch", []).result(timeout=5) == []
    log.close()
    for b, seqs in enumerate(batches):
        assert seqs == list(range(seqs[0], seqs[0] + 40)), "a batch is contiguous"
        records = {r.seq: r for r in tail(database, 1000)}
        assert [records[s].payload for s in seqs] == [{"b": b, "i": i} for i in range(40)]
        assert all(records[s].kind == "test.batch" for s in seqs)
    every = sorted(singles + [s for seqs in batches for s in seqs])
    assert every == list(range(1, 701))
    result = verify(database, log.public_key)
    assert result.ok, result.findings[:3]


def test_append_many_refuses_a_bad_payload_and_queues_none(
    audit_log: AuditLog, database: Database
) -> None:
    with pytest.raises(PayloadError):
        audit_log.append_many("test.batch", [{"ok": 1}, {"bad": float("nan")}])
    audit_log.flush()
    assert _count(database) == 0


def test_eight_writers_ten_thousand_records(database: Database, tmp_path: Path) -> None:
    log = AuditLog.open(database, signing_key=tmp_path / "k.pem", checkpoint_every=1000)
    seqs: list[int] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        futures = [log.append("test.concurrent", {"w": w, "i": i}) for i in range(1250)]
        got = [f.result(timeout=60) for f in futures]
        with lock:
            seqs.extend(got)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert sorted(seqs) == list(range(1, 10_001))
    result = verify(database, log.public_key)
    assert result.ok, result.findings[:3]
    assert result.records == 10_000
    assert result.last_checkpoint_seq == 10_000


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"when": object()}, "not JSON-serialisable"),
        ({"x": float("nan")}, "not JSON-serialisable"),
        ({"blob": "x" * (1 << 20)}, "over the limit"),
    ],
    ids=["object", "nan", "oversized"],
)
def test_bad_payload_is_refused_and_nothing_stored(
    audit_log: AuditLog, database: Database, payload: dict[str, object], message: str
) -> None:
    with pytest.raises(PayloadError, match=message):
        audit_log.append("test.bad", payload)
    audit_log.flush()
    assert _count(database) == 0
    # the chain goes on untouched
    assert audit_log.write("test.good", {"ok": True}) == 1


@pytest.mark.parametrize("kind", ["", "Upper.case", "has space", "x" * 200, "trailing."])
def test_bad_kind_is_refused(audit_log: AuditLog, kind: str) -> None:
    with pytest.raises(PayloadError, match="audit kind"):
        audit_log.append(kind, {})


def test_write_failure_fails_the_futures_and_keeps_the_chain(
    database: Database, tmp_path: Path
) -> None:
    log = AuditLog.open(database, signing_key=tmp_path / "k.pem")
    assert log.write("test.a", {"n": 1}) == 1
    # take the table away under the writer: the next batch fails as a whole
    with database.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE audit_log RENAME TO audit_log_moved")
    fut = log.append("test.a", {"n": 2})
    with pytest.raises(AuditError, match="audit write failed"):
        fut.result(timeout=10)
    assert not log.healthy
    with database.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE audit_log_moved RENAME TO audit_log")
    assert log.write("test.a", {"n": 3}) == 2
    assert log.healthy
    log.close()
    assert verify(database, log.public_key).ok


def test_checkpoint_on_timer(database: Database, tmp_path: Path) -> None:
    clock = ManualClock()
    log = AuditLog.open(
        database,
        signing_key=tmp_path / "k.pem",
        clock=clock,
        checkpoint_every=1_000_000,
        checkpoint_interval_s=0.2,
    )
    log.write("test.t", {"n": 1})
    clock.advance(timedelta(seconds=1))
    deadline = time.monotonic() + 10
    checkpoints = 0
    while time.monotonic() < deadline and not checkpoints:
        time.sleep(0.1)
        with database.engine.connect() as conn:
            checkpoints = conn.execute(
                select(func.count()).select_from(audit_checkpoint)
            ).scalar_one()
    log.close()
    assert checkpoints >= 1


def test_close_loses_nothing(database: Database, tmp_path: Path) -> None:
    log = AuditLog.open(database, signing_key=tmp_path / "k.pem")
    futures = [log.append("test.close", {"i": i}) for i in range(3000)]
    log.close()
    assert all(f.done() for f in futures)
    assert _count(database) == 3000
    assert verify(database, log.public_key).ok
    with pytest.raises(AuditError, match="closed"):
        log.append("test.close", {"late": True})


def test_two_writers_share_one_chain(database: Database, tmp_path: Path) -> None:
    """Two processes' writers (here two AuditLogs) interleave without breaking the chain."""
    key = tmp_path / "k.pem"
    a = AuditLog.open(database, signing_key=key)
    b = AuditLog.open(database, signing_key=key)
    fa = [a.append("test.a", {"i": i}) for i in range(300)]
    fb = [b.append("test.b", {"i": i}) for i in range(300)]
    seqs = sorted(f.result(timeout=30) for f in fa + fb)
    a.close()
    b.close()
    assert seqs == list(range(1, 601))
    assert verify(database, a.public_key).ok


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from zerogate.audit import AuditLog
    from zerogate.store import Database

    db = Database.open(sys.argv[1])
    log = AuditLog.open(db, signing_key=Path(sys.argv[2]), checkpoint_every=100)
    i = 0
    while True:
        futures = [log.append("test.crash", {"i": i + k}) for k in range(50)]
        for f in futures:
            print(f.result(), flush=True)
        i += 50
    """
)


def test_sigkill_loses_no_acknowledged_record(database_url: str, tmp_path: Path) -> None:
    db = Database.open(database_url)
    key = tmp_path / "k.pem"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, database_url, str(key)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    acked: list[int] = []
    for line in proc.stdout:
        acked.append(int(line))
        if len(acked) >= 2000:
            break
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    acked.extend(int(x) for x in rest.split())
    assert acked == list(range(1, len(acked) + 1))
    with db.engine.connect() as conn:
        stored = set(conn.execute(select(audit_log.c.seq)).scalars())
    assert set(acked) <= stored
    # the chain is intact; a checkpoint may be missing for the unsigned tail, never wrong
    from zerogate.audit import load_or_create_signing_key

    result = verify(db, load_or_create_signing_key(key).public_key())
    assert result.ok, result.findings[:3]
    # and a new writer carries the chain on
    log = AuditLog.open(db, signing_key=key)
    assert log.write("test.after", {}) == max(stored) + 1
    log.close()
    assert verify(db, log.public_key).ok
    db.close()
