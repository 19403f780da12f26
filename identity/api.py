"""HTTP API of the identity core: ``GET /v1/bundle``, entry CRUD, ``POST /v1/svid/jwt``.

Thin over the core (SPIRE ``api/entry/v1/service.go`` style): parse, one call into
``IdentityService``, serialise. Who the caller is comes from a dependency the server passes
in (``caller``: returns the authenticated SPIFFE ID from the mTLS X.509-SVID, or None), so
this module holds no transport security of its own. Writes need an *admin* caller: one
with an enabled entry for its SPIFFE ID marked ``admin`` and not on the deny list.

Errors map once (``_error``) from the domain ``code`` to a status and a JSON body
``{"code", "message"}``: invalid input 400, unauthenticated 401, not admin / denied 403,
not found 404, conflict 409, store or audit unavailable 503 (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from identity.ca import JwtSvidParams
from identity.service import IdentityService
from identity.spiffeid import SpiffeId
from zerogate.errors import ZerogateError

log = logging.getLogger(__name__)

CallerDependency = Callable[..., SpiffeId | None] | Callable[..., Awaitable[SpiffeId | None]]

_STATUS = {
    "invalid_spiffe_id": 400,
    "invalid_entry": 400,
    "invalid_jwt_svid": 400,
    "invalid_x509_svid": 400,
    "invalid_bundle": 400,
    "ca_error": 400,
    "identity_denied": 403,
    "entry_not_found": 404,
    "entry_conflict": 409,
    "store_error": 503,
    "audit_error": 503,
    "invalid_payload": 503,
}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def error_response(exc: ZerogateError) -> JSONResponse:
    """The one mapping from a domain error to an HTTP answer."""
    status = _STATUS.get(exc.code, 500 if exc.code == "internal_error" else 400)
    if status >= 500:
        log.error("event=identity.api.error code=%s message=%s", exc.code, exc.message)
    return _error(status, exc.code, exc.message)


class JwtSvidRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    audience: list[str] = Field(min_length=1, description="aud claim values")
    spiffe_id: str | None = Field(None, description="default: the caller's own SPIFFE ID")
    ttl: int | None = Field(None, ge=1, le=86400, description="seconds")


def router(service: IdentityService, caller: CallerDependency) -> APIRouter:
    """The identity routes; ``caller`` is a FastAPI dependency giving the peer's SPIFFE ID."""
    api = APIRouter()
    caller_dep = Depends(caller)

    def require_admin(who: SpiffeId | None) -> JSONResponse | None:
        refusal = service.admin_refusal(who)
        return None if refusal is None else _error(*refusal)

    async def admin_check(who: SpiffeId | None) -> JSONResponse | None:
        return await asyncio.to_thread(require_admin, who)

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    @api.get("/v1/bundle")
    async def get_bundle() -> Response:
        """Our trust domain's SPIFFE bundle (public, like SPIRE's bundle endpoint)."""
        bundle = service.ca.bundle()
        return Response(bundle.to_json(), media_type="application/json")

    @api.get("/v1/entries")
    async def list_entries(
        spiffe_id: Annotated[str | None, Query()] = None,
        selector: Annotated[str | None, Query()] = None,
        who: SpiffeId | None = caller_dep,
    ) -> Response:
        if (denied := await admin_check(who)) is not None:
            return denied
        try:
            entries = await call(service.entries.list, spiffe_id=spiffe_id, selector=selector)
        except ZerogateError as exc:
            return error_response(exc)
        return JSONResponse({"entries": [e.to_dict() for e in entries]})

    @api.post("/v1/entries", status_code=201)
    async def create_entry(
        body: Annotated[Any, Body()], who: SpiffeId | None = caller_dep
    ) -> Response:
        if (denied := await admin_check(who)) is not None:
            return denied
        if not isinstance(body, dict):
            return _error(400, "invalid_entry", "body must be a JSON object (an entry)")
        try:
            entry = await call(service.entries.create, body, actor=str(who))
        except ZerogateError as exc:
            return error_response(exc)
        return JSONResponse(entry.to_dict(), status_code=201)

    @api.get("/v1/entries/{entry_id}")
    async def get_entry(entry_id: str, who: SpiffeId | None = caller_dep) -> Response:
        if (denied := await admin_check(who)) is not None:
            return denied
        try:
            entry = await call(service.entries.get, entry_id)
        except ZerogateError as exc:
            return error_response(exc)
        return JSONResponse(entry.to_dict())

    @api.patch("/v1/entries/{entry_id}")
    async def update_entry(
        entry_id: str,
        body: Annotated[Any, Body()],
        revision: Annotated[int | None, Query(description="expected current revision")] = None,
        who: SpiffeId | None = caller_dep,
    ) -> Response:
        if (denied := await admin_check(who)) is not None:
            return denied
        if not isinstance(body, dict) or not body:
            return _error(400, "invalid_entry", "body must be a non-empty JSON object of changes")
        try:
            entry = await call(
                service.entries.update, entry_id, body, expected_revision=revision, actor=str(who)
            )
        except ZerogateError as exc:
            return error_response(exc)
        return JSONResponse(entry.to_dict())

    @api.delete("/v1/entries/{entry_id}")
    async def delete_entry(entry_id: str, who: SpiffeId | None = caller_dep) -> Response:
        if (denied := await admin_check(who)) is not None:
            return denied
        try:
            entry = await call(service.entries.delete, entry_id, actor=str(who))
        except ZerogateError as exc:
            return error_response(exc)
        return JSONResponse(entry.to_dict())

    @api.post("/v1/svid/jwt")
    async def mint_jwt(body: JwtSvidRequest, who: SpiffeId | None = caller_dep) -> Response:
        """A JWT-SVID for the caller's own SPIFFE ID (admins may name another)."""
        if who is None:
            return _error(401, "unauthenticated", "an X.509-SVID client certificate is required")
        try:
            subject = SpiffeId.parse(body.spiffe_id) if body.spiffe_id else who
        except ZerogateError as exc:
            return error_response(exc)
        if subject != who and (denied := await admin_check(who)) is not None:
            return denied
        entries = [e for e in await call(service.entries.list, spiffe_id=subject) if not e.disabled]
        if not entries:
            return _error(403, "forbidden", f"no enabled registration entry for {subject}")
        ttl = body.ttl
        caps = [e.jwt_svid_ttl for e in entries if e.jwt_svid_ttl]
        if caps:
            ttl = min(ttl or max(caps), max(caps))
        try:
            svid = await call(
                service.ca.issue_jwt_svid,
                JwtSvidParams(
                    spiffe_id=subject,
                    audience=tuple(body.audience),
                    ttl=timedelta(seconds=ttl) if ttl else None,
                    entry_id=entries[0].id,
                    selectors=tuple(str(s) for s in entries[0].selectors),
                ),
            )
        except ZerogateError as exc:
            return error_response(exc)
        return JSONResponse(
            {
                "token": svid.token,
                "spiffe_id": str(svid.spiffe_id),
                "expires_at": int(svid.expires_at.timestamp()),
                "hint": entries[0].hint,
            }
        )

    return api
