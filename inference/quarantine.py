"""Whether the runtime subsystem has quarantined a caller, as the gate asks it on every call.

Inference must not import ``runtime`` (DESIGN.md 2), so the gate types against the small
``RuntimeStatus`` protocol below. Two implementations live here:

- ``InMemoryRuntimeStatus``: a dict-backed status (tests, embedding zerogate in a program that
  has its own quarantine source);
- ``QuarantineViewStatus``: adapts any object with ``is_quarantined(spiffe_id) -> record |
  None`` whose record has ``rule``/``reason`` (the runtime subsystem's ``QuarantineView``,
  an in-memory O(1) lookup kept current by pushes, never a poll) to ``RuntimeStatus``.

Both are consulted per call, so a quarantine set in the process is enforced on the very next
call (well within the 50 ms the issue asks).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Protocol


class RuntimeStatus(Protocol):
    def status(self, spiffe_id: str) -> tuple[bool, list[str]]:
        """(quarantined?, reasons) for ``spiffe_id``; cheap and non-blocking."""
        ...


class InMemoryRuntimeStatus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._quarantined: dict[str, list[str]] = {}

    def quarantine(self, spiffe_id: str, reasons: Iterable[str] = ()) -> None:
        with self._lock:
            self._quarantined[spiffe_id] = list(reasons)

    def release(self, spiffe_id: str) -> None:
        with self._lock:
            self._quarantined.pop(spiffe_id, None)

    def status(self, spiffe_id: str) -> tuple[bool, list[str]]:
        with self._lock:
            reasons = self._quarantined.get(spiffe_id)
        return (reasons is not None, list(reasons or ()))


class QuarantineLookup(Protocol):
    def is_quarantined(self, spiffe_id: str) -> Any: ...


class QuarantineViewStatus:
    """``RuntimeStatus`` over a quarantine view (``runtime.quarantine.QuarantineView``)."""

    def __init__(self, view: QuarantineLookup) -> None:
        self._view = view

    def status(self, spiffe_id: str) -> tuple[bool, list[str]]:
        record = self._view.is_quarantined(spiffe_id)
        if record is None:
            return False, []
        reason = getattr(record, "rule", None) or getattr(record, "reason", None) or ""
        return True, [str(reason)] if reason else []
