"""HTTP routes of the admission webhook: ``POST /admission/validate`` and ``/admission/mutate``.

Thin over ``admission.admit.Admitter``: read the body, answer its AdmissionReview; a
malformed review is HTTP 400 with the reason (kube-apiserver then applies the webhook's
``failurePolicy``), never a 500.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from admission.admit import Admitter
from admission.review import ReviewError

MAX_BODY_BYTES = 3 << 20  # kube-apiserver caps request objects at 3 MiB

__all__ = ["router"]


def router(admitter: Admitter) -> APIRouter:
    routes = APIRouter(tags=["admission"])

    async def answer(request: Request, mutate: bool) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _bad(f"body exceeds {MAX_BODY_BYTES} bytes", 413)
        try:
            review = await (admitter.mutate(body) if mutate else admitter.validate(body))
        except ReviewError as exc:
            return _bad(exc.message, 400)
        return JSONResponse(review)

    @routes.post("/admission/validate")
    async def validate(request: Request) -> JSONResponse:
        return await answer(request, mutate=False)

    @routes.post("/admission/mutate")
    async def mutate(request: Request) -> JSONResponse:
        return await answer(request, mutate=True)

    return routes


def _bad(message: str, status: int) -> JSONResponse:
    return JSONResponse({"code": ReviewError.code, "message": message}, status_code=status)
