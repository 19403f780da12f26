"""Errors of the inference subsystem, each carrying its HTTP status and OpenAI error type.

Hierarchy (``code`` in brackets; ``inference/app.py`` maps them to the OpenAI error shape
``{"error": {"message", "type", "code"}}`` in one place)::

    ZerogateError
    +-- InferenceError                 [inference_error]        500 server_error
        +-- InvalidRequestError        [invalid_request]        400 invalid_request_error
        |   +-- ContextLengthError     [context_length_exceeded] 400 prompt + max_tokens too long
        |   +-- WrongTaskError         [model_task_mismatch]     400 chat model asked for embeddings
        +-- ModelNotFoundError         [model_not_found]        404 invalid_request_error
        +-- BackendUnavailableError    [backend_unavailable]    503 model not loaded / stopped
        |   +-- CircuitOpenError       [circuit_open]           503 upstream breaker is open
        +-- UpstreamError              [upstream_error]         502 upstream answered badly
        +-- UpstreamTimeoutError       [upstream_timeout]       504 upstream too slow
        +-- Refusal (inference/refusals.py): the gate's 401/403/429/503 refusals
"""

from __future__ import annotations

from collections.abc import Mapping

from zerogate.errors import ZerogateError


class InferenceError(ZerogateError):
    code = "inference_error"
    http_status = 500
    error_type = "server_error"

    def __init__(
        self, message: str, *, code: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.headers: dict[str, str] = dict(headers or {})


class InvalidRequestError(InferenceError):
    code = "invalid_request"
    http_status = 400
    error_type = "invalid_request_error"


class ContextLengthError(InvalidRequestError):
    code = "context_length_exceeded"


class WrongTaskError(InvalidRequestError):
    code = "model_task_mismatch"


class ModelNotFoundError(InferenceError):
    code = "model_not_found"
    http_status = 404
    error_type = "invalid_request_error"


class BackendUnavailableError(InferenceError):
    code = "backend_unavailable"
    http_status = 503
    error_type = "service_unavailable"


class CircuitOpenError(BackendUnavailableError):
    code = "circuit_open"


class UpstreamError(InferenceError):
    code = "upstream_error"
    http_status = 502
    error_type = "upstream_error"


class UpstreamTimeoutError(InferenceError):
    code = "upstream_timeout"
    http_status = 504
    error_type = "upstream_error"
