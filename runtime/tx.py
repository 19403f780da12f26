"""Write transactions of the runtime repositories.

On SQLite a deferred transaction that reads and then writes fails with SQLITE_BUSY at once when
another writer (the audit log, identity) holds the lock; ``BEGIN IMMEDIATE`` takes the write
lock first and waits (busy_timeout) instead. PostgreSQL ignores the option.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection

from zerogate.store import Database


@contextmanager
def write(db: Database) -> Iterator[Connection]:
    """``Database.begin``: BEGIN IMMEDIATE, after this process's other writers."""
    with db.begin() as conn:
        yield conn
