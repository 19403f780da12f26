"""Errors of the runtime subsystem, each naming the field or rule it enforces.

Hierarchy (``code`` in brackets; transports map codes to status once)::

    ZerogateError
    +-- RuntimeSubsystemError        [runtime_error]
        +-- InvalidAlertError        [invalid_alert]      an alert breaks Falco's JSON output shape;
        |                                                 ``field`` names the offending key
        +-- BodyTooLargeError        [body_too_large]     request body over runtime.max_body_bytes
        +-- UnsupportedMediaError    [unsupported_media]  Content-Type not JSON / NDJSON
        +-- QuarantineError          [quarantine_error]   bad quarantine request (SPIFFE ID, TTL)
        |   +-- QuarantineNotFoundError [quarantine_not_found]
        +-- SourceError              [source_error]       a source (file, NATS) cannot run
        +-- ActionError              [action_error]       a response action failed
"""

from __future__ import annotations

from zerogate.errors import ZerogateError


class RuntimeSubsystemError(ZerogateError):
    code = "runtime_error"


class InvalidAlertError(RuntimeSubsystemError):
    """A Falco alert that does not match Falco's JSON output; ``field`` is the bad key."""

    code = "invalid_alert"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class BodyTooLargeError(RuntimeSubsystemError):
    code = "body_too_large"


class UnsupportedMediaError(RuntimeSubsystemError):
    code = "unsupported_media"


class QuarantineError(RuntimeSubsystemError):
    code = "quarantine_error"


class QuarantineNotFoundError(QuarantineError):
    code = "quarantine_not_found"


class SourceError(RuntimeSubsystemError):
    code = "source_error"


class ActionError(RuntimeSubsystemError):
    code = "action_error"
