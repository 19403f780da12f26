"""Why the gate refuses a model call: ``InferenceError`` subclasses with their HTTP status and
OpenAI error type, mapped to ``{"error": {...}}`` by ``inference/app.py`` like every other
inference error.

Hierarchy (``code`` in brackets)::

    InferenceError (inference/errors.py)
    +-- AuthenticationError        [unauthenticated]      401 authentication_error
    +-- PermissionDeniedError      [permission_denied]    403 permission_error (policy deny)
    |   +-- IdentityDeniedError    [identity_denied]      403 revoked (identity deny list)
    |   +-- QuarantinedError       [quarantined]          403 runtime quarantine
    +-- BudgetExceededError        [budget_exceeded]      429 budget_exceeded + Retry-After
    +-- GateUnavailableError       [gate_unavailable]     503 service_unavailable (fail closed)
        +-- PolicyUnavailable      [policy_unavailable]   engine error or undefined decision
        +-- AuditUnavailable       [audit_unavailable]    the audit log refused the record
        +-- BundleStaleError       [bundle_stale]         bundle older than hint x factor

Every refusal carries ``reasons`` (the list that goes into the audit record and the span).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from inference.errors import InferenceError


class Refusal(InferenceError):
    def __init__(
        self,
        message: str,
        *,
        reasons: Sequence[str] = (),
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code, headers=headers)
        self.reasons: list[str] = list(reasons) or [message]


class AuthenticationError(Refusal):
    code = "unauthenticated"
    http_status = 401
    error_type = "authentication_error"

    def __init__(self, message: str, *, reasons: Sequence[str] = ()) -> None:
        # RFC 6750 3: a 401 for a bearer-protected resource names the scheme
        super().__init__(message, reasons=reasons, headers={"www-authenticate": "Bearer"})


class PermissionDeniedError(Refusal):
    code = "permission_denied"
    http_status = 403
    error_type = "permission_error"


class IdentityDeniedError(PermissionDeniedError):
    code = "identity_denied"

    def __init__(self, message: str, *, spiffe_id: str | None = None) -> None:
        super().__init__(message)
        # the authenticated but revoked SPIFFE ID, so the audit record names who was refused
        self.spiffe_id = spiffe_id


class QuarantinedError(PermissionDeniedError):
    code = "quarantined"


class BudgetExceededError(Refusal):
    code = "budget_exceeded"
    http_status = 429
    error_type = "budget_exceeded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        self.retry_after_s = max(1, int(retry_after_s))
        super().__init__(message, headers={"retry-after": str(self.retry_after_s)})


class GateUnavailableError(Refusal):
    code = "gate_unavailable"
    http_status = 503
    error_type = "service_unavailable"


class PolicyUnavailable(GateUnavailableError):
    code = "policy_unavailable"


class AuditUnavailable(GateUnavailableError):
    code = "audit_unavailable"


class BundleStaleError(GateUnavailableError):
    code = "bundle_stale"
