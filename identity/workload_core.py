"""Adapts the identity core (CA, entry repository, bundle validation) to the Workload API.

:class:`CoreIdentitySource` is the ``identity.workload_cache.IdentitySource`` over the real
parts: :class:`identity.entries.EntryRepository` for matching,
:class:`identity.ca.CertificateAuthority` for issuance (which audits and checks the deny list
itself) and :func:`identity.bundle.validate_jwt_svid` for ValidateJWTSVID. It holds no state
of its own besides subscriptions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Hashable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from identity.bundle import Bundle, JwtClaims, validate_jwt_svid
from identity.ca import CertificateAuthority, JwtSvidParams, X509SvidParams
from identity.entries import Entry, EntryRepository
from identity.rotation import Kind
from identity.spiffeid import SpiffeId
from identity.workload_cache import EntryView, X509Material
from zerogate.store.tables.identity import identity_bundle_state

log = logging.getLogger(__name__)


def entry_view(entry: Entry) -> EntryView:
    return EntryView(
        id=entry.id,
        spiffe_id=str(entry.spiffe_id),
        revision=entry.revision,
        hint=entry.hint,
        selectors=tuple(str(s) for s in entry.selectors),
        x509_svid_ttl_s=entry.x509_svid_ttl,
        jwt_svid_ttl_s=entry.jwt_svid_ttl,
        dns_names=tuple(entry.dns_names),
    )


IssuanceCheck = Callable[[dict[str, Any]], tuple[bool, list[str]]]
"""The optional issuance policy (DESIGN.md 3: ``data.zerogate.identity`` after selector
matching): input ``{spiffe_id, trust_domain, kind, ttl_s, parent_id, selectors, admin}``,
answer (allowed, reasons). Injected by the wiring so identity imports no policy code."""


class CoreIdentitySource:
    """The Workload API's ``IdentitySource`` over the CA and the entry repository."""

    def __init__(
        self,
        ca: CertificateAuthority,
        entries: EntryRepository,
        *,
        issuance_check: IssuanceCheck | None = None,
    ) -> None:
        self._ca = ca
        self._entries = entries
        self._check = issuance_check

    def entries_for(self, selectors: frozenset[str]) -> Sequence[EntryView]:
        matched = self._entries.match(selectors)
        if self._check is not None:
            matched = [e for e in matched if self._allowed(e)]
        return [entry_view(e) for e in matched]

    def _allowed(self, entry: Entry) -> bool:
        """The issuance policy's verdict on an entry a caller matched; any error denies."""
        assert self._check is not None
        facts = {
            "spiffe_id": str(entry.spiffe_id),
            "trust_domain": str(entry.spiffe_id.trust_domain),
            "kind": "x509",
            "ttl_s": entry.x509_svid_ttl,
            "parent_id": str(entry.parent_id) if entry.parent_id else "",
            "selectors": sorted(str(s) for s in entry.selectors),
            "admin": entry.admin,
        }
        try:
            allowed, reasons = self._check(facts)
        except Exception:
            log.exception("event=identity.issuance_check_failed spiffe_id=%s", entry.spiffe_id)
            return False
        if not allowed:
            log.warning(
                "event=identity.issuance_denied spiffe_id=%s entry_id=%s reasons=%s",
                entry.spiffe_id,
                entry.id,
                "; ".join(reasons),
            )
        return allowed

    def issue_x509(self, entry: EntryView) -> X509Material:
        svid = self._ca.issue_x509_svid(
            X509SvidParams(
                spiffe_id=SpiffeId.parse(entry.spiffe_id),
                ttl=_ttl(entry.x509_svid_ttl_s),
                dns_names=entry.dns_names,
                hint=entry.hint,
                entry_id=entry.id,
                selectors=entry.selectors,
            )
        )
        return X509Material(
            spiffe_id=entry.spiffe_id,
            chain=tuple(svid.cert_chain),
            private_key_der=svid.key_der(),
            not_before=svid.leaf.not_valid_before_utc,
            not_after=svid.expires_at,
        )

    def issue_jwt(self, entry: EntryView, audience: Sequence[str]) -> str:
        svid = self._ca.issue_jwt_svid(
            JwtSvidParams(
                spiffe_id=SpiffeId.parse(entry.spiffe_id),
                audience=tuple(audience),
                ttl=_ttl(entry.jwt_svid_ttl_s),
                hint=entry.hint,
                entry_id=entry.id,
                selectors=entry.selectors,
            )
        )
        return svid.token

    def bundles(self) -> tuple[Bundle, ...]:
        return (self._ca.bundle(),)

    def validate_jwt(self, token: str, audience: str) -> JwtClaims:
        return validate_jwt_svid(token, audience, self._ca.bundle(), self._ca.clock.now())

    def signing_authority(self) -> Hashable:
        authority, _ = self._ca.manager.active(Kind.X509)
        return authority.key_id

    def version(self) -> Hashable:
        """Entries (count, revisions, last update) and the bundle sequence, as stored: also
        moves when another process (the CLI, another replica) changed them."""
        manager = self._ca.manager
        # reads only, outside a write transaction: Database.begin would take the write slot
        # (on SQLite the one write lock, which event ingestion and the audit chain wait for)
        # on every poll of the Workload API cache
        entries = self._entries.version()
        with manager.db.engine.connect() as conn:
            sequence = conn.execute(
                select(identity_bundle_state.c.sequence).where(
                    identity_bundle_state.c.trust_domain == manager.trust_domain.name
                )
            ).scalar()
        return (tuple(entries), sequence, manager.sequence)

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        def on_anything(_: Any) -> None:
            callback()

        unsubscribes = [self._ca.on_change(on_anything), self._entries.on_change(on_anything)]

        def unsubscribe() -> None:
            for u in unsubscribes:
                with contextlib.suppress(Exception):
                    u()

        return unsubscribe


def _ttl(seconds: int | None) -> timedelta | None:
    return timedelta(seconds=seconds) if seconds else None
