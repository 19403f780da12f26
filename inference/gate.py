"""The seam where authentication, authorization and audit plug into the model API.

``inference/api.py`` asks the ``Gate`` to ``admit`` every model call before a backend sees it
and ``settle``s the returned ``Admission`` once with the outcome (real token usage, status,
latency) after the call, streamed or not, succeeded or failed. A refusal is an
``InferenceError`` subclass raised by ``admit`` (401/403/429/503 with its OpenAI error
type), so it reaches the client through the one error mapping in ``inference/app.py``.

``Ungated`` admits everything. It exists for the gate-overhead benchmark and for running a
zerogate instance as a plain upstream inside a trusted boundary; ``create_app`` only accepts
it when told ``ungated=True`` explicitly, so no deployment ends up unguarded by omission.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from starlette.requests import Request

from inference.backends.base import Usage

Operation = Literal["embeddings", "chat", "models"]


@dataclass(frozen=True, slots=True)
class ModelCall:
    """What is being asked, known before the call (the policy input's ``request``)."""

    operation: Operation
    model: str
    stream: bool = False
    max_tokens: int | None = None
    input_chars: int = 0

    @property
    def estimated_input_tokens(self) -> int:
        """A pre-call estimate (about 4 characters per token) for budget pre-checks; the
        real count comes back in ``CallOutcome.usage``."""
        return max(1, self.input_chars // 4) if self.input_chars else 0


@dataclass(frozen=True, slots=True)
class CallOutcome:
    status: int
    latency_s: float
    usage: Usage | None = None
    finish_reason: str | None = None
    error_code: str | None = None
    time_to_first_token_s: float | None = None


class Admission(Protocol):
    async def settle(self, outcome: CallOutcome) -> None:
        """Record the outcome (debit budgets, write the audit record, end the span)."""
        ...


class Gate(Protocol):
    async def admit(self, request: Request, call: ModelCall) -> Admission:
        """Authenticate and authorize ``call``; raise an ``InferenceError`` to refuse it."""
        ...

    async def visible_models(self, request: Request, names: list[str]) -> list[str]:
        """The subset of ``names`` the caller may use (``GET /v1/models``)."""
        ...


class _Settled:
    async def settle(self, outcome: CallOutcome) -> None:
        return None


class Ungated:
    """Admits every call. Only ``create_app(..., ungated=True)`` accepts it."""

    async def admit(self, request: Request, call: ModelCall) -> Admission:
        return _Settled()

    async def visible_models(self, request: Request, names: list[str]) -> list[str]:
        return names
