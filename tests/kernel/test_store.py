"""The store: migrations on both backends, and clear errors for bad URLs."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from zerogate.errors import StoreError
from zerogate.store import Database


def test_migrations_create_kernel_tables_and_are_idempotent(database: Database) -> None:
    tables = set(inspect(database.engine).get_table_names())
    assert {"audit_log", "audit_checkpoint", "alembic_version"} <= tables
    database.migrate()  # a second run changes nothing and does not fail
    assert set(inspect(database.engine).get_table_names()) == tables


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
