"""Bundle server: ``GET /bundles/{name}.tar.gz`` for OPA sidecars that poll zerogate.

The bundle named ``zerogate`` holds what zerogate serves (the active revision's modules and
data). It is built once per revision and cached; ``ETag`` is the SHA-256 of the bytes and a
request with a matching ``If-None-Match`` gets ``304 Not Modified`` (OPA's bundle plugin
sends it on every poll, "Bundle Service API" in the OPA docs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from policy.api import CODE_RESOURCE_NOT_FOUND, error_response
from policy.bundle import Bundle, build_bundle
from policy.errors import PolicyError
from policy.service import PolicyService

BUNDLE_MEDIA_TYPE = "application/gzip"


class BundleCache:
    """The served bundle of the active revision, rebuilt when the revision changes."""

    def __init__(self, service: PolicyService, *, signing_key: Any | None = None) -> None:
        self._service = service
        self._key = signing_key
        self._lock = threading.Lock()
        self._bundle: Bundle | None = None

    def current(self) -> Bundle:
        snap = self._service.store.snapshot
        bundle = self._bundle
        if bundle is not None and bundle.revision == snap.revision:
            return bundle
        with self._lock:
            bundle = build_bundle(
                snap.modules, snap.data, name=self._service.bundle_name, signing_key=self._key
            )
            self._bundle = bundle
        return bundle


def bundles_router(
    service: PolicyService,
    *,
    signing_key: Any | None = None,
    reader: Callable[..., Any] | None = None,
) -> APIRouter:
    api = APIRouter(prefix="/bundles", dependencies=[Depends(reader)] if reader else [])
    cache = BundleCache(service, signing_key=signing_key)

    @api.get("/{name}.tar.gz")
    def get_bundle(name: str, request: Request) -> Response:
        if name != service.bundle_name:
            return JSONResponse(
                {"code": CODE_RESOURCE_NOT_FOUND, "message": f"bundle {name!r} not found"}, 404
            )
        try:
            bundle = cache.current()
        except PolicyError as exc:
            return error_response(exc)
        headers = {"ETag": bundle.etag, "Cache-Control": "no-cache"}
        sent = request.headers.get("if-none-match", "")
        if bundle.etag in [tag.strip() for tag in sent.split(",")]:
            return Response(status_code=304, headers=headers)
        return Response(bundle.content, media_type=BUNDLE_MEDIA_TYPE, headers=headers)

    return api
