"""Registration entries: which SPIFFE ID a workload with which selectors gets.

An entry is ``{id, spiffe_id, parent_id, selectors, x509_svid_ttl, jwt_svid_ttl, dns_names,
admin, hint, disabled, revision}`` (SPIRE's ``RegistrationEntry``). A workload gets every
enabled entry whose selectors are a *subset* of its attested selectors (:meth:`match`).

Every create/update/delete is committed, then written to the audit log
(``identity.entry.created|updated|deleted``) and waited for, so the caller only sees success
once the record is durable; listeners registered with :meth:`EntryRepository.on_change` are
called after that, so Workload API streams react at once (a deleted or disabled entry stops
being served).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, delete, select, update

from identity.errors import EntryConflictError, EntryError, EntryNotFoundError
from identity.spiffeid import InvalidSpiffeIdError, SpiffeId, TrustDomain
from zerogate.audit import AuditSink
from zerogate.clock import Clock
from zerogate.store import Database, driver_cursor
from zerogate.store.tables.identity import identity_entry, identity_entry_selector

log = logging.getLogger(__name__)

AUDIT_TIMEOUT_S = 10.0
MAX_TTL_S = 366 * 24 * 3600
_SELECTOR_TYPE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f]")
_VERSION_SQL = "SELECT count(*), coalesce(sum(revision), 0), max(updated_at) FROM identity_entry"
# RFC 1123 host names, optionally with one leading wildcard label.
_DNS_NAME = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_UPDATABLE = frozenset(
    {
        "spiffe_id",
        "parent_id",
        "selectors",
        "x509_svid_ttl",
        "jwt_svid_ttl",
        "dns_names",
        "admin",
        "hint",
        "disabled",
    }
)


@dataclass(frozen=True, slots=True, order=True)
class Selector:
    """``type:value``, e.g. ``unix:uid:1000`` is type ``unix``, value ``uid:1000``."""

    type: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Selector:
        if not isinstance(text, str):
            raise EntryError(f"selector {text!r} must be a string TYPE:VALUE")
        kind, sep, value = text.partition(":")
        if not sep or not value:
            raise EntryError(f"selector {text!r} must be TYPE:VALUE (e.g. unix:uid:1000)")
        if not _SELECTOR_TYPE.match(kind):
            raise EntryError(f"selector {text!r}: type must be lowercase [a-z0-9_-]")
        if len(text) > 512 or _CONTROL.search(text):
            raise EntryError(f"selector {text!r}: at most 512 printable characters")
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    spiffe_id: SpiffeId
    selectors: tuple[Selector, ...]
    parent_id: SpiffeId | None = None
    x509_svid_ttl: int | None = None
    jwt_svid_ttl: int | None = None
    dns_names: tuple[str, ...] = ()
    admin: bool = False
    hint: str = ""
    disabled: bool = False
    revision: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "spiffe_id": str(self.spiffe_id),
            "parent_id": str(self.parent_id) if self.parent_id else None,
            "selectors": [str(s) for s in self.selectors],
            "x509_svid_ttl": self.x509_svid_ttl,
            "jwt_svid_ttl": self.jwt_svid_ttl,
            "dns_names": list(self.dns_names),
            "admin": self.admin,
            "hint": self.hint,
            "disabled": self.disabled,
            "revision": self.revision,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass(frozen=True, slots=True)
class EntryEvent:
    action: Literal["created", "updated", "deleted"]
    entry: Entry


@dataclass(slots=True)
class EntrySpec:
    """The writable fields of an entry, validated by :func:`validate_spec`."""

    spiffe_id: SpiffeId
    selectors: tuple[Selector, ...]
    parent_id: SpiffeId | None = None
    x509_svid_ttl: int | None = None
    jwt_svid_ttl: int | None = None
    dns_names: tuple[str, ...] = ()
    admin: bool = False
    hint: str = ""
    disabled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EntrySpec:
        """From JSON (``--data -``, the HTTP API); unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise EntryError("entry must be a JSON object")
        unknown = set(data) - _UPDATABLE
        if unknown:
            raise EntryError(f"unknown entry field(s): {', '.join(sorted(unknown))}")
        if "spiffe_id" not in data:
            raise EntryError("entry needs spiffe_id")
        fields = _coerce(data)
        fields.setdefault("selectors", ())
        return cls(**fields)


def _parse_id(value: Any, name: str) -> SpiffeId:
    try:
        return value if isinstance(value, SpiffeId) else SpiffeId.parse(value)
    except InvalidSpiffeIdError as exc:
        raise EntryError(f"{name}: {exc}") from exc


def _ttl(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TTL_S:
        raise EntryError(f"{name} must be whole seconds between 1 and {MAX_TTL_S}, got {value!r}")
    return value


def _coerce(data: Mapping[str, Any]) -> dict[str, Any]:
    """Field values of a JSON-ish mapping as EntrySpec types, each checked."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "spiffe_id":
            out[key] = _parse_id(value, key)
        elif key == "parent_id":
            out[key] = None if value in (None, "") else _parse_id(value, key)
        elif key == "selectors":
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise EntryError("selectors must be a list of TYPE:VALUE strings")
            out[key] = tuple(
                sorted({v if isinstance(v, Selector) else Selector.parse(v) for v in value})
            )
        elif key in ("x509_svid_ttl", "jwt_svid_ttl"):
            out[key] = _ttl(value, key)
        elif key == "dns_names":
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise EntryError("dns_names must be a list of DNS names")
            names = []
            for n in value:
                if not isinstance(n, str) or len(n) > 253 or not _DNS_NAME.match(n):
                    raise EntryError(f"dns name {n!r} is not a lowercase RFC 1123 host name")
                if n not in names:
                    names.append(n)
            out[key] = tuple(names)
        elif key in ("admin", "disabled"):
            if not isinstance(value, bool):
                raise EntryError(f"{key} must be true or false")
            out[key] = value
        elif key == "hint":
            if not isinstance(value, str) or len(value) > 1024:
                raise EntryError("hint must be a string of at most 1024 characters")
            out[key] = value
        else:
            raise EntryError(f"unknown entry field {key!r}")
    return out


def validate_spec(spec: EntrySpec, trust_domain: TrustDomain | None) -> None:
    if not spec.selectors:
        raise EntryError("an entry needs at least one selector")
    if trust_domain is not None and not spec.spiffe_id.member_of(trust_domain):
        raise EntryError(f"spiffe_id {spec.spiffe_id} is not in trust domain {trust_domain}")
    if not spec.spiffe_id.path:
        raise EntryError(f"spiffe_id {spec.spiffe_id} needs a path: it names a workload")


@dataclass
class _ReadMemo:
    """Parsed values shared by the rows of one read: most entries of a cluster repeat the
    same parent ID and namespace selectors, and parsing them again was most of the ~40 us an
    entry cost, which the runtime correlator pays for every entry on each full read."""

    ids: dict[str, SpiffeId] = field(default_factory=dict)
    selectors: dict[str, Selector] = field(default_factory=dict)


def _parsed(cache: dict[str, Any], text: str, parse: Callable[[str], Any]) -> Any:
    value = cache.get(text)
    if value is None:
        value = cache[text] = parse(text)
    return value


def _row_to_entry(row: Any, memo: _ReadMemo | None = None) -> Entry:
    """An entry from its stored row, validated again (SPIFFE ID, selectors)."""
    memo = memo or _ReadMemo()
    parent = row.parent_id
    return Entry(
        id=row.id,
        spiffe_id=SpiffeId.parse(row.spiffe_id),
        parent_id=_parsed(memo.ids, parent, SpiffeId.parse) if parent else None,
        selectors=tuple(sorted(_parsed(memo.selectors, s, Selector.parse) for s in row.selectors)),
        x509_svid_ttl=row.x509_svid_ttl,
        jwt_svid_ttl=row.jwt_svid_ttl,
        dns_names=tuple(row.dns_names),
        admin=bool(row.admin),
        hint=row.hint,
        disabled=bool(row.disabled),
        revision=int(row.revision),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class EntryRepository:
    """Entries in the store (tables ``identity_entry`` and ``identity_entry_selector``)."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock,
        audit: AuditSink | None = None,
        trust_domain: TrustDomain | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.audit = audit
        self.trust_domain = trust_domain
        self._listeners: list[Callable[[EntryEvent], None]] = []
        self._lock = threading.Lock()

    # Notifications ---------------------------------------------------------------------------

    def on_change(self, callback: Callable[[EntryEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` after every committed change; returns unsubscribe."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return unsubscribe

    def _after(
        self, action: Literal["created", "updated", "deleted"], entry: Entry, actor: str | None
    ) -> None:
        if self.audit is not None:
            payload = {"actor": actor, **entry.to_dict()}
            self.audit.append(f"identity.entry.{action}", payload).result(timeout=AUDIT_TIMEOUT_S)
        log.info(
            "event=identity.entry.%s entry_id=%s spiffe_id=%s revision=%d",
            action,
            entry.id,
            entry.spiffe_id,
            entry.revision,
        )
        with self._lock:
            listeners = list(self._listeners)
        for cb in listeners:
            try:
                cb(EntryEvent(action, entry))
            except Exception:
                log.exception("event=identity.entry.listener_failed entry_id=%s", entry.id)

    # Queries ---------------------------------------------------------------------------------

    def _get(self, conn: Connection, entry_id: str) -> Entry:
        row = conn.execute(select(identity_entry).where(identity_entry.c.id == entry_id)).first()
        if row is None:
            raise EntryNotFoundError(f"no entry with id {entry_id!r}")
        return _row_to_entry(row)

    def get(self, entry_id: str) -> Entry:
        with self.db.begin() as conn:
            return self._get(conn, entry_id)

    def list(
        self, *, spiffe_id: SpiffeId | str | None = None, selector: str | None = None
    ) -> list[Entry]:
        query = select(identity_entry).order_by(identity_entry.c.spiffe_id, identity_entry.c.id)
        if spiffe_id is not None:
            query = query.where(identity_entry.c.spiffe_id == str(spiffe_id))
        if selector is not None:
            sub = select(identity_entry_selector.c.entry_id).where(
                identity_entry_selector.c.selector == str(Selector.parse(selector))
            )
            query = query.where(identity_entry.c.id.in_(sub))
        # a read: no write transaction (on SQLite that is the one write lock, and building
        # 400 entries inside it held every writer up for 30-40 ms); rows are built after
        with self.db.engine.connect() as conn:
            rows = conn.execute(query).all()
        memo = _ReadMemo()
        return [_row_to_entry(r, memo) for r in rows]

    def version(self) -> tuple[int, int, Any]:
        """(count, sum of revisions, last update) of the stored entries: moves with every
        create, update and delete, including another process's (the CLI, a replica), which
        ``on_change`` does not report. One aggregate read; no write lock. Driver-level SQL
        (the last update as the driver returns it: the value is only compared): the runtime
        correlator asks after alerts that match nothing, up to 50 times a second under a
        flood, and the Core statement cost ~320 us a call, the driver's ~50."""
        with self.db.engine.connect() as conn:
            count, revisions, updated = driver_cursor(conn).execute(_VERSION_SQL).fetchone()
        return int(count), int(revisions), updated

    def match(self, selectors: Iterable[str | Selector]) -> builtins.list[Entry]:
        """Enabled entries whose selectors are all among ``selectors``."""
        have = {str(s) for s in selectors}
        if not have:
            return []
        sub = select(identity_entry_selector.c.entry_id).where(
            identity_entry_selector.c.selector.in_(sorted(have))
        )
        query = (
            select(identity_entry)
            .where(identity_entry.c.id.in_(sub), identity_entry.c.disabled.is_(False))
            .order_by(identity_entry.c.spiffe_id, identity_entry.c.id)
        )
        with self.db.begin() as conn:
            candidates = [_row_to_entry(r) for r in conn.execute(query)]
        return [e for e in candidates if {str(s) for s in e.selectors} <= have]

    # Writes ----------------------------------------------------------------------------------

    def _check_duplicate(self, conn: Connection, spec: EntrySpec, exclude: str | None) -> None:
        rows = conn.execute(
            select(identity_entry).where(identity_entry.c.spiffe_id == str(spec.spiffe_id))
        ).all()
        for row in rows:
            other = _row_to_entry(row)
            if (
                other.id != exclude
                and other.parent_id == spec.parent_id
                and other.selectors == spec.selectors
            ):
                raise EntryConflictError(
                    f"entry {other.id} already maps these selectors to {spec.spiffe_id}"
                )

    def _write_selectors(
        self, conn: Connection, entry_id: str, selectors: Sequence[Selector]
    ) -> None:
        conn.execute(
            delete(identity_entry_selector).where(identity_entry_selector.c.entry_id == entry_id)
        )
        conn.execute(
            identity_entry_selector.insert(),
            [{"entry_id": entry_id, "selector": str(s)} for s in selectors],
        )

    @staticmethod
    def _values(spec: EntrySpec) -> dict[str, Any]:
        return {
            "spiffe_id": str(spec.spiffe_id),
            "parent_id": str(spec.parent_id) if spec.parent_id else None,
            "selectors": [str(s) for s in spec.selectors],
            "x509_svid_ttl": spec.x509_svid_ttl,
            "jwt_svid_ttl": spec.jwt_svid_ttl,
            "dns_names": list(spec.dns_names),
            "admin": spec.admin,
            "hint": spec.hint,
            "disabled": spec.disabled,
        }

    def create(self, spec: EntrySpec | Mapping[str, Any], *, actor: str | None = None) -> Entry:
        if not isinstance(spec, EntrySpec):
            spec = EntrySpec.from_dict(spec)
        validate_spec(spec, self.trust_domain)
        now = self.clock.now()
        entry_id = str(uuid.uuid4())
        with self.db.begin() as conn:
            self._check_duplicate(conn, spec, None)
            conn.execute(
                identity_entry.insert().values(
                    id=entry_id, revision=1, created_at=now, updated_at=now, **self._values(spec)
                )
            )
            self._write_selectors(conn, entry_id, spec.selectors)
            entry = self._get(conn, entry_id)
        self._after("created", entry, actor)
        return entry

    def update(
        self,
        entry_id: str,
        changes: Mapping[str, Any],
        *,
        expected_revision: int | None = None,
        actor: str | None = None,
    ) -> Entry:
        """Apply ``changes`` (field -> new value); optimistic check on ``expected_revision``."""
        coerced = _coerce(changes)
        with self.db.begin() as conn:
            current = self._get(conn, entry_id)
            if expected_revision is not None and current.revision != expected_revision:
                raise EntryConflictError(
                    f"entry {entry_id} is at revision {current.revision}, "
                    f"not {expected_revision}: re-read and retry"
                )
            spec = EntrySpec(
                spiffe_id=current.spiffe_id,
                selectors=current.selectors,
                parent_id=current.parent_id,
                x509_svid_ttl=current.x509_svid_ttl,
                jwt_svid_ttl=current.jwt_svid_ttl,
                dns_names=current.dns_names,
                admin=current.admin,
                hint=current.hint,
                disabled=current.disabled,
            )
            for key, value in coerced.items():
                setattr(spec, key, value)
            validate_spec(spec, self.trust_domain)
            self._check_duplicate(conn, spec, entry_id)
            done = conn.execute(
                update(identity_entry)
                .where(
                    identity_entry.c.id == entry_id,
                    identity_entry.c.revision == current.revision,
                )
                .values(
                    revision=current.revision + 1,
                    updated_at=self.clock.now(),
                    **self._values(spec),
                )
            ).rowcount
            if done != 1:
                raise EntryConflictError(f"entry {entry_id} changed concurrently: retry")
            self._write_selectors(conn, entry_id, spec.selectors)
            entry = self._get(conn, entry_id)
        self._after("updated", entry, actor)
        return entry

    def delete(self, entry_id: str, *, actor: str | None = None) -> Entry:
        with self.db.begin() as conn:
            entry = self._get(conn, entry_id)
            conn.execute(
                delete(identity_entry_selector).where(
                    identity_entry_selector.c.entry_id == entry_id
                )
            )
            conn.execute(delete(identity_entry).where(identity_entry.c.id == entry_id))
        self._after("deleted", entry, actor)
        return entry
