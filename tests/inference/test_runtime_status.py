"""The two ``RuntimeStatus`` implementations the gate accepts: the dict-backed one and the
adapter over a quarantine view (the runtime subsystem's ``QuarantineView`` shape)."""

from __future__ import annotations

from dataclasses import dataclass

from inference.quarantine import InMemoryRuntimeStatus, QuarantineViewStatus

ID = "spiffe://example.org/ns/default/sa/app"


def test_in_memory_status() -> None:
    status = InMemoryRuntimeStatus()
    assert status.status(ID) == (False, [])
    status.quarantine(ID, ["Terminal shell in container"])
    assert status.status(ID) == (True, ["Terminal shell in container"])
    status.release(ID)
    assert status.status(ID) == (False, [])


@dataclass(frozen=True)
class Record:
    spiffe_id: str
    reason: str
    rule: str | None


class View:
    """A quarantine view holding active records by SPIFFE ID."""

    def __init__(self, *records: Record) -> None:
        self.records = {r.spiffe_id: r for r in records}

    def is_quarantined(self, spiffe_id: str) -> Record | None:
        return self.records.get(spiffe_id)


def test_view_status_reports_the_rule_else_the_reason() -> None:
    by_rule = QuarantineViewStatus(View(Record(ID, "manual", "Read sensitive file")))
    assert by_rule.status(ID) == (True, ["Read sensitive file"])
    by_reason = QuarantineViewStatus(View(Record(ID, "operator said so", None)))
    assert by_reason.status(ID) == (True, ["operator said so"])
    assert by_reason.status("spiffe://example.org/other") == (False, [])
