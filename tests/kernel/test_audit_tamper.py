"""Tampering with the stored audit log is detected and named (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import delete, insert, select, update
from typer.testing import CliRunner

from zerogate.audit import AuditLog, record_hash, verify
from zerogate.cli import app
from zerogate.store import Database
from zerogate.store.tables import audit_checkpoint, audit_log

RECORDS = 50


@pytest.fixture
def filled(database: Database, tmp_path: Path) -> AuditLog:
    log = AuditLog.open(database, signing_key=tmp_path / "k.pem", checkpoint_every=10)
    for i in range(RECORDS):
        log.write("test.record", {"i": i, "note": f"record {i}"})
    log.close()
    return log


def _row(db: Database, seq: int) -> dict[str, object]:
    with db.engine.connect() as conn:
        return dict(conn.execute(select(audit_log).where(audit_log.c.seq == seq)).one()._mapping)


def _verify_cli(db: Database, log: AuditLog, tmp_path: Path) -> tuple[int, str]:
    pub = tmp_path / "pub.pem"
    pub.write_bytes(
        log.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    result = CliRunner().invoke(
        app, ["audit", "verify", "--database-url", db.url, "--public-key", str(pub)]
    )
    return result.exit_code, result.output


def test_intact_log_verifies(database: Database, filled: AuditLog, tmp_path: Path) -> None:
    result = verify(database, filled.public_key)
    assert result.ok, result.findings
    assert result.records == RECORDS
    assert result.last_checkpoint_seq == RECORDS
    code, out = _verify_cli(database, filled, tmp_path)
    assert code == 0, out
    assert f"{RECORDS} records" in out


def _edit_payload(db: Database) -> None:
    with db.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 17).values(payload='{"i":999}'))


def _delete_middle(db: Database) -> None:
    with db.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 23))


def _swap_rows(db: Database) -> None:
    a, b = _row(db, 30), _row(db, 34)
    cols = ("ts", "kind", "payload", "prev_hash", "hash")
    with db.begin() as conn:
        conn.execute(
            update(audit_log).where(audit_log.c.seq == 30).values(**{c: b[c] for c in cols})
        )
        conn.execute(
            update(audit_log).where(audit_log.c.seq == 34).values(**{c: a[c] for c in cols})
        )


def _insert_forged(db: Database) -> None:
    last = _row(db, RECORDS)
    payload = b'{"forged":true}'
    ts = "2026-01-01T00:00:00.000000Z"
    forged_prev = bytes(32)  # does not chain to the real last record
    from datetime import UTC, datetime

    with db.begin() as conn:
        conn.execute(
            insert(audit_log).values(
                seq=RECORDS + 1,
                ts=datetime(2026, 1, 1, tzinfo=UTC),
                kind="test.record",
                payload=payload.decode(),
                prev_hash=forged_prev,
                hash=record_hash(forged_prev, RECORDS + 1, ts, "test.record", payload),
            )
        )
    assert last["seq"] == RECORDS


def _truncate_after_checkpoint(db: Database) -> None:
    with db.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq > 44))


def _corrupt_signature(db: Database) -> None:
    with db.begin() as conn:
        sig = conn.execute(
            select(audit_checkpoint.c.signature).where(audit_checkpoint.c.seq == 20)
        ).scalar_one()
        bad = bytes([sig[0] ^ 0xFF]) + bytes(sig[1:])
        conn.execute(
            update(audit_checkpoint).where(audit_checkpoint.c.seq == 20).values(signature=bad)
        )


@pytest.mark.parametrize(
    ("tamper", "seq", "problem"),
    [
        (_edit_payload, 17, "edited"),
        (_delete_middle, 23, "deleted"),
        (_swap_rows, 30, "reordered"),
        (_insert_forged, RECORDS + 1, "inserted"),
        (_truncate_after_checkpoint, 45, "truncated"),
        (_corrupt_signature, 20, "bad_signature"),
    ],
    ids=["edited", "deleted", "reordered", "inserted", "truncated", "bad_signature"],
)
def test_tampering_is_named(
    database: Database,
    filled: AuditLog,
    tmp_path: Path,
    tamper: Callable[[Database], None],
    seq: int,
    problem: str,
) -> None:
    tamper(database)
    result = verify(database, filled.public_key)
    assert not result.ok
    first = result.first
    assert first is not None
    assert (first.seq, first.problem) == (seq, problem), result.findings
    code, out = _verify_cli(database, filled, tmp_path)
    assert code == 1
    assert f"seq {seq}: {problem}" in out


def test_verify_with_wrong_key_reports_bad_signatures(
    database: Database, filled: AuditLog, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    result = verify(database, Ed25519PrivateKey.generate().public_key())
    assert {f.problem for f in result.findings} == {"bad_signature"}
    assert json.dumps(result.summary())  # printable
