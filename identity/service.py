"""Builds the identity core from settings: one object that the server and the CLI share.

``open_identity(settings, db, audit, clock)`` opens the key manager, loads (or creates) the CA
slots from the store, and returns an :class:`IdentityService` holding the CA, the rotator,
the entries repository and the deny list. Nothing here signs or stores by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from identity.ca import CertificateAuthority
from identity.denylist import DenyList
from identity.entries import EntryRepository
from identity.keys import KeyManager, KeyType, open_key_manager
from identity.rotation import AuthorityManager, Rotator, UpstreamAuthority
from identity.spiffeid import SpiffeId, TrustDomain
from zerogate.audit import AuditSink
from zerogate.clock import SYSTEM_CLOCK, Clock
from zerogate.config import Settings
from zerogate.errors import ConfigError
from zerogate.store import Database

SERVER_PATH = "/zerogate/server"


@dataclass(slots=True)
class IdentityService:
    trust_domain: TrustDomain
    keys: KeyManager
    authorities: AuthorityManager
    ca: CertificateAuthority
    rotator: Rotator
    entries: EntryRepository
    deny_list: DenyList
    server_dns_names: tuple[str, ...]

    @property
    def server_id(self) -> SpiffeId:
        """The control plane's own SPIFFE ID (DESIGN.md 7a)."""
        return SpiffeId.from_path(self.trust_domain, SERVER_PATH)

    def admin_refusal(self, who: SpiffeId | None) -> tuple[int, str, str] | None:
        """Why ``who`` may not call a write API, as (HTTP status, code, message); None if
        it may: it needs an enabled entry marked admin and must not be on the deny list."""
        if who is None:
            return 401, "unauthenticated", "an X.509-SVID client certificate is required"
        if self.deny_list.is_denied(spiffe_id=who):
            return 403, "identity_denied", f"{who} is on the deny list"
        if not any(e.admin and not e.disabled for e in self.entries.list(spiffe_id=who)):
            return 403, "forbidden", f"{who} is not an admin identity"
        return None


def open_identity(
    settings: Settings,
    db: Database,
    audit: AuditSink | None = None,
    clock: Clock = SYSTEM_CLOCK,
    *,
    rotate_now: bool = True,
) -> IdentityService:
    """Open the identity core. ``rotate_now`` runs one rotation step so a CA is active."""
    ident = settings.identity
    trust_domain = TrustDomain.parse(settings.trust_domain)
    upstream = None
    if ident.upstream_ca_cert is not None or ident.upstream_ca_key is not None:
        if ident.upstream_ca_cert is None or ident.upstream_ca_key is None:
            raise ConfigError(
                "identity.upstream_ca_cert and identity.upstream_ca_key must be given together"
            )
        upstream = UpstreamAuthority.from_files(
            ident.upstream_ca_cert, ident.upstream_ca_key, ident.upstream_ca_bundle
        )
    keys = open_key_manager(ident.key_store, settings.data_dir / "keys")
    deny_list = DenyList(db, clock=clock, audit=audit)
    authorities = AuthorityManager(
        trust_domain=trust_domain,
        db=db,
        keys=keys,
        clock=clock,
        ca_ttl=timedelta(seconds=ident.ca_ttl_s),
        key_type=KeyType(ident.key_type),
        upstream=upstream,
        refresh_hint_s=ident.bundle_refresh_hint_s,
    )
    jwt_alg = ident.jwt_algorithm
    ca = CertificateAuthority(
        authorities,
        clock=clock,
        x509_svid_ttl=timedelta(seconds=ident.x509_svid_ttl_s),
        jwt_svid_ttl=timedelta(seconds=ident.jwt_svid_ttl_s),
        # the default ES256 follows the key type (ES384 for P-384, RS256 for RSA)
        jwt_algorithm=None if jwt_alg == "ES256" else jwt_alg,
        audit=audit,
        deny_list=deny_list,
    )
    service = IdentityService(
        trust_domain=trust_domain,
        keys=keys,
        authorities=authorities,
        ca=ca,
        rotator=Rotator(authorities),
        entries=EntryRepository(db, clock=clock, audit=audit, trust_domain=trust_domain),
        deny_list=deny_list,
        server_dns_names=tuple(ident.server_dns_names),
    )
    if rotate_now:
        authorities.tick()
    return service
