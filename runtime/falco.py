"""Falco's JSON alert: the validated model, priority ordering and the stable event id.

Shape (Falco ``json_output: true``; falco ``userspace/engine/formats.cpp``
``falco_formats::format_event``, and the "JSON Output" section of falco.org/docs/outputs/channels)::

    {"time": "2023-05-25T13:44:05.478445995Z",   # RFC 3339, nanoseconds, UTC "Z"
     "rule": "Terminal shell in container",
     "priority": "Critical",                     # falco_common.cpp priority_names
     "source": "syscall", "hostname": "falco-xczjd",
     "output": "13:44:05.478445995: Critical A shell was spawned ...",   # optional
     "message": "...",                           # optional (json_include_message_property)
     "tags": ["container", "shell"],            # optional (json_include_tags_property)
     "output_fields": {"k8s.ns.name": "default", "proc.aname[2]": null, ...}}

Falcosidekick's webhook and NATS outputs send the same object plus ``uuid``; its
``time`` is Go's RFC3339Nano (trailing zeros of the fraction dropped, offsets allowed).

Rules kept here:

- ``time``, ``rule`` and ``priority`` are required; everything else is optional (older Falco
  releases send no ``source``/``hostname``, and the ``json_include_*`` switches drop
  ``output``/``tags``/``output_fields``). Unknown top-level keys are kept, never dropped.
- ``priority`` is one of Falco's eight names, matched case-insensitively with ``Info`` as an
  alias of ``Informational`` (falco_common.cpp ``parse_priority``: ``strcasecmp`` plus the
  legacy ``info`` edge case; Falcosidekick's ``types/priority.go`` lower-cases too).
- ``output_fields`` is a flat map whose keys are Falco field names, possibly with a bracketed
  argument (``proc.aname[2]``, ``evt.arg[0]``); values are any JSON value, ``null`` where Falco
  printed ``<NA>``.
- The event id is ``uuid`` when present (Falcosidekick), else ``sha256:`` + SHA-256 of the
  RFC 8785 canonical alert. RFC 8785 numbers are IEEE 754 doubles, and Falco's ``evt.time`` is
  a nanosecond integer beyond 2**53, so integers outside the safe range are hashed as their
  decimal string (the stored raw JSON keeps the exact integer).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid as uuidlib
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

from runtime.errors import InvalidAlertError
from zerogate import json_input
from zerogate.jcs import canonical_json as jcs_bytes

__all__ = [
    "FalcoAlert",
    "Priority",
    "canonical_json",
    "event_id_of",
    "jcs_safe",
    "parse_alert",
    "parse_alert_json",
    "parse_time",
    "stored_text_of",
]

_SAFE_INT = 2**53 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = _EPOCH.toordinal()
_MAX_STRING = 64 * 1024  # a single rule name / hostname / source longer than this is refused

# RFC 3339 section 5.6 date-time; Falco prints 9 fraction digits and "Z", Go's RFC3339Nano
# prints 0-9 digits and may print an offset.
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)
# a Falco field name (``proc.aname[2]``, ``jevt.value[/user/username]``, or a custom name
# added with ``-p``/``append_output``): printable, no control characters.
_FIELD_KEY = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")


AlertParts = tuple[Any, ...]
"""``FalcoAlert.parts()``: what crosses a process boundary for one alert."""


class Priority(IntEnum):
    """Falco's priorities; a larger value is more severe (Emergency > ... > Debug)."""

    DEBUG = 0
    INFORMATIONAL = 1
    NOTICE = 2
    WARNING = 3
    ERROR = 4
    CRITICAL = 5
    ALERT = 6
    EMERGENCY = 7

    @property
    def label(self) -> str:
        """The name Falco prints (falco_common.cpp ``priority_names``)."""
        return _LABELS[self._value_]

    @classmethod
    def parse(cls, value: object) -> Priority:
        if isinstance(value, Priority):
            return value
        if not isinstance(value, str):
            raise ValueError(f"must be a string naming a Falco priority, got {_type(value)}")
        found = _PRIORITY_NAMES.get(value.strip().lower())
        if found is not None:
            return found
        names = ", ".join(m.label for m in sorted(cls, reverse=True))
        raise ValueError(f"unknown priority {value!r}; expected one of {names} (or Info)")


# falco_common.cpp: names match case-insensitively; "Info" and "Informational" are the same
_PRIORITY_NAMES: dict[str, Priority] = {p.name.lower(): p for p in Priority} | {
    "info": Priority.INFORMATIONAL
}


_BY_SEVERITY = tuple(sorted(Priority))  # Priority(n) without the enum call
_LABELS = tuple(p.name.capitalize() for p in _BY_SEVERITY)  # read for every stored event

_KNOWN = frozenset(
    {"time", "rule", "priority", "source", "hostname", "output", "tags", "output_fields", "uuid"}
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FalcoAlert:
    """One validated Falco alert (build it with ``parse_alert``). Unknown top-level fields are
    kept (``extra``; the whole object as received is ``raw``).

    A plain slotted class validated by hand rather than a pydantic model: ingestion parses
    every alert on the hot path, and this is ~8x cheaper per alert with the same rules and
    the same error messages (the field named, as ``InvalidAlertError.field``)."""

    __slots__ = (
        "_output_fields",
        "_raw",
        "_tags",
        "container_id",
        "event_id",
        "hostname",
        "k8s_ns",
        "k8s_pod",
        "k8s_pod_uid",
        "output",
        "priority",
        "received",
        "rule",
        "source",
        "time",
        "time_ns",
        "timestamp",
        "uuid",
    )

    time: str  # RFC 3339 time as Falco printed it
    rule: str
    priority: Priority
    source: str | None
    hostname: str | None
    output: str | None
    uuid: str | None
    timestamp: datetime  # ``time`` as an aware UTC datetime (microsecond precision)
    time_ns: int  # ``time`` as exact nanoseconds since the Unix epoch
    received: str | None  # its JSON text, when it arrived as text of its own
    # ``raw`` (the alert exactly as received, a parsed JSON object), ``tags`` and
    # ``output_fields``: None in an alert rebuilt by ``from_parts`` until first read
    _raw: dict[str, Any] | None
    _tags: list[str] | None
    _output_fields: dict[str, Any] | None
    event_id: str
    # the workload fields (output fields k8s.ns.name, k8s.pod.name, k8s.pod.uid, container.id
    # through field_str), read once at parse time: storage, correlation and audit all use them
    k8s_ns: str | None
    k8s_pod: str | None
    k8s_pod_uid: str | None
    container_id: str | None

    def __repr__(self) -> str:
        return f"FalcoAlert(rule={self.rule!r}, priority={self.priority.label}, id={self.event_id})"

    @property
    def raw(self) -> dict[str, Any]:
        """The alert exactly as received (a parsed JSON object)."""
        raw = self._raw
        if raw is None:  # rebuilt from parts: decode the stored text on first read
            raw = self._raw = decode_json(self.stored_text())
        return raw

    @property
    def tags(self) -> list[str]:
        tags = self._tags
        if tags is None:
            tags = self._tags = self.raw.get("tags") or []
        return tags

    @property
    def output_fields(self) -> dict[str, Any]:
        fields = self._output_fields
        if fields is None:
            fields = self._output_fields = self.raw.get("output_fields") or {}
        return fields

    def parts(self) -> AlertParts:
        """The validated alert as a flat tuple of scalars and its stored text: what a parse
        worker process sends back (runtime.sources.parse_pool). Pickling the parsed ``raw``
        object costs the receiving interpreter more than parsing it (~29 vs ~5 us for a
        typical alert); these parts cost ~3 us, and ``from_parts`` decodes ``raw`` only when
        it is read (the responder reads it; storage and audit do not)."""
        return (
            self.time,
            self.rule,
            int(self.priority),
            self.source,
            self.hostname,
            self.output,
            self.uuid,
            self.time_ns,
            self.event_id,
            self.k8s_ns,
            self.k8s_pod,
            self.k8s_pod_uid,
            self.container_id,
            self.stored_text(),
        )

    @classmethod
    def from_parts(cls, parts: AlertParts) -> FalcoAlert:
        """The alert ``parts`` describes (no validation again: a worker ran ``parse_alert``)."""
        alert = cls.__new__(cls)
        (
            alert.time,
            alert.rule,
            severity,
            alert.source,
            alert.hostname,
            alert.output,
            alert.uuid,
            alert.time_ns,
            alert.event_id,
            alert.k8s_ns,
            alert.k8s_pod,
            alert.k8s_pod_uid,
            alert.container_id,
            alert.received,
        ) = parts
        alert.priority = _BY_SEVERITY[severity]
        alert.timestamp = _utc_stamp(alert.time_ns)
        alert._raw = alert._tags = alert._output_fields = None
        return alert

    @property
    def extra(self) -> dict[str, Any]:
        """Top-level fields this model does not name (kept as received)."""
        return {k: v for k, v in self.raw.items() if k not in _KNOWN}

    def field_str(self, name: str) -> str | None:
        """A string output field, or None when absent, null, empty or Falco's ``<NA>``."""
        value = self.output_fields.get(name)
        if isinstance(value, str) and value and value != "<NA>":
            return value
        return None

    def canonical(self) -> bytes:
        """The raw alert as canonical JSON bytes (sorted keys, exact integers)."""
        return canonical_json(self.raw)

    def stored_text(self) -> str:
        """What ``runtime_event.raw`` holds: the JSON text as received when the alert came
        as a text of its own (an NDJSON line, a single-alert body, a file line, a NATS
        message), else the canonical form (an item of a JSON array)."""
        return self.received if self.received is not None else self.canonical().decode("utf-8")


def _check_time(value: object) -> tuple[datetime, int]:
    if not isinstance(value, str):
        raise ValueError(f"must be an RFC 3339 string, got {_type(value)}")
    return parse_time(value)


def _check_rule(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    if len(value) > _MAX_STRING:
        raise ValueError(f"longer than {_MAX_STRING} characters")
    return value


def _check_optional_str(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"must be a string, got {_type(value)}")


def _check_tags(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"must be a list of strings, got {_type(value)}")
    for i, tag in enumerate(value):
        if not isinstance(tag, str):
            raise ValueError(f"item {i} must be a string, got {_type(tag)}")
    return value


def _check_output_fields(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"must be an object (flat map of Falco fields), got {_type(value)}")
    if value:
        # one pass over all keys in C; the per-key scan below only runs to name a bad key
        keys = value.keys()
        if (
            min(map(len, keys)) < 1
            or max(map(len, keys)) > 256
            or _CONTROL.search("".join(keys)) is not None
        ):
            for key in keys:
                if not key or len(key) > 256 or _CONTROL.search(key):
                    raise ValueError(
                        f"key {key!r} is not a Falco field name (1-256 printable characters)"
                    )
        for key, item in value.items():
            if type(item) is float and not math.isfinite(item):
                raise ValueError(f"value of {key!r} is not a finite number")
    return value


def _check_uuid(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {_type(value)}")
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a UUID") from None


def parse_time(value: str) -> tuple[datetime, int]:
    """RFC 3339 -> (aware UTC datetime truncated to microseconds, exact epoch nanoseconds)."""
    match = _RFC3339.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not RFC 3339 (expected e.g. 2023-05-25T13:44:05.478445995Z)"
        )
    year, month, day, hour, minute, second, frac, zone = match.groups()
    offset = 0  # seconds east of UTC
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError(f"{value!r} has an invalid UTC offset")
        offset = sign * (hours * 3600 + minutes * 60)
    try:
        # validates the fields (month 13, February 30, hour 24, second 60 are refused)
        local = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid date-time: {exc}") from None
    nanos = int((frac or "0").ljust(9, "0"))
    days = local.toordinal() - _EPOCH_ORDINAL
    seconds = days * 86400 + local.hour * 3600 + local.minute * 60 + local.second - offset
    time_ns = seconds * 1_000_000_000 + nanos
    try:
        return _utc_stamp(time_ns), time_ns
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ValueError(f"{value!r} is outside the years 1-9999 in UTC") from None


def _utc_stamp(time_ns: int) -> datetime:
    """Epoch nanoseconds -> aware UTC datetime, truncated to microseconds."""
    return _EPOCH + timedelta(microseconds=time_ns // 1000)


def canonical_json(obj: Any) -> bytes:
    """Compact JSON with sorted keys and exact integers: the stored form of an alert."""
    return _CANONICAL.encode(obj).encode("utf-8")


# one encoder (json.dumps with options builds one per call)
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def jcs_safe(obj: Any) -> Any:
    """``obj`` with integers outside +-(2**53 - 1) turned into decimal strings, so RFC 8785
    (and the audit log, and the policy decision log) can hold it."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | float):
        return obj
    if isinstance(obj, int):
        return obj if -_SAFE_INT <= obj <= _SAFE_INT else str(obj)
    if isinstance(obj, dict):
        return {k: jcs_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [jcs_safe(v) for v in obj]
    return obj


def event_id_of(raw: dict[str, Any], uuid: str | None = None) -> str:
    """``uuid`` when present, else ``sha256:<hex>`` of the RFC 8785 form of ``raw``."""
    if uuid:
        return uuid
    try:
        # one walk: big integers to strings (jcs_safe) and a check that the standard
        # library's sorted compact encoder gives RFC 8785 bytes (zerogate.jcs fast path rules)
        text = canonical_json(_hash_form(raw, 0))
    except _ExactPath:
        text = jcs_bytes(jcs_safe(raw))
    return "sha256:" + hashlib.sha256(text).hexdigest()


class _ExactPath(Exception):
    """The value needs zerogate.jcs's exact RFC 8785 encoder (floats, non-ASCII keys)."""


def _hash_form(obj: Any, depth: int) -> Any:
    kind = type(obj)
    if kind is str or obj is None or kind is bool:
        return obj
    if kind is int:
        return obj if -_SAFE_INT <= obj <= _SAFE_INT else str(obj)
    if kind is dict and depth < 64:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if type(key) is not str or not key.isascii():
                raise _ExactPath
            vkind = type(value)
            if vkind is str or value is None or vkind is bool:
                out[key] = value
            elif vkind is int:
                out[key] = value if -_SAFE_INT <= value <= _SAFE_INT else str(value)
            else:
                out[key] = _hash_form(value, depth + 1)
        return out
    if kind is list and depth < 64:
        return [_hash_form(value, depth + 1) for value in obj]
    raise _ExactPath


def parse_alert(data: object) -> FalcoAlert:
    """Validate one decoded JSON value as a Falco alert; InvalidAlertError names the field."""
    if not isinstance(data, dict):
        raise InvalidAlertError("", f"an alert must be a JSON object, got {_type(data)}")
    alert = FalcoAlert.__new__(FalcoAlert)
    field = ""
    try:
        # required first, in the order Falco prints them
        for field in ("time", "rule", "priority"):
            if data.get(field) is None:
                raise InvalidAlertError(field, "required field is missing")
        field = "time"
        alert.timestamp, alert.time_ns = _check_time(data["time"])
        alert.time = data["time"]
        field = "rule"
        alert.rule = _check_rule(data["rule"])
        field = "priority"
        alert.priority = Priority.parse(data["priority"])
        for field in ("source", "hostname", "output"):
            setattr(alert, field, _check_optional_str(data.get(field)))
        field = "tags"
        alert._tags = _check_tags(data.get("tags"))
        field = "output_fields"
        alert._output_fields = _check_output_fields(data.get("output_fields"))
        field = "uuid"
        alert.uuid = _check_uuid(data.get("uuid"))
    except ValueError as exc:
        raise InvalidAlertError(field, str(exc)) from None
    alert._raw = data
    alert.received = None
    alert.event_id = _identify(data, alert.uuid)
    alert.k8s_ns = alert.field_str("k8s.ns.name")
    alert.k8s_pod = alert.field_str("k8s.pod.name")
    alert.k8s_pod_uid = alert.field_str("k8s.pod.uid")
    alert.container_id = alert.field_str("container.id")
    if alert.uuid:
        # not hashed (the id is Falcosidekick's uuid), so nothing has encoded the strings that
        # become columns and audit fields yet: one that cannot be UTF-8 (an unpaired
        # surrogate escape) would otherwise fail in the writer, for its whole group commit
        columns = (alert.rule, alert.source, alert.hostname, alert.k8s_ns, alert.k8s_pod,
                   alert.k8s_pod_uid, alert.container_id)  # fmt: skip
        try:
            "".join(c for c in columns if c).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _unrepresentable(exc) from None
    return alert


def _identify(data: dict[str, Any], uuid: str | None) -> str:
    """``event_id_of``, with a value that has no canonical form named as the client's error
    (a 4xx), never raised as a server error."""
    try:
        return event_id_of(data, uuid)
    except (RecursionError, ValueError) as exc:
        raise _unrepresentable(exc) from None


def stored_text_of(alert: FalcoAlert) -> str:
    """``alert.stored_text()``, with a value that has no JSON text named as the client's
    error. For alerts taken from a JSON array, whose stored form is computed rather than
    received, before they reach the database."""
    try:
        return alert.stored_text()
    except (RecursionError, ValueError) as exc:
        raise _unrepresentable(exc) from None


def _unrepresentable(exc: BaseException) -> InvalidAlertError:
    if isinstance(exc, RecursionError):
        return InvalidAlertError("", "nested too deeply to canonicalise")
    if isinstance(exc, UnicodeEncodeError):
        # RFC 8259 section 8.2: a lone \ud800-\udfff escape is not a Unicode character
        return InvalidAlertError(
            "", "a string holds an unpaired UTF-16 surrogate escape (RFC 8259 section 8.2)"
        )
    # RFC 8785 section 3.2.2.3 (and JSON itself): 1e400 decodes to infinity
    return InvalidAlertError("", f"has no canonical JSON form (RFC 8785): {exc}")


def parse_alert_json(text: str | bytes) -> FalcoAlert:
    """Decode and validate one alert from JSON text; the text is kept as ``received`` (what
    the events table stores, so the alert is not serialised again)."""
    text = utf8_text(text)
    alert = parse_alert(decode_json(text))
    alert.received = text.strip()
    return alert


def utf8_text(text: str | bytes) -> str:
    """``text`` as a str; bytes must be UTF-8 (RFC 8259 section 8.1: JSON exchanged between
    systems MUST be UTF-8; json.loads would otherwise guess UTF-16/32 from the first bytes)."""
    if isinstance(text, str):
        return text
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidAlertError("", f"body is not UTF-8: {exc.reason}") from None


def decode_json(text: str | bytes) -> Any:
    """Strict JSON decode (zerogate.json_input: no NaN/Infinity, UTF-8, bounded nesting);
    InvalidAlertError with the reason. A number beyond a double is left as infinity here and
    refused per alert, when its canonical form is taken (``_identify``, ``stored_text_of``):
    one bad item of a JSON array must not refuse the rest."""
    try:
        return json_input.loads(utf8_text(text), finite_numbers=False)
    except json_input.JsonInputError as exc:
        raise InvalidAlertError("", f"not JSON: {exc}") from None


def _type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
