"""The Falco alert model: the real corpus parses; each shape rule has a failing vector."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import InvalidAlertError
from runtime.falco import Priority, event_id_of, parse_alert, parse_alert_json, parse_time

CORPUS = Path(__file__).parent / "corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.json"))


def _docs_alert() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORPUS / "falco-docs-terminal-shell.json").read_text())
    return data


def test_corpus_has_at_least_20_real_alerts_each_listed_in_readme() -> None:
    readme = (CORPUS / "README.md").read_text()
    assert len(CORPUS_FILES) >= 20
    for path in CORPUS_FILES:
        assert f"`{path.name}`" in readme, f"{path.name} has no source row in README.md"


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
def test_corpus_alert_parses_and_keeps_everything(path: Path) -> None:
    raw = json.loads(path.read_text())
    alert = parse_alert_json(path.read_bytes())
    assert alert.rule == raw["rule"]
    assert alert.priority.label.lower() == raw["priority"].lower()
    assert alert.time == raw["time"]
    assert alert.raw == raw
    assert alert.output_fields == raw.get("output_fields", {})
    assert alert.timestamp.tzinfo is not None
    if "uuid" in raw:
        assert alert.event_id == raw["uuid"]
    else:
        assert alert.event_id.startswith("sha256:") and len(alert.event_id) == 71


def test_docs_alert_fields_and_workload_keys() -> None:
    alert = parse_alert(_docs_alert())
    assert alert.priority is Priority.CRITICAL
    assert alert.source == "syscall"
    assert alert.hostname == "falco-xczjd"
    assert alert.tags == ["container", "mitre_execution", "shell"]
    assert (alert.k8s_ns, alert.k8s_pod, alert.container_id) == (
        "default",
        "kubecon",
        "ee97d9c4186f",
    )
    assert alert.k8s_pod_uid is None
    assert alert.time_ns == 1685022245478445995  # equals the event's evt.time
    assert alert.output_fields["evt.time"] == alert.time_ns
    assert alert.timestamp == datetime(2023, 5, 25, 13, 44, 5, 478445, tzinfo=UTC)


def test_unknown_fields_are_kept() -> None:
    data = _docs_alert() | {"message": "A shell was spawned", "x_custom": {"a": 1}}
    alert = parse_alert(data)
    assert alert.extra == {"message": "A shell was spawned", "x_custom": {"a": 1}}
    assert alert.raw["x_custom"] == {"a": 1}


def test_null_output_fields_mean_na() -> None:
    data = _docs_alert()
    data["output_fields"] |= {"k8s.ns.name": None, "k8s.pod.name": "<NA>", "proc.aname[2]": None}
    alert = parse_alert(data)
    assert alert.k8s_ns is None and alert.k8s_pod is None
    assert alert.output_fields["proc.aname[2]"] is None


def test_priority_order_and_names() -> None:
    order = ["Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational"]
    parsed = [Priority.parse(n) for n in [*order, "Debug"]]
    assert parsed == sorted(parsed, reverse=True)
    assert Priority.EMERGENCY > Priority.CRITICAL > Priority.DEBUG
    assert [p.label for p in parsed[:-1]] == order


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Informational", Priority.INFORMATIONAL),  # what current Falco prints
        ("Info", Priority.INFORMATIONAL),  # legacy name (falco_common.cpp edge case)
        ("info", Priority.INFORMATIONAL),
        ("WARNING", Priority.WARNING),  # Falco's parse is strcasecmp
        ("critical", Priority.CRITICAL),  # Falcosidekick lower-cases in NATS subjects
    ],
)
def test_priority_case_variants(text: str, expected: Priority) -> None:
    assert Priority.parse(text) is expected


@pytest.mark.parametrize(
    ("value", "nanos"),
    [
        ("2023-05-25T13:44:05.478445995Z", 1685022245478445995),
        ("2001-01-01T01:10:00Z", 978311400 * 10**9),
        ("2024-08-28T21:35:04.5188Z", 1724880904518800000),  # Go RFC3339Nano trims zeros
        ("2024-08-28T23:35:04.5188+02:00", 1724880904518800000),
    ],
)
def test_parse_time(value: str, nanos: int) -> None:
    stamp, got = parse_time(value)
    assert got == nanos
    assert stamp.tzinfo == UTC


BAD_VECTORS: list[tuple[str, Any, str, str]] = [
    ("missing rule", {"rule": None}, "rule", "required field is missing"),
    ("missing priority", {"priority": None}, "priority", "required field is missing"),
    ("missing time", {"time": None}, "time", "required field is missing"),
    ("unknown priority", {"priority": "Severe"}, "priority", "unknown priority 'Severe'"),
    ("numeric priority", {"priority": 2}, "priority", "got number"),
    ("time not RFC 3339", {"time": "13:44:05.478445995"}, "time", "is not RFC 3339"),
    ("time as epoch", {"time": 1685022245}, "time", "must be an RFC 3339 string"),
    ("impossible date", {"time": "2023-02-30T00:00:00Z"}, "time", "not a valid date-time"),
    ("ten fraction digits", {"time": "2023-05-25T13:44:05.4784459951Z"}, "time", "RFC 3339"),
    ("empty rule", {"rule": "  "}, "rule", "non-empty string"),
    ("tags not a list", {"tags": "shell"}, "tags", "must be a list of strings"),
    ("tag not a string", {"tags": ["a", 3]}, "tags", "item 1 must be a string"),
    ("output_fields a list", {"output_fields": []}, "output_fields", "must be an object"),
    ("hostname a number", {"hostname": 7}, "hostname", "must be a string"),
    ("uuid malformed", {"uuid": "not-a-uuid"}, "uuid", "is not a UUID"),
]


@pytest.mark.parametrize(("note", "patch", "field", "message"), BAD_VECTORS, ids=lambda v: v)
def test_bad_alerts_name_the_field(
    note: str, patch: dict[str, Any], field: str, message: str
) -> None:
    data = _docs_alert()
    for key, value in patch.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    with pytest.raises(InvalidAlertError) as info:
        parse_alert(data)
    assert info.value.field == field, note
    assert message in info.value.reason, info.value.reason


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON: Expecting value at line 1 column 1"),
        (b'{"rule": NaN}', "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "an alert must be a JSON object, got array"),
    ],
)
def test_bad_json(body: bytes, message: str) -> None:
    with pytest.raises(InvalidAlertError) as info:
        parse_alert_json(body)
    assert message in str(info.value)


def _docs_with_raw(extra: str) -> bytes:
    """The docs alert with one more top-level member given as raw JSON text."""
    return json.dumps(_docs_alert()).encode()[:-1] + b', "x": ' + extra.encode() + b"}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("1e400", "no canonical JSON form"),  # decodes to infinity
        ('["a", -1e999]', "no canonical JSON form"),
        ('"\\ud800"', "unpaired UTF-16 surrogate"),
        ("[" * 900 + "]" * 900, "nested too deeply"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ],
    ids=["infinity", "negative-infinity-in-list", "lone-surrogate", "deep-900", "deep-5000"],
)
def test_values_without_a_canonical_form_are_the_clients_error(extra: str, message: str) -> None:
    """Each of these used to escape as a server error (CanonicalizationError,
    UnicodeEncodeError, RecursionError): a 500, or a failed transaction for every request
    in the same group commit."""
    with pytest.raises(InvalidAlertError) as info:
        parse_alert_json(_docs_with_raw(extra))
    assert message in str(info.value)


@pytest.mark.parametrize("field", ["rule", "hostname", "source"])
def test_an_alert_with_a_uuid_is_checked_for_strings_that_cannot_be_stored(field: str) -> None:
    """Falcosidekick's uuid is the id, so the alert is not hashed: its column strings are
    checked on their own (a lone surrogate would fail the writer's whole group commit)."""
    data = _docs_alert() | {"uuid": "7466e462-ddde-434d-8dee-390ca5656f83", field: "x\ud800"}
    with pytest.raises(InvalidAlertError, match="surrogate"):
        parse_alert(data)


def test_event_id_is_stable_and_content_sensitive() -> None:
    data = _docs_alert()
    reordered = dict(reversed(list(data.items())))
    assert parse_alert(data).event_id == parse_alert(reordered).event_id
    changed = _docs_alert()
    changed["output_fields"]["evt.time"] += 1  # differs only beyond double precision
    assert parse_alert(changed).event_id != parse_alert(data).event_id
    assert event_id_of(data, "7466e462-ddde-434d-8dee-390ca5656f83") == (
        "7466e462-ddde-434d-8dee-390ca5656f83"
    )


def test_uuid_is_normalised() -> None:
    data = _docs_alert() | {"uuid": "7466E462-DDDE-434D-8DEE-390CA5656F83"}
    assert parse_alert(data).event_id == "7466e462-ddde-434d-8dee-390ca5656f83"


@pytest.mark.parametrize(
    "extra",
    [
        {"x_float": 1.5e-7},  # ECMAScript number form differs from Python's repr
        {"x_unicode_key_\u00e9": "v"},  # keys sorted by UTF-16 code units
        {"x_nested": {"deep": [1, 2**60, {"f": 0.1}]}},
        {"x_big": -(2**63)},
    ],
)
def test_event_id_is_the_rfc8785_hash_of_the_jcs_safe_alert(extra: dict[str, Any]) -> None:
    """The fast one-walk hash equals the exact RFC 8785 path on every kind of value."""
    import hashlib

    import rfc8785

    from runtime.falco import jcs_safe

    data = _docs_alert() | extra
    expected = "sha256:" + hashlib.sha256(rfc8785.dumps(jcs_safe(data))).hexdigest()
    assert parse_alert(data).event_id == expected
