"""The hash-chained, append-only audit log: append (group commit), checkpoint, verify.

Record: ``{seq, ts, kind, payload}``. Stored in ``audit_log(seq, ts, kind, payload, prev_hash,
hash)`` where ``payload`` is the RFC 8785 canonical JSON text of the payload and::

    hash = SHA-256(prev_hash || JCS({"seq": seq, "ts": ts, "kind": kind, "payload": payload}))

with ``prev_hash`` of the first record 32 zero bytes and ``ts`` an RFC 3339 UTC string with
microseconds. Every ``checkpoint_every`` records or ``checkpoint_interval_s`` seconds (whichever
comes first, when records arrived) the writer signs ``JCS({"seq", "hash" (hex), "ts"})`` with an
Ed25519 key kept in the data directory and stores it in ``audit_checkpoint``.

Writing: callers ``append(kind, payload)`` and get a ``concurrent.futures.Future`` that resolves
to the record's ``seq`` once the transaction holding it has committed (durable). One writer
thread drains the queue and writes each batch in one transaction (group commit); the chain head
is re-read inside the transaction under a write lock (PostgreSQL advisory lock, SQLite
``BEGIN IMMEDIATE``), so several processes (replicas, the CLI) may append to one chain.

Verifying (``verify``) names the first bad ``seq`` and what is wrong: edited, deleted,
reordered, inserted, truncated after a checkpoint, or a bad checkpoint signature. Records after
the newest checkpoint are protected by the chain alone: someone with write access to the
database could append well-formed records there, which is why checkpoints are also taken on a
timer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, insert, select, text
from sqlalchemy.exc import SQLAlchemyError

from zerogate.clock import SYSTEM_CLOCK, Clock
from zerogate.config import Settings
from zerogate.errors import AuditError, PayloadError, StoreError
from zerogate.jcs import CanonicalizationError, canonical_json
from zerogate.store import Database, driver_cursor
from zerogate.store.tables import audit_checkpoint, audit_log

log = logging.getLogger(__name__)

GENESIS_HASH = bytes(32)
KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
MAX_KIND_LENGTH = 128
_AUDIT_LOCK_ID = 0x7A67_0002
_HEAD_SQL = (
    "SELECT seq, hash, (SELECT max(seq) FROM audit_checkpoint) "
    "FROM audit_log ORDER BY seq DESC LIMIT 1"
)
_INSERT_QMARK = (
    "INSERT INTO audit_log (seq, ts, kind, payload, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_FORMAT = (
    "INSERT INTO audit_log (seq, ts, kind, payload, prev_hash, hash) "
    "VALUES (%s, %s, %s, %s, %s, %s)"
)
_STOP = object()


class AuditSink(Protocol):
    """What subsystems need from the audit log."""

    def append(self, kind: str, payload: Mapping[str, Any]) -> Future[int]:
        """Queue a record; the future resolves to its seq once durable, or raises AuditError."""
        ...


# Canonical form ---------------------------------------------------------------------------


def format_ts(ts: datetime) -> str:
    """RFC 3339 UTC with microseconds, the exact form that is hashed."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_payload(payload: Mapping[str, Any], max_bytes: int) -> bytes:
    """RFC 8785 canonical JSON of ``payload``; PayloadError when impossible or too large."""
    if not isinstance(payload, Mapping):
        raise PayloadError(f"audit payload must be a JSON object, got {type(payload).__name__}")
    try:
        data = canonical_json(dict(payload))
    except CanonicalizationError as exc:
        raise PayloadError(f"audit payload is not JSON-serialisable: {exc}") from exc
    if len(data) > max_bytes:
        raise PayloadError(
            f"audit payload is {len(data)} bytes, over the limit of {max_bytes} bytes"
        )
    return data


def record_hash(prev_hash: bytes, seq: int, ts: str, kind: str, payload_json: bytes) -> bytes:
    """SHA-256(prev_hash || JCS(record)).

    JCS (RFC 8785 section 3.2.3) sorts keys, giving ``{"kind","payload","seq","ts"}``. ``kind``
    matches KIND_PATTERN and ``ts`` is ``format_ts`` output, neither needs escaping, and ``seq``
    is a positive integer below 2**53, so the canonical bytes are assembled directly around the
    already-canonical payload instead of being parsed and serialised again.
    """
    if not KIND_PATTERN.match(kind) or not 0 < seq < 2**53:
        raise AuditError(f"record seq={seq} kind={kind!r} cannot be canonicalised")
    return _record_hash(prev_hash, seq, ts, kind, payload_json)


def _record_hash(prev_hash: bytes, seq: int, ts: str, kind: str, payload_json: bytes) -> bytes:
    # the writer's path: ``kind`` was checked by ``append`` and seq comes from the chain
    record = b'{"kind":"%s","payload":%s,"seq":%d,"ts":"%s"}' % (
        kind.encode("ascii"),
        payload_json,
        seq,
        ts.encode("ascii"),
    )
    return hashlib.sha256(prev_hash + record).digest()


def checkpoint_message(seq: int, hash_: bytes, ts: str) -> bytes:
    return canonical_json({"hash": hash_.hex(), "seq": seq, "ts": ts})


# Keys -------------------------------------------------------------------------------------


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The checkpoint key: read it, or create it with mode 0600."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError as exc:
            raise AuditError(f"audit signing key {path} is not a PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise AuditError(f"audit signing key {path} is not an Ed25519 key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = _open_private(tmp)
    with open(fd, "wb") as fh:
        fh.write(pem)
    tmp.replace(path)
    log.info("event=audit.key_created path=%s", path)
    return key


def _open_private(path: Path) -> int:
    import os

    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# Writer -----------------------------------------------------------------------------------


@dataclass
class _Pending:
    kind: str
    payload: bytes
    future: Future[int]

    @property
    def size(self) -> int:
        return 1


@dataclass
class _PendingMany:
    """Several records of one kind behind one future (ingestion of event batches: a
    ``Future`` per record costs more than hashing the record)."""

    kind: str
    payloads: list[bytes]
    future: Future[list[int]]

    @property
    def size(self) -> int:
        return len(self.payloads)


@dataclass
class _Head:
    seq: int = 0
    hash: bytes = GENESIS_HASH
    checkpoint_seq: int = 0


class AuditLog:
    """The group-commit writer. Thread-safe; ``append`` never blocks on the database."""

    def __init__(
        self,
        db: Database,
        signing_key: Ed25519PrivateKey,
        *,
        clock: Clock = SYSTEM_CLOCK,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 10.0,
        max_payload_bytes: int = 1 << 20,
        batch_max: int = 1024,
    ) -> None:
        self._db = db
        self._key = signing_key
        self._key_id = key_id(signing_key.public_key())
        self._clock = clock
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval = checkpoint_interval_s
        self._max_payload = max_payload_bytes
        self._batch_max = batch_max
        self._queue: queue.SimpleQueue[_Pending | _PendingMany | object] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._last_checkpoint_at = time.monotonic()
        self._uncheckpointed = False
        self._pending_flushes: list[Future[None]] = []
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._healthy = True
        self._thread.start()

    @classmethod
    def open(
        cls,
        db: Database,
        *,
        signing_key: Path,
        clock: Clock = SYSTEM_CLOCK,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 10.0,
        max_payload_bytes: int = 1 << 20,
        batch_max: int = 1024,
    ) -> AuditLog:
        return cls(
            db,
            load_or_create_signing_key(signing_key),
            clock=clock,
            checkpoint_every=checkpoint_every,
            checkpoint_interval_s=checkpoint_interval_s,
            max_payload_bytes=max_payload_bytes,
            batch_max=batch_max,
        )

    @classmethod
    def from_settings(
        cls, db: Database, settings: Settings, *, clock: Clock = SYSTEM_CLOCK
    ) -> AuditLog:
        """The audit log as configured (``audit`` section, key in the data directory)."""
        return cls.open(
            db,
            signing_key=settings.audit_signing_key,
            clock=clock,
            checkpoint_every=settings.audit.checkpoint_every,
            checkpoint_interval_s=settings.audit.checkpoint_interval_s,
            max_payload_bytes=settings.audit.max_payload_bytes,
            batch_max=settings.audit.batch_max,
        )

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    @property
    def healthy(self) -> bool:
        """False after the last batch failed to commit, until one succeeds again."""
        return self._healthy and self._thread.is_alive() and not self._closed

    def append(self, kind: str, payload: Mapping[str, Any]) -> Future[int]:
        self._check_kind(kind)
        data = canonical_payload(payload, self._max_payload)
        fut: Future[int] = Future()
        if self._closed:
            raise AuditError("audit log is closed")
        self._queue.put(_Pending(kind, data, fut))
        return fut

    def append_many(self, kind: str, payloads: Sequence[Mapping[str, Any]]) -> Future[list[int]]:
        """Queue ``payloads`` as consecutive records of ``kind``; the future resolves to their
        seqs, in order, once all are durable (they commit in one transaction)."""
        self._check_kind(kind)
        data = [canonical_payload(p, self._max_payload) for p in payloads]
        fut: Future[list[int]] = Future()
        if self._closed:
            raise AuditError("audit log is closed")
        if not data:
            fut.set_result([])
            return fut
        self._queue.put(_PendingMany(kind, data, fut))
        return fut

    @staticmethod
    def _check_kind(kind: str) -> None:
        if not isinstance(kind, str) or not KIND_PATTERN.match(kind) or len(kind) > 128:
            raise PayloadError(
                f"audit kind {kind!r} must be dotted lower-case words (e.g. 'policy.decision'), "
                f"at most {MAX_KIND_LENGTH} characters"
            )

    def write(self, kind: str, payload: Mapping[str, Any], timeout: float = 30.0) -> int:
        """Append and wait until durable; returns the seq."""
        return self.append(kind, payload).result(timeout=timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every record appended before this call is durable (and checkpointed)."""
        marker: Future[None] = Future()
        self._queue.put(marker)
        marker.result(timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, sign a final checkpoint, stop the writer."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout)

    # writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=min(1.0, self._checkpoint_interval))
            except queue.Empty:
                self._maybe_timed_checkpoint()
                continue
            batch: list[_Pending | _PendingMany] = []
            records = 0
            markers: list[Future[None]] = []
            item: object = first
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Pending | _PendingMany):
                    batch.append(item)
                    records += item.size
                elif isinstance(item, Future):
                    markers.append(item)
                if stop or records >= self._batch_max:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write_batch(batch, force_checkpoint=bool(markers) or stop)
            elif markers or stop:
                self._maybe_timed_checkpoint(force=True)
            for marker in markers:
                marker.set_result(None)
        # drain anything that raced with close()
        leftovers: list[_Pending | _PendingMany] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Pending | _PendingMany):
                leftovers.append(item)
            elif isinstance(item, Future):
                item.set_result(None)
        if leftovers:
            self._write_batch(leftovers, force_checkpoint=True)

    @property
    def _insert_sql(self) -> str:
        if self._db.engine.dialect.paramstyle == "qmark":
            return _INSERT_QMARK
        return _INSERT_FORMAT

    def _ts_param(self, ts_value: datetime) -> Any:
        """``ts`` as the driver wants it, through the column type's own bind processing."""
        dialect = self._db.engine.dialect
        processor = audit_log.c.ts.type.dialect_impl(dialect).bind_processor(dialect)
        return processor(ts_value) if processor is not None else ts_value

    def _lock_chain(self, conn: Connection) -> None:
        if self._db.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _AUDIT_LOCK_ID})

    def _read_head(self, conn: Connection) -> _Head:
        # one driver-level round trip: this runs once per batch on the latency path
        cur = driver_cursor(conn)
        cur.execute(_HEAD_SQL)
        row = cur.fetchone()
        if row is None:
            cur.execute("SELECT max(seq) FROM audit_checkpoint")
            return _Head(checkpoint_seq=cur.fetchone()[0] or 0)
        return _Head(seq=row[0], hash=bytes(row[1]), checkpoint_seq=row[2] or 0)

    def _write_batch(
        self, batch: list[_Pending | _PendingMany], *, force_checkpoint: bool = False
    ) -> None:
        records = [
            (item.kind, payload)
            for item in batch
            for payload in (item.payloads if isinstance(item, _PendingMany) else (item.payload,))
        ]
        try:
            with self._db.begin() as conn:
                first_seq, due = self._append_rows(conn, records, force_checkpoint)
        except (SQLAlchemyError, OSError, StoreError) as exc:
            self._healthy = False
            error = AuditError(f"audit write failed, {len(records)} record(s) not stored: {exc}")
            log.error("event=audit.write_failed records=%d error=%s", len(records), exc)
            for item in batch:
                item.future.set_exception(error)
            return
        self._healthy = True
        self._uncheckpointed = not due
        next_seq = first_seq
        for item in batch:
            if isinstance(item, _PendingMany):
                item.future.set_result(list(range(next_seq, next_seq + item.size)))
            else:
                item.future.set_result(next_seq)
            next_seq += item.size

    def write_in(
        self, conn: Connection, kind: str, payloads: Sequence[Mapping[str, Any]]
    ) -> list[int]:
        """Append records inside the caller's open write transaction on this log's database;
        returns their seqs. They commit, or roll back, with the caller's own rows: a
        repository can store a row and its audit record atomically, with no window in which
        one exists without the other. On SQLite the transaction must hold the write lock
        (``BEGIN IMMEDIATE``: ``Database.begin``); on PostgreSQL the chain's advisory lock is
        taken here and held until the caller commits. Chain order with the writer thread is
        the database's commit order, as for several writer processes."""
        self._check_kind(kind)
        data = [canonical_payload(p, self._max_payload) for p in payloads]
        if not data:
            return []
        first_seq, due = self._append_rows(conn, [(kind, d) for d in data], False)
        if not due:
            self._uncheckpointed = True  # the writer thread's timer signs a checkpoint later
        return list(range(first_seq, first_seq + len(data)))

    def _append_rows(
        self, conn: Connection, records: list[tuple[str, bytes]], force_checkpoint: bool
    ) -> tuple[int, bool]:
        """Chain ``records`` onto the head in ``conn``'s transaction; (first seq, checkpointed)."""
        self._lock_chain(conn)
        head = self._read_head(conn)
        ts_value = self._clock.now().astimezone(UTC)  # datetime holds microseconds, as ts
        ts = format_ts(ts_value)
        rows = []
        seq, prev = head.seq, head.hash
        stored_ts = self._ts_param(ts_value)
        for kind, payload in records:
            seq += 1
            digest = _record_hash(prev, seq, ts, kind, payload)
            rows.append((seq, stored_ts, kind, payload.decode(), prev, digest))
            prev = digest
        # driver-level executemany: the ORM-free Core path still spends ~20 us a row on
        # per-row type processing that one shared timestamp does not need
        driver_cursor(conn).executemany(self._insert_sql, rows)
        due = (
            force_checkpoint
            or seq - head.checkpoint_seq >= self._checkpoint_every
            or time.monotonic() - self._last_checkpoint_at >= self._checkpoint_interval
        )
        if due:
            self._insert_checkpoint(conn, seq, prev, ts, ts_value)
        return head.seq + 1, due

    def _insert_checkpoint(
        self, conn: Connection, seq: int, hash_: bytes, ts: str, ts_value: datetime
    ) -> None:
        signature = self._key.sign(checkpoint_message(seq, hash_, ts))
        conn.execute(
            insert(audit_checkpoint).values(
                seq=seq, hash=hash_, ts=ts_value, key_id=self._key_id, signature=signature
            )
        )
        self._last_checkpoint_at = time.monotonic()

    def _maybe_timed_checkpoint(self, force: bool = False) -> None:
        if not self._uncheckpointed:
            return
        if not force and time.monotonic() - self._last_checkpoint_at < self._checkpoint_interval:
            return
        try:
            with self._db.begin() as conn:
                self._lock_chain(conn)
                head = self._read_head(conn)
                if head.seq > head.checkpoint_seq:
                    ts_value = self._clock.now().astimezone(UTC)
                    ts = format_ts(ts_value)
                    self._insert_checkpoint(conn, head.seq, head.hash, ts, ts_value)
            self._uncheckpointed = False
        except (SQLAlchemyError, StoreError) as exc:
            log.error("event=audit.checkpoint_failed error=%s", exc)


# Reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: datetime
    kind: str
    payload: dict[str, Any]
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": format_ts(self.ts),
            "kind": self.kind,
            "payload": self.payload,
            "hash": self.hash,
        }


def tail(db: Database, n: int = 20, kind: str | None = None) -> list[AuditRecord]:
    """The last ``n`` records (optionally of one kind), oldest first."""
    query = select(audit_log).order_by(audit_log.c.seq.desc()).limit(n)
    if kind is not None:
        query = query.where(audit_log.c.kind == kind)
    with db.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        AuditRecord(r.seq, r.ts, r.kind, json.loads(r.payload), bytes(r.hash).hex())
        for r in reversed(rows)
    ]


# Verifying --------------------------------------------------------------------------------

Problem = Literal[
    "edited", "deleted", "reordered", "inserted", "truncated", "bad_signature", "bad_checkpoint"
]


@dataclass(frozen=True)
class VerifyFinding:
    seq: int
    problem: Problem
    detail: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.problem}: {self.detail}"


@dataclass
class VerifyResult:
    records: int = 0
    checkpoints: int = 0
    last_seq: int = 0
    last_checkpoint_seq: int = 0
    findings: list[VerifyFinding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first(self) -> VerifyFinding | None:
        return min(self.findings, key=lambda f: f.seq) if self.findings else None

    def summary(self) -> str:
        if self.ok:
            return (
                f"audit log intact: {self.records} records (seq 1..{self.last_seq}), "
                f"{self.checkpoints} signed checkpoints, last checkpoint at seq "
                f"{self.last_checkpoint_seq}"
            )
        first = self.first
        return f"audit log TAMPERED: {first} ({len(self.findings)} finding(s))"


def _iter_rows(conn: Connection, chunk: int = 5000) -> Iterator[Any]:
    last = 0
    while True:
        rows = conn.execute(
            select(audit_log).where(audit_log.c.seq > last).order_by(audit_log.c.seq).limit(chunk)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def verify(db: Database, public_key: Ed25519PublicKey) -> VerifyResult:
    """Walk the whole chain and every checkpoint; collect what is wrong, in seq order.

    Two passes: the first maps every stored hash to its stored ``prev_hash`` and seq (about
    100 bytes a record in memory), so that a record moved to another position is told apart
    from an edited one by following its own chain links back to the genesis.
    """
    result = VerifyResult()
    with db.engine.connect() as conn:
        links: dict[bytes, bytes] = {}
        position: dict[bytes, int] = {}
        for row in conn.execute(
            select(audit_log.c.seq, audit_log.c.hash, audit_log.c.prev_hash)
        ).yield_per(10000):
            links[bytes(row.hash)] = bytes(row.prev_hash)
            position[bytes(row.hash)] = row.seq
        expected_seq = 1
        prev = GENESIS_HASH
        for row in _iter_rows(conn):
            result.records += 1
            result.last_seq = row.seq
            stored = bytes(row.hash)
            row_prev = bytes(row.prev_hash)
            payload = row.payload.encode("utf-8")
            ts = format_ts(row.ts)
            if row.seq != expected_seq:
                result.findings.append(
                    VerifyFinding(
                        expected_seq,
                        "deleted",
                        f"records {expected_seq}..{row.seq - 1} are missing",
                    )
                )
            elif record_hash(row_prev, row.seq, ts, row.kind, payload) != stored:
                origin = _chain_position(row_prev, links)
                if (
                    origin is not None
                    and origin + 1 != row.seq
                    and record_hash(row_prev, origin + 1, ts, row.kind, payload) == stored
                ):
                    result.findings.append(
                        VerifyFinding(
                            row.seq,
                            "reordered",
                            f"this position holds the record that belongs at seq {origin + 1}",
                        )
                    )
                else:
                    result.findings.append(
                        VerifyFinding(
                            row.seq, "edited", "stored hash does not match the record's content"
                        )
                    )
            elif row_prev != prev:
                result.findings.append(
                    VerifyFinding(
                        row.seq,
                        "inserted",
                        "record does not chain to its predecessor (forged, or the previous "
                        "record was altered and re-hashed)",
                    )
                )
            expected_seq = row.seq + 1
            prev = stored
        checkpoints = conn.execute(select(audit_checkpoint).order_by(audit_checkpoint.c.seq)).all()
        for cp in checkpoints:
            result.checkpoints += 1
            result.last_checkpoint_seq = cp.seq
            message = checkpoint_message(cp.seq, bytes(cp.hash), format_ts(cp.ts))
            try:
                public_key.verify(bytes(cp.signature), message)
            except InvalidSignature:
                result.findings.append(
                    VerifyFinding(
                        cp.seq,
                        "bad_signature",
                        f"checkpoint signature does not verify with key {key_id(public_key)}",
                    )
                )
                continue
            if cp.seq > result.last_seq:
                result.findings.append(
                    VerifyFinding(
                        result.last_seq + 1,
                        "truncated",
                        f"a signed checkpoint covers seq {cp.seq} but the log ends at seq "
                        f"{result.last_seq}",
                    )
                )
            elif position.get(bytes(cp.hash)) != cp.seq:
                result.findings.append(
                    VerifyFinding(
                        cp.seq,
                        "bad_checkpoint",
                        "the record at this seq differs from the one the checkpoint signed",
                    )
                )
    result.findings.sort(key=lambda f: f.seq)
    return result


def _chain_position(hash_: bytes, links: dict[bytes, bytes]) -> int | None:
    """Seq of the record with ``hash_`` by following prev links to the genesis (0 = genesis)."""
    steps = 0
    seen: set[bytes] = set()
    while hash_ != GENESIS_HASH:
        if hash_ in seen or hash_ not in links:
            return None
        seen.add(hash_)
        hash_ = links[hash_]
        steps += 1
    return steps
