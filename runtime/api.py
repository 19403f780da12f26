"""HTTP routes of the runtime subsystem (thin: parse, authorize, hand to the core, reply).

- ``POST /v1/runtime/falco``: Falco ``http_output`` / Falcosidekick webhook alerts (one JSON
  object), JSON-array or NDJSON batches. The caller must present an X.509-SVID (mTLS, resolved
  by the ``caller`` dependency the server passes in) that the submit authorizer allows
  (default policy: ``spiffe://<trust domain>/falco``). Replies only after the events are
  durable (stored + audited). Falco's http_output ignores the status and shares one thread
  with every other output, so the handler does no work beyond parse + one group commit.
- ``GET /v1/runtime/events``: recent stored events (summaries).
- ``GET /v1/runtime/quarantine``: active quarantines (``?all=true`` for history).
- ``GET /v1/runtime/quarantine/watch``: server-sent events: ``snapshot`` (every active
  record), then one ``change`` per add/release, ``: keepalive`` comments meanwhile.

Status codes: 200 all stored/duplicates; 207 a batch with some bad items (bad ones listed, good
ones kept); 400 not JSON / empty; 401 no client SVID; 403 SVID not allowed; 413 body over
``runtime.max_body_bytes``; 415 media type; 422 a single alert or every batch item invalid;
503 the store or the audit log failed (fail closed; nothing acknowledged).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from runtime.errors import BodyTooLargeError, InvalidAlertError, UnsupportedMediaError
from runtime.ingest import EventIngestor
from runtime.quarantine import QuarantineChange, QuarantineService
from runtime.sources.parse_pool import ParsePool
from zerogate.errors import ZerogateError

log = logging.getLogger(__name__)

Caller = Callable[[Request], Any]
"""Called with the request (sync or async; used as a FastAPI dependency by the GET routes and
called directly by the submit route), returning the caller's SPIFFE ID from its client
X.509-SVID (a ``str`` or an ``identity.spiffeid.SpiffeId``, e.g. zerogate.wiring.mtls_caller)
or None; may raise HTTPException (e.g. 401 for a certificate that is not an SVID)."""


def _who(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


SubmitAuthorizer = Callable[[str], Awaitable[bool]]
"""Decides whether a SPIFFE ID may submit runtime events."""


def allow_list(*spiffe_ids: str) -> SubmitAuthorizer:
    """A submit authorizer allowing exactly ``spiffe_ids`` (used when no policy is wired)."""
    allowed = frozenset(spiffe_ids)

    async def authorize(spiffe_id: str) -> bool:
        return spiffe_id in allowed

    return authorize


SUBMIT_POLICY_PATH = "zerogate/runtime/submit"


def policy_authorizer(
    policy: Any, trust_domain: str, path: str = SUBMIT_POLICY_PATH
) -> SubmitAuthorizer:
    """Ask ``data.zerogate.runtime.submit`` (rego/runtime/policy.rego) whether a SPIFFE ID may
    submit events. ``policy`` is a policy.service.PolicyService; errors propagate (the route
    answers 503: fail closed).

    A refusal is written to the decision log. An allow is not: Falco's http_output sends one
    request per alert, and a decision record for each would double the audit writes of every
    single-alert POST. Instead each stored event's ``runtime.event`` record names its
    ``submitter``, as the inference gate's ``inference.call`` record carries its decision."""

    async def authorize(spiffe_id: str) -> bool:
        input_ = {"subject": {"spiffe_id": spiffe_id, "trust_domain": trust_domain}}
        decision = await policy.adecide(
            path, input_, cache_key=("runtime.submit", spiffe_id), log=False
        )
        if not decision.allowed:
            policy.log_decision(decision, input_)
        return bool(decision.allowed)

    return authorize


def error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status)


def _trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


SUBMIT_PATH = "/v1/runtime/falco"
_JSON_HEADERS = [(b"content-type", b"application/json")]
_compact = json.JSONEncoder(separators=(",", ":")).encode  # ASCII-only output


class SubmitHandler:
    """The ``POST /v1/runtime/falco`` handler, a plain ASGI app: the route of that path and
    ``SubmitFastPath`` both run it.

    Falco's http_output posts one alert per request, so this is the one request of the
    control plane that arrives thousands of times a second. It reads the body from
    ``receive``, writes the reply with two ``send`` calls and waits for the group commit on
    an asyncio future that the writer resolves with one loop wake-up per commit
    (``EventIngestor.submit_async``). Starlette's Request body stream and JSONResponse, and
    ``asyncio.wrap_future``, cost about as much as parsing the alert (~80 us of ~170 us of
    the event loop's work per alert, measured on the handler alone). ``caller`` is called
    with a Request (sync or async), as FastAPI would call the dependency."""

    def __init__(
        self,
        *,
        ingestor: EventIngestor,
        caller: Caller,
        authorize: SubmitAuthorizer,
        max_body_bytes: int = 4 << 20,
        parser: ParsePool | None = None,
    ) -> None:
        self._ingestor = ingestor
        self._caller = caller
        self._authorize = authorize
        self._max_body = max_body_bytes
        self._parse = (parser or ParsePool(0)).parse  # big batches in worker processes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = await self._answer(scope, receive)
        if answer is None:  # the client went away before its body arrived
            return
        status, body, headers = answer
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Receive) -> Answer | None:
        try:
            who = self._caller(Request(scope, receive))
            if inspect.isawaitable(who):
                who = await who
        except HTTPException as exc:  # e.g. a client certificate that is not an SVID
            headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                       for k, v in (exc.headers or {}).items()]  # fmt: skip
            return (
                exc.status_code,
                _compact({"detail": exc.detail}).encode(),
                [*_JSON_HEADERS, *headers],
            )
        spiffe_id = _who(who)
        if spiffe_id is None:
            return _error(401, "unauthenticated", "a client X.509-SVID (mTLS) is required")
        try:
            allowed = await self._authorize(spiffe_id)
        except Exception as exc:  # fail closed on a policy error
            log.error("event=runtime.submit.authz_failed spiffe_id=%s error=%s", spiffe_id, exc)
            return _error(503, "policy_error", "runtime submit policy could not be evaluated")
        if not allowed:
            return _error(403, "forbidden", f"{spiffe_id} may not submit runtime events")
        content_type: str | None = None
        declared: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"content-length":
                declared = value
        try:
            body = await _read_body(receive, declared, self._max_body)
            if body is None:
                return None
            parsed = await self._parse(body, content_type)
        except BodyTooLargeError as exc:
            return _error(413, exc.code, exc.message)
        except UnsupportedMediaError as exc:
            return _error(415, exc.code, exc.message)
        except InvalidAlertError as exc:
            return _error(422 if exc.field else 400, exc.code, exc.message, exc.field)
        alerts = parsed.alerts
        if not alerts:
            results = [_bad(i.index, i.error) for i in parsed.items]
            return _json(422, {"accepted": 0, "rejected": len(parsed.items), "results": results})
        try:
            stored = await self._ingestor.submit_async(
                alerts, "http", trace_id=_trace_id(), submitter=spiffe_id
            )
        except ZerogateError as exc:
            return _error(503, exc.code, exc.message)
        if parsed.kind == "single":
            return _json(200, {"event_id": stored[0].event_id, "status": stored[0].status})
        out: list[dict[str, Any]] = []
        each = iter(stored)
        for item in parsed.items:
            if item.alert is None:
                out.append(_bad(item.index, item.error))
            else:
                r = next(each)
                out.append({"index": item.index, "status": r.status, "event_id": r.event_id})
        rejected = len(parsed.items) - len(alerts)
        return _json(
            207 if rejected else 200,
            {"accepted": len(alerts), "rejected": rejected, "results": out},
        )


Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
"""(status, JSON body, headers without content-length)"""


def _json(status: int, payload: Any) -> Answer:
    return status, _compact(payload).encode(), _JSON_HEADERS


def _error(status: int, code: str, message: str, field: str | None = None) -> Answer:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return _json(status, {"error": body})


async def _read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes | None:
    """The request body from ASGI ``http.request`` messages, refused (BodyTooLargeError) on
    a declared Content-Length over ``limit`` and as soon as the received bytes pass it; None
    when the client disconnected first."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(
            f"body of {declared.decode()} bytes exceeds the limit of {limit} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class SubmitFastPath:
    """ASGI middleware answering ``POST /v1/runtime/falco`` before FastAPI's exception
    middleware and router. Installed by ``RuntimeService.install`` with
    ``app.add_middleware``, so it sits inside Starlette's ServerErrorMiddleware (an
    unexpected error is still a 500, never a dropped connection). The same handler also
    stays registered as a route, for apps without the middleware."""

    def __init__(self, app: ASGIApp, handler: SubmitHandler) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == SUBMIT_PATH and scope["method"] == "POST":
            await self.handler(scope, receive, send)
            return
        await self.app(scope, receive, send)


def router(
    *,
    ingestor: EventIngestor,
    caller: Caller,
    authorize: SubmitAuthorizer,
    quarantine: QuarantineService | None = None,
    max_body_bytes: int = 4 << 20,
    keepalive_s: float = 15.0,
    parser: ParsePool | None = None,
) -> APIRouter:
    api = APIRouter(tags=["runtime"])
    submit_falco = SubmitHandler(
        ingestor=ingestor,
        caller=caller,
        authorize=authorize,
        max_body_bytes=max_body_bytes,
        parser=parser,
    )

    api.routes.append(Route(SUBMIT_PATH, submit_falco, methods=["POST"]))

    @api.get("/v1/runtime/events", response_model=None)
    async def list_events(limit: int = 50, who: Any = Depends(caller)) -> Response:
        if _who(who) is None:
            return error(401, "unauthenticated", "a client X.509-SVID (mTLS) is required")
        limit = max(1, min(limit, 1000))
        events = await asyncio.to_thread(ingestor.store.recent, limit=limit)
        return JSONResponse({"events": [e.summary() for e in events]})

    if quarantine is not None:
        _quarantine_routes(api, quarantine, caller, keepalive_s)
    return api


def _quarantine_routes(
    api: APIRouter, quarantine: QuarantineService, caller: Caller, keepalive_s: float
) -> None:
    @api.get("/v1/runtime/quarantine", response_model=None)
    async def list_quarantine(all: bool = False, who: Any = Depends(caller)) -> Response:
        if _who(who) is None:
            return error(401, "unauthenticated", "a client X.509-SVID (mTLS) is required")
        records = await asyncio.to_thread(quarantine.list, include_inactive=all)
        return JSONResponse(
            {"revision": quarantine.revision, "quarantines": [r.to_json() for r in records]}
        )

    @api.get("/v1/runtime/quarantine/watch", response_model=None)
    async def watch_quarantine(request: Request, who: Any = Depends(caller)) -> Response:
        if _who(who) is None:
            return error(401, "unauthenticated", "a client X.509-SVID (mTLS) is required")
        loop = asyncio.get_running_loop()
        changes: asyncio.Queue[QuarantineChange] = asyncio.Queue()

        def push(change: QuarantineChange) -> None:
            loop.call_soon_threadsafe(changes.put_nowait, change)

        unsubscribe = quarantine.subscribe(push)
        snapshot = {
            "revision": quarantine.revision,
            "quarantines": [r.to_json() for r in quarantine.active()],
        }

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield _sse("snapshot", snapshot, snapshot["revision"])
                while True:
                    try:
                        change = await asyncio.wait_for(changes.get(), timeout=keepalive_s)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": keepalive\n\n"
                        continue
                    yield _sse("change", change.to_json(), change.revision)
            finally:
                unsubscribe()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


def _sse(event: str, data: Any, event_id: Any) -> bytes:
    # WHATWG HTML "Server-sent events": event/id/data lines, blank line ends the event.
    payload = json.dumps(data, separators=(",", ":"))
    return f"event: {event}\nid: {event_id}\ndata: {payload}\n\n".encode()


def _bad(index: int, err: InvalidAlertError | None) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "status": "invalid"}
    if err is not None:
        out["error"] = {"code": err.code, "field": err.field, "message": err.message}
    return out
