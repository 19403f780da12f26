"""Small durable key/value state of the runtime subsystem (``runtime_state``).

Used for the file source's position (``tail:<absolute path>`` -> ``{dev, inode, offset}``) so a
restarted ``zerogate runtime tail`` resumes where it stopped.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

from zerogate.clock import SYSTEM_CLOCK, Clock
from zerogate.store import Database
from zerogate.store.tables import runtime_state


class StateStore:
    def __init__(self, db: Database, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self._clock = clock

    def get(self, key: str) -> Any | None:
        with self._db.engine.connect() as conn:
            return conn.execute(
                select(runtime_state.c.value).where(runtime_state.c.key == key)
            ).scalar()

    def put(self, key: str, value: Any) -> None:
        with self._db.begin() as conn:
            put_in(conn, key, value, self._clock)


def put_in(conn: Connection, key: str, value: Any, clock: Clock) -> None:
    """Upsert inside the caller's transaction (portable: update, else insert)."""
    now = clock.now()
    changed = conn.execute(
        update(runtime_state).where(runtime_state.c.key == key).values(value=value, updated_at=now)
    ).rowcount
    if changed:
        return
    try:
        with conn.begin_nested():
            conn.execute(runtime_state.insert().values(key=key, value=value, updated_at=now))
    except IntegrityError:
        conn.execute(
            update(runtime_state)
            .where(runtime_state.c.key == key)
            .values(value=value, updated_at=now)
        )
