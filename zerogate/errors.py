"""Domain errors with stable machine codes.

Hierarchy (every class carries a stable ``code`` string and a human message)::

    ZerogateError
    +-- ConfigError        code=config_error      bad or unknown configuration key
    +-- StoreError         code=store_error       database unreachable or refused a write
    +-- AuditError         code=audit_error       a record could not be accepted or written
    |   +-- PayloadError   code=invalid_payload   not JSON-serialisable or too large

Transports map ``code`` to their own status once (HTTP 4xx/5xx, CLI exit code, gRPC status);
handlers never invent codes of their own.
"""

from __future__ import annotations


class ZerogateError(Exception):
    """Base of every error zerogate raises on purpose."""

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigError(ZerogateError):
    code = "config_error"


class StoreError(ZerogateError):
    code = "store_error"


class AuditError(ZerogateError):
    code = "audit_error"


class PayloadError(AuditError):
    code = "invalid_payload"
