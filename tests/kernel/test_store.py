"""The store: migrations on both backends, and clear errors for bad URLs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect

from zerogate.errors import StoreError
from zerogate.store import Database, driver_cursor
from zerogate.store.database import WriteLock


def test_migrations_create_kernel_tables_and_are_idempotent(database: Database) -> None:
    tables = set(inspect(database.engine).get_table_names())
    assert {"audit_log", "audit_checkpoint", "alembic_version"} <= tables
    database.migrate()  # a second run changes nothing and does not fail
    assert set(inspect(database.engine).get_table_names()) == tables


def test_sqlite_wal_starts_over_under_a_steady_writer(tmp_path: Path) -> None:
    """SQLite rewinds its WAL only when a writer finds every frame copied back. A background
    checkpoint beside a writer that never pauses never sees that, and the WAL grew by every
    transaction (hundreds of MB under sustained ingestion). The checkpointer's last step
    holds the write lock, so the WAL stays at about two checkpoint intervals of writes,
    however long the writer runs."""
    db = Database.open(f"sqlite:///{tmp_path / 'wal.db'}")
    try:
        with db.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE scratch (id INTEGER PRIMARY KEY, v BLOB)")
        page = 4096
        written = 0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            with db.begin() as conn:
                driver_cursor(conn).execute("INSERT INTO scratch (v) VALUES (?)", (b"x" * 2000,))
            written += page  # every commit appends at least one page frame to the WAL
        wal = (tmp_path / "wal.db-wal").stat().st_size
        assert written > 2 << 20, "too few transactions to tell"
        assert wal < written / 4, f"WAL {wal} bytes after {written // page} commits"
    finally:
        db.close()


def test_write_lock_excludes_other_processes(tmp_path: Path) -> None:
    """SQLite writers of other zerogate processes (the CLI beside the server) queue on the
    same flock instead of SQLite's sleeping busy handler; re-entrant within a thread."""
    lock_path = tmp_path / "db-writer.lock"
    lock = WriteLock(lock_path)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from zerogate.store.database import WriteLock\n"
        "lock = WriteLock(Path(sys.argv[1]))\n"
        "print(lock.acquire(timeout=0.3), flush=True)\n"
        "print(lock.acquire(timeout=0.3), flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    with lock:
        held = subprocess.run(
            [sys.executable, "-c", code, str(lock_path)], env=env, capture_output=True, text=True
        )
    free = subprocess.run(
        [sys.executable, "-c", code, str(lock_path)], env=env, capture_output=True, text=True
    )
    lock.close()
    assert held.stdout.split() == ["False", "False"], held.stderr
    assert free.stdout.split() == ["True", "True"], free.stderr


def test_database_writers_of_two_processes_take_turns(tmp_path: Path) -> None:
    """Two processes writing the same file through Database never fail with "database is
    locked" and lose no row."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    db = Database.open(url)
    with db.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE scratch (id INTEGER PRIMARY KEY, who TEXT)")
    code = (
        "import sys\n"
        "from zerogate.store import Database\n"
        "db = Database.open(sys.argv[1])\n"
        "for _ in range(300):\n"
        "    with db.begin() as conn:\n"
        "        conn.exec_driver_sql(\"INSERT INTO scratch (who) VALUES ('child')\")\n"
        "db.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    child = subprocess.Popen([sys.executable, "-c", code, url], env=env, stderr=subprocess.PIPE)
    try:
        for _ in range(300):
            with db.begin() as conn:
                conn.exec_driver_sql("INSERT INTO scratch (who) VALUES ('parent')")
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()
        with db.engine.connect() as conn:
            rows = dict(
                conn.exec_driver_sql("SELECT who, count(*) FROM scratch GROUP BY who").all()
            )
        assert rows == {"child": 300, "parent": 300}
    finally:
        db.close()


def test_sqlite_is_in_wal_mode(tmp_path: Path) -> None:
    db = Database.open(f"sqlite:///{tmp_path / 'nested' / 'z.db'}")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    db.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+psycopg://nobody@127.0.0.1:1/none", "database unreachable"),
        ("mysql://x@127.0.0.1/db", "unsupported database backend"),
        ("not a url", "invalid database URL"),
        ("sqlite://", "in-memory SQLite is not supported"),
    ],
)
def test_bad_urls_get_specific_errors(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        Database.open(url)


def test_writers_of_one_process_take_turns_without_lock_errors(database: Database) -> None:
    """Read-modify-write transactions from many threads all commit, none lost, none failing
    with "database is locked" (SQLite: they queue on Database's write lock)."""
    import threading

    from sqlalchemy import text

    with database.begin() as conn:
        conn.execute(text("CREATE TABLE zz_counter (n INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO zz_counter (n) VALUES (0)"))
    errors: list[BaseException] = []
    # PostgreSQL needs the row lock for a read-modify-write; SQLite's write lock covers it
    read = (
        "SELECT n FROM zz_counter FOR UPDATE"
        if database.dialect == "postgresql"
        else "SELECT n FROM zz_counter"
    )

    def bump() -> None:
        try:
            for _ in range(25):
                with database.begin() as conn:
                    n = conn.execute(text(read)).scalar_one()
                    conn.execute(text("UPDATE zz_counter SET n = :n"), {"n": n + 1})
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        with database.engine.connect() as conn:
            assert conn.execute(text("SELECT n FROM zz_counter")).scalar_one() == 200
    finally:
        with database.begin() as conn:
            conn.execute(text("DROP TABLE zz_counter"))


def test_driver_cursor_raises_sqlalchemy_errors(database: Database) -> None:
    """Driver-level statements fail with SQLAlchemy's exception classes, so callers (the
    ingest retry on a unique-key race, the audit writer's failure path) see one family."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    from zerogate.store import driver_cursor

    insert = (
        "INSERT INTO zz_unique (k) VALUES (%s)"
        if database.dialect == "postgresql"
        else "INSERT INTO zz_unique (k) VALUES (?)"
    )
    with database.begin() as conn:
        conn.execute(text("CREATE TABLE zz_unique (k TEXT PRIMARY KEY)"))
    try:
        with pytest.raises(IntegrityError), database.begin() as conn:
            driver_cursor(conn).executemany(insert, [("a",), ("a",)])
        with pytest.raises((ProgrammingError, OperationalError)), database.begin() as conn:
            driver_cursor(conn).execute("SELECT no_such_column FROM zz_unique")
        with database.begin() as conn:
            cur = driver_cursor(conn).execute(insert, ("b",))
            assert cur.execute("SELECT k FROM zz_unique").fetchall() == [("b",)]
    finally:
        with database.begin() as conn:
            conn.execute(text("DROP TABLE zz_unique"))
