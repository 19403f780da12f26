"""The deny list: revoked SPIFFE IDs, X.509-SVID serials and JWT-SVID jti hashes.

DESIGN.md 3 (Revocation): SVIDs are short-lived, so "revoke" means disable/delete the entry,
stop serving its SVIDs, and add the SPIFFE ID (or one SVID's serial, or the SHA-256 hex of a
JWT-SVID's ``jti``) here; every enforcement point asks :meth:`DenyList.is_denied` after
validating a credential. Lookups read an in-memory snapshot refreshed on every local write and
at least every ``refresh_s`` seconds (other replicas' writes), so the request path does no
query per call. Additions are audit records (``identity.deny.added``/``removed``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import delete, select

from identity.errors import IdentityError
from identity.spiffeid import SpiffeId
from zerogate.audit import AuditSink
from zerogate.clock import Clock
from zerogate.store import Database
from zerogate.store.tables.identity import identity_deny

log = logging.getLogger(__name__)

DenyKind = Literal["spiffe_id", "x509_serial", "jti_hash"]
KINDS: tuple[DenyKind, ...] = ("spiffe_id", "x509_serial", "jti_hash")


@dataclass(frozen=True, slots=True)
class DenyRecord:
    kind: DenyKind
    value: str
    reason: str
    created_at: datetime
    expires_at: datetime | None


def _normalise(kind: str, value: str) -> str:
    if kind not in KINDS:
        raise IdentityError(f"deny kind {kind!r} must be one of {', '.join(KINDS)}")
    if kind == "spiffe_id":
        return str(SpiffeId.parse(value))
    text = value.lower().strip()
    if not text or any(c not in "0123456789abcdef" for c in text):
        raise IdentityError(f"{kind} must be lowercase hex, got {value!r}")
    if kind == "x509_serial":
        return text.lstrip("0") or "0"
    if len(text) != 64:
        raise IdentityError(f"jti_hash must be 64 hex characters (SHA-256), got {value!r}")
    return text


class DenyList:
    def __init__(
        self,
        db: Database,
        *,
        clock: Clock,
        audit: AuditSink | None = None,
        refresh_s: float = 2.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.audit = audit
        self.refresh = timedelta(seconds=refresh_s)
        self._lock = threading.Lock()
        self._snapshot: dict[tuple[str, str], datetime | None] = {}
        self._reasons: dict[tuple[str, str], str] = {}
        self._loaded_at: datetime | None = None

    def _reload(self) -> None:
        with self.db.begin() as conn:
            rows = conn.execute(
                select(
                    identity_deny.c.kind,
                    identity_deny.c.value,
                    identity_deny.c.expires_at,
                    identity_deny.c.reason,
                )
            ).all()
        with self._lock:
            self._snapshot = {(r.kind, r.value): r.expires_at for r in rows}
            self._reasons = {(r.kind, r.value): r.reason or "" for r in rows}
            self._loaded_at = self.clock.now()

    def _fresh(self) -> dict[tuple[str, str], datetime | None]:
        now = self.clock.now()
        with self._lock:
            stale = self._loaded_at is None or now - self._loaded_at >= self.refresh
        if stale:
            self._reload()
        with self._lock:
            return self._snapshot

    def add(
        self,
        kind: DenyKind,
        value: str,
        *,
        reason: str = "",
        expires_at: datetime | None = None,
        actor: str | None = None,
    ) -> DenyRecord:
        value = _normalise(kind, value)
        now = self.clock.now()
        with self.db.begin() as conn:
            conn.execute(
                delete(identity_deny).where(
                    identity_deny.c.kind == kind, identity_deny.c.value == value
                )
            )
            conn.execute(
                identity_deny.insert().values(
                    kind=kind, value=value, reason=reason, created_at=now, expires_at=expires_at
                )
            )
        self._reload()
        if self.audit is not None:
            self.audit.append(
                "identity.deny.added",
                {"kind": kind, "value": value, "reason": reason, "actor": actor},
            ).result(timeout=10.0)
        log.info("event=identity.deny.added kind=%s value=%s", kind, value)
        return DenyRecord(kind, value, reason, now, expires_at)

    def remove(self, kind: DenyKind, value: str, *, actor: str | None = None) -> bool:
        value = _normalise(kind, value)
        with self.db.begin() as conn:
            n = conn.execute(
                delete(identity_deny).where(
                    identity_deny.c.kind == kind, identity_deny.c.value == value
                )
            ).rowcount
        self._reload()
        if n and self.audit is not None:
            self.audit.append(
                "identity.deny.removed", {"kind": kind, "value": value, "actor": actor}
            ).result(timeout=10.0)
        return bool(n)

    def list(self) -> list[DenyRecord]:
        with self.db.begin() as conn:
            rows = conn.execute(select(identity_deny).order_by(identity_deny.c.created_at)).all()
        return [DenyRecord(r.kind, r.value, r.reason, r.created_at, r.expires_at) for r in rows]

    def denial_reason(self, *, spiffe_id: SpiffeId | str) -> str | None:
        """Why ``spiffe_id`` is on the list ("" when no reason was given), or None if not."""
        if not self.is_denied(spiffe_id=spiffe_id):
            return None
        with self._lock:
            return self._reasons.get(("spiffe_id", str(spiffe_id)), "")

    def is_denied(
        self,
        *,
        spiffe_id: SpiffeId | str | None = None,
        x509_serial: int | str | None = None,
        jti_hash: str | None = None,
    ) -> bool:
        """True when any given identifier is on the list (and not expired)."""
        snapshot = self._fresh()
        now = self.clock.now()
        keys: list[tuple[str, str]] = []
        if spiffe_id is not None:
            keys.append(("spiffe_id", str(spiffe_id)))
        if x509_serial is not None:
            serial = format(x509_serial, "x") if isinstance(x509_serial, int) else x509_serial
            keys.append(("x509_serial", serial.lower().lstrip("0") or "0"))
        if jti_hash is not None:
            keys.append(("jti_hash", jti_hash.lower()))
        for key in keys:
            if key in snapshot:
                expires = snapshot[key]
                if expires is None or now < expires:
                    return True
        return False
