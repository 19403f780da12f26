"""Connecting, migrating and closing the database."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import NullPool

from zerogate.errors import StoreError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Held while migrating so several replicas sharing PostgreSQL migrate one at a time.
_MIGRATION_LOCK_ID = 0x7A67_0001


def ensure_sqlite_dir(url: str) -> None:
    """Create the directory of a file-backed SQLite URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, decide where transactions begin (see _sqlite_begin).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer. synchronous=NORMAL: a commit survives a crash of
    # the process; a power loss may lose the last transactions (sqlite.org/pragma.html).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    # No checkpoint inside a committing transaction (it stalls that commit for tens of ms):
    # Database runs PASSIVE checkpoints from a background thread instead (_WalCheckpointer).
    cur.execute("PRAGMA wal_autocheckpoint=0")
    # after the WAL starts over, cut the file back to this size (bytes)
    cur.execute("PRAGMA journal_size_limit=67108864")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # pysqlite's own BEGIN is deferred and issued late; a deferred transaction that reads and
    # then writes can fail with SQLITE_BUSY instead of waiting. Writers that read first (the
    # audit chain head) ask for ``execution_options(sqlite_begin="IMMEDIATE")``.
    # On the driver's cursor: every write transaction starts here, and a statement through
    # SQLAlchemy's execution context cost ~40 us (about 8% of a single-alert Falco POST).
    mode = conn.get_execution_options().get("sqlite_begin", "")
    DriverCursor(conn).execute(_BEGIN.get(mode, "BEGIN"))


_BEGIN = {"IMMEDIATE": "BEGIN IMMEDIATE", "EXCLUSIVE": "BEGIN EXCLUSIVE"}


class _WalCheckpointer:
    """Moves SQLite's WAL into the database file about every ``interval`` seconds, in two
    steps so that writers barely wait for it.

    SQLite rewinds the WAL to its start only when a writer finds every frame already copied
    back (sqlite.org/wal.html, "Avoiding Excessively Large WAL Files"). A checkpoint that
    runs beside a steady writer never sees that: the writer appends while it copies, so the
    WAL grew without bound under sustained ingestion (36 KB per one-alert transaction: 586 MB
    after 16,000 of them, and each transaction slower as it grew).

    1. A background thread runs a PASSIVE checkpoint beside the writers (sqlite.org/wal.html:
       checkpoints and writers run at once). It copies the bulk: everything committed
       since the last round.
    2. Then the next writer finishes it on its own connection before its transaction
       (``Database.begin``), holding the write lock: a PASSIVE checkpoint of only what was
       committed during step 1, so every frame is copied and that transaction starts the
       WAL over. If no writer comes within ``interval``, the thread finishes it itself.
       (A thread waiting for the lock could starve behind a writer that takes it back at
       once, hence the writer.)

    With both steps under the lock, each round stalled the writer for a whole checkpoint:
    ~19 ms every 0.1 s on this project's 2-core VM, a fifth of a one-alert-per-commit
    writer's time. Readers never wait for either step."""

    def __init__(self, engine: Engine, lock: WriteLock, interval: float = 0.1) -> None:
        self._engine = engine
        self._lock = lock
        self._interval = interval
        self._finish = False  # step 1 ran: the next writer finishes the round
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-wal-checkpoint", daemon=True)
        self._thread.start()

    def due(self) -> bool:
        return self._finish

    def run_on(self, dbapi_conn: Any) -> None:
        """Step 2 on ``dbapi_conn`` (no transaction open); the caller holds the lock."""
        self._finish = False
        _checkpoint(dbapi_conn)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                with self._engine.connect() as conn:
                    _checkpoint(conn.connection.dbapi_connection)  # step 1, beside writers
                self._finish = True
                if self._stop.wait(self._interval) or not self._finish:
                    continue  # stopping, or a writer finished the round
                if not self._lock.acquire(timeout=self._interval):
                    continue  # a writer holds the lock and will finish it
                try:
                    with self._engine.connect() as conn:
                        self.run_on(conn.connection.dbapi_connection)
                finally:
                    self._lock.release()
            except DBAPIError as exc:
                log.debug("event=store.wal_checkpoint_skipped error=%s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _checkpoint(dbapi_conn: Any) -> None:
    try:
        dbapi_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as exc:  # busy (another checkpoint) or closing: next round
        log.debug("event=store.wal_checkpoint_skipped error=%s", exc)


_LOCK_WAIT_S = 10.0  # as PRAGMA busy_timeout


class WriteLock:
    """SQLite's one write slot, queued for by every writer of the database file: the threads
    of this process (a re-entrant lock) and other zerogate processes (``flock`` on
    ``<db>-writer.lock`` beside the file: the CLI beside the server, a second replica).

    A writer that finds SQLite's own lock taken waits in its busy handler, which SLEEPS in 1,
    2, 5, 10 ... 100 ms steps rather than being woken: with the audit writer, ingestion and
    the responder writing at once that was the tail of every latency. A thread of this
    process starts the moment the previous transaction here ends; a process waiting on
    another process's ``flock`` retries every 0.1-1 ms. ``acquire`` gives up after
    ``timeout`` (a deadlock, a stuck process): the caller raises StoreError."""

    def __init__(self, path: Path | None) -> None:
        self._threads = threading.RLock()
        self._depth = 0  # changed only by the thread holding ``_threads``
        self._fd: int | None = None
        if path is not None:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def acquire(self, timeout: float = _LOCK_WAIT_S) -> bool:
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(timeout=timeout):
            return False
        if self._depth == 0 and self._fd is not None and not self._flock(deadline):
            self._threads.release()
            return False
        self._depth += 1
        return True

    def _flock(self, deadline: float) -> bool:
        assert self._fd is not None
        pause = 0.0001
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.001)

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def __enter__(self) -> WriteLock:
        if not self.acquire():
            raise StoreError(f"database is locked: no write slot within {_LOCK_WAIT_S:g}s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class Database:
    """An open, migrated database."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self._checkpointer: _WalCheckpointer | None = None
        # SQLite allows one writer at a time: writers queue on WriteLock (see there)
        self._write_lock: WriteLock | None = None
        if engine.dialect.name == "sqlite":
            path = engine.url.database
            self._write_lock = WriteLock(Path(f"{path}-writer.lock") if path else None)
            self._checkpointer = _WalCheckpointer(engine, self._write_lock)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @classmethod
    def open(
        cls, url: str, *, migrate: bool = True, schema: str | None = None, pool_size: int = 10
    ) -> Database:
        """Connect to ``url`` and apply migrations. ``schema`` (PostgreSQL only) sets the
        search_path, which tests use to isolate runs in one database."""
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise StoreError(f"invalid database URL {url!r}: {exc}") from exc
        backend = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"future": True}
        if backend == "sqlite":
            ensure_sqlite_dir(url)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
            if parsed.database in (None, "", ":memory:"):
                raise StoreError("in-memory SQLite is not supported: give a file path")
            kwargs["poolclass"] = NullPool if pool_size == 0 else None
            if kwargs["poolclass"] is None:
                del kwargs["poolclass"]
        elif backend == "postgresql":
            connect_args: dict[str, Any] = {"connect_timeout": 5}
            if schema:
                connect_args["options"] = f"-csearch_path={schema}"
            kwargs["connect_args"] = connect_args
            kwargs["pool_size"] = pool_size
            kwargs["pool_pre_ping"] = True
        else:
            raise StoreError(f"unsupported database backend {backend!r}: use sqlite or postgresql")
        try:
            engine = create_engine(url, **kwargs)
        except (NoSuchModuleError, ArgumentError, ImportError) as exc:
            raise StoreError(f"cannot use database URL {parsed!r}: {exc}") from exc
        if backend == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _sqlite_begin)
        db = cls(engine, url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except (OperationalError, DBAPIError) as exc:
            engine.dispose()
            raise StoreError(
                f"database unreachable at {parsed.render_as_string(hide_password=True)}: "
                f"{_first_line(exc)}"
            ) from exc
        if migrate:
            db.migrate()
        return db

    def migrate(self) -> None:
        """Apply every Alembic branch up to its head (idempotent)."""
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
            cfg = AlembicConfig()
            cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")
        log.debug("event=store.migrated dialect=%s", self.dialect)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction that commits on success and rolls back on error.

        On SQLite the transaction starts with ``BEGIN IMMEDIATE``: a deferred transaction
        that reads and then writes fails at once with "database is locked" when another
        writer (the audit log) holds the lock, instead of waiting for it (busy_timeout only
        applies to taking the lock, not to upgrading one). Read-only work that should never
        wait for writers uses ``engine.connect()``.
        """
        lock = self._write_lock
        if lock is None:
            with self.engine.connect() as raw, raw.begin():
                yield raw
            return
        if not lock.acquire(timeout=_LOCK_WAIT_S):
            raise StoreError(f"database is locked: no write slot within {_LOCK_WAIT_S:g}s")
        try:
            with self.engine.connect() as raw:
                checkpointer = self._checkpointer
                if checkpointer is not None and checkpointer.due():
                    checkpointer.run_on(raw.connection.dbapi_connection)
                conn = raw.execution_options(sqlite_begin="IMMEDIATE")
                with conn.begin():
                    yield conn
        finally:
            lock.release()

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self.engine.dispose()
        if self._write_lock is not None:
            self._write_lock.close()


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


class DriverCursor:
    """A DBAPI cursor on a SQLAlchemy connection, inside its current transaction.

    For the few hot paths that run fixed SQL many times a second (the audit chain, Falco event
    ingestion): a statement through SQLAlchemy's execution context costs ~40 us of Python, the
    driver's cursor ~5 us. Parameters use the driver's paramstyle (``?`` for sqlite3, ``%s``
    for psycopg) and values must already be what the column's bind processing would give.
    Driver errors are raised as SQLAlchemy's (IntegrityError, OperationalError, ...), as
    ``Connection.execute`` would raise them, so callers handle one family of errors."""

    __slots__ = ("_cursor", "_error")

    def __init__(self, conn: Connection) -> None:
        self._cursor = conn.connection.cursor()
        self._error: type[Exception] = conn.dialect.loaded_dbapi.Error

    def execute(self, sql: str, params: Sequence[Any] = ()) -> DriverCursor:
        try:
            self._cursor.execute(sql, params)
        except self._error as exc:
            raise DBAPIError.instance(sql, params, exc, self._error) from exc
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> DriverCursor:
        try:
            self._cursor.executemany(sql, rows)
        except self._error as exc:
            raise DBAPIError.instance(sql, rows, exc, self._error, ismulti=True) from exc
        return self

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())


def driver_cursor(conn: Connection) -> DriverCursor:
    """A ``DriverCursor`` on ``conn`` (see there)."""
    return DriverCursor(conn)
