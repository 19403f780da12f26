"""Shared fixtures. ``database`` runs a test on both SQLite and the real PostgreSQL.

PostgreSQL: ``ZEROGATE_TEST_POSTGRES_URL`` (default the local server's ``test`` database).
Each test gets its own schema, dropped afterwards. Outside CI a missing server skips the
PostgreSQL half; with ``CI=true`` it fails instead, so CI never silently skips it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from zerogate.audit import AuditLog
from zerogate.store import Database

POSTGRES_URL = os.environ.get(
    "ZEROGATE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_available() -> str | None:
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    problem = _postgres_available()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {problem}")
        pytest.skip(f"PostgreSQL unreachable: {problem}")
    return POSTGRES_URL


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL for an empty database: SQLite file or an isolated PostgreSQL schema.

    For PostgreSQL the schema is carried in the URL as ``options=-csearch_path=<schema>``
    so that child processes and CLI calls reach the same schema.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'zerogate.db'}"
        return
    schema = request.getfixturevalue("pg_schema")
    yield f"{request.getfixturevalue('postgres_url')}?options=-csearch_path%3D{schema}"


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A migrated ``Database`` on SQLite and on PostgreSQL (the test runs twice)."""
    db = Database.open(database_url)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def audit_log(database: Database, tmp_path: Path) -> Iterator[AuditLog]:
    """A real group-commit AuditLog on ``database`` (both backends)."""
    log = AuditLog.open(database, signing_key=tmp_path / "audit-ed25519.pem")
    try:
        yield log
    finally:
        log.close()
