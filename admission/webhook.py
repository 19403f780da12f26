"""HTTP routes of the admission webhook: ``POST /admission/validate`` and ``/admission/mutate``.

Thin over ``admission.admit.Admitter``: read the body, answer its AdmissionReview; a
malformed review is HTTP 400 with the reason (kube-apiserver then applies the webhook's
``failurePolicy``), never a 500; a body over 3 MiB is 413.

The two routes are plain ASGI endpoints (Starlette ``Route``s on the ``APIRouter``): no
request object, dependency solving or response class per call. The webhook is on the
kube-apiserver's latency path and these layers were a quarter of the per-review Python
time of an otherwise empty webhook. The answers are byte-for-byte what ``JSONResponse``
sends (compact UTF-8 JSON, ``content-type: application/json``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import APIRouter
from starlette.routing import Route

from admission.admit import Admitter
from admission.review import ReviewError

MAX_BODY_BYTES = 3 << 20  # kube-apiserver caps request objects at 3 MiB

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

__all__ = ["MAX_BODY_BYTES", "router"]


class _Endpoint:
    """One webhook route as an ASGI app (Starlette treats a non-function endpoint as one)."""

    def __init__(self, answer: Callable[[bytes], Awaitable[dict[str, Any]]]) -> None:
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _send(send, 413, _bad(f"body exceeds {MAX_BODY_BYTES} bytes"))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            review = await self.answer(body)
        except ReviewError as exc:
            await _send(send, 400, _bad(exc.message))
            return
        await _send(send, 200, review)


def router(admitter: Admitter) -> APIRouter:
    return APIRouter(
        tags=["admission"],
        routes=[
            Route("/admission/validate", _Endpoint(admitter.validate), methods=["POST"]),
            Route("/admission/mutate", _Endpoint(admitter.mutate), methods=["POST"]),
        ],
    )


def _bad(message: str) -> dict[str, Any]:
    return {"code": ReviewError.code, "message": message}


async def _send(send: Send, status: int, content: dict[str, Any]) -> None:
    # the encoding of starlette's JSONResponse.render
    body = json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-length", str(len(body)).encode("latin-1")),
                (b"content-type", b"application/json"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
