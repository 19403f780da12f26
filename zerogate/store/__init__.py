"""The store: SQLAlchemy 2 Core over SQLite (default, WAL) or PostgreSQL.

``Database.open(url)`` connects, applies every Alembic branch (``upgrade heads``) and hands
out connections. Subsystems keep small repositories of their own over ``Database.engine``;
table definitions live in ``zerogate/store/tables/<subsystem>.py``.
"""

from zerogate.store.database import Database, driver_cursor, ensure_sqlite_dir

__all__ = ["Database", "driver_cursor", "ensure_sqlite_dir"]
