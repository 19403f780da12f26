"""``POST /v1/svid/x509``: X.509-SVIDs for remote workloads and nodes, over HTTPS.

A caller that cannot reach a Workload API socket (a node outside Kubernetes, a pod in a
cluster without a zerogate agent) proves who it is with one attestation and sends a CSR:

- ``{"type": "join_token", "token": ...}``: a one-time token from ``zerogate token generate``,
  bound to a SPIFFE ID (like SPIRE's join_token node attestor); the token is spent;
- ``{"type": "k8s_psat", "token": ...}``: a Kubernetes projected service-account token
  verified against the configured cluster JWKS (like SPIRE's k8s_psat); its ``k8s:``
  selectors pick the registration entries the caller may have, exactly as the Workload API
  matches selectors (an entry matches when all its selectors are among the attested ones).

The CSR's key is certified; its subject and extensions are ignored (the SVID template decides
them, X509-SVID spec section 4). Errors: 400 malformed request or CSR, 401 attestation
refused, 403 no entry for the attested selectors or a denied SPIFFE ID, 503 store or audit
unavailable.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated, Any, Literal

from cryptography import x509
from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from identity.attestation import AttestationError, JoinTokens, PsatAttestor
from identity.ca import X509SvidParams
from identity.entries import Entry
from identity.service import IdentityService
from identity.spiffeid import InvalidSpiffeIdError, SpiffeId
from zerogate.errors import ZerogateError

MAX_CSR_BYTES = 16 * 1024


class Attestation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["join_token", "k8s_psat"]
    token: str = Field(min_length=1, max_length=16 * 1024)


class X509SvidRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    csr: str = Field(min_length=1, max_length=MAX_CSR_BYTES, description="PKCS#10, PEM")
    attestation: Attestation
    spiffe_id: str | None = Field(
        None, description="which of the attested identities to issue (default: the only one)"
    )


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _pick_entry(entries: list[Entry], wanted: SpiffeId | None) -> Entry | JSONResponse:
    if wanted is not None:
        chosen = [e for e in entries if e.spiffe_id == wanted]
        if not chosen:
            return _error(403, "forbidden", f"the attested workload may not have {wanted}")
        return chosen[0]
    ids = sorted({str(e.spiffe_id) for e in entries})
    if len(ids) > 1:
        return _error(
            400,
            "ambiguous_identity",
            "the attested workload matches several SPIFFE IDs; name one in spiffe_id: "
            + ", ".join(ids),
        )
    return entries[0]


def router(
    service: IdentityService, join_tokens: JoinTokens, psat: PsatAttestor | None
) -> APIRouter:
    api = APIRouter()

    def issue(request: X509SvidRequest) -> JSONResponse:
        try:
            csr = x509.load_pem_x509_csr(request.csr.encode("ascii", "replace"))
        except ValueError as exc:
            return _error(400, "invalid_csr", f"csr is not a PEM PKCS#10 request: {exc}")
        if not csr.is_signature_valid:
            return _error(400, "invalid_csr", "csr signature does not verify (proof of key)")
        wanted: SpiffeId | None = None
        if request.spiffe_id is not None:
            try:
                wanted = SpiffeId.parse(request.spiffe_id)
            except InvalidSpiffeIdError as exc:
                return _error(400, "invalid_spiffe_id", str(exc))
        entry: Entry | None = None
        selectors: tuple[str, ...]
        try:
            if request.attestation.type == "join_token":
                redemption = join_tokens.redeem(request.attestation.token)
                spiffe_id = SpiffeId.parse(redemption.spiffe_id)
                if wanted is not None and wanted != spiffe_id:
                    return _error(403, "forbidden", f"the join token is bound to {spiffe_id}")
                selectors = tuple(sorted(redemption.selectors))
                ttl = None
            else:
                if psat is None:
                    return _error(
                        400, "attestor_disabled", "k8s_psat attestation is not configured"
                    )
                attested = psat.attest(request.attestation.token)
                selectors = tuple(sorted(attested.selectors))
                matched = service.entries.match(selectors)
                if not matched:
                    return _error(
                        403, "no_entry", "no registration entry matches the attested selectors"
                    )
                picked = _pick_entry(matched, wanted)
                if isinstance(picked, JSONResponse):
                    return picked
                entry = picked
                spiffe_id = entry.spiffe_id
                ttl = timedelta(seconds=entry.x509_svid_ttl) if entry.x509_svid_ttl else None
        except AttestationError as exc:
            return _error(401, "attestation_failed", str(exc))
        if service.deny_list.is_denied(spiffe_id=spiffe_id):
            return _error(403, "identity_denied", f"{spiffe_id} is on the deny list")
        try:
            svid = service.ca.issue_x509_svid(
                X509SvidParams(
                    spiffe_id=spiffe_id,
                    csr=csr,
                    ttl=ttl,
                    dns_names=tuple(entry.dns_names) if entry else (),
                    entry_id=entry.id if entry else None,
                    selectors=selectors,
                )
            )
        except ZerogateError as exc:
            status = 503 if exc.code in ("store_error", "audit_error") else 400
            return _error(status, exc.code, exc.message)
        return JSONResponse(
            {
                "spiffe_id": str(svid.spiffe_id),
                "svid": svid.chain_pem().decode("ascii"),
                "expires_at": svid.expires_at.isoformat(),
                "bundle": service.ca.bundle().to_pem(),
            }
        )

    @api.post("/v1/svid/x509")
    async def post_x509_svid(body: Annotated[Any, Body()]) -> JSONResponse:
        try:
            request = X509SvidRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return _error(400, "invalid_request", f"{where}: {first['msg']}")
        return await asyncio.to_thread(issue, request)

    return api
