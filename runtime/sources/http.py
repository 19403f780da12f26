"""Parsing HTTP bodies into alerts: one alert, a JSON array, or NDJSON lines.

What arrives (runtime.errors names the failure):

- Falco ``http_output``: ``Content-Type: application/json``, one alert per request (falco
  ``userspace/falco/outputs_http.cpp``). With ``json_output: false`` Falco posts
  ``text/plain`` lines instead: refused with 415 and a hint.
- Falcosidekick's webhook output: ``application/json``, one alert (with ``uuid``).
- Batches: ``application/json`` holding an array of alerts, or ``application/x-ndjson``
  (also ``application/jsonl``) with one alert per line; blank lines are skipped.

A batch yields one ``Item`` per alert or line: the alert, or the error naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from runtime.errors import InvalidAlertError, UnsupportedMediaError
from runtime.falco import (
    FalcoAlert,
    decode_json,
    parse_alert,
    parse_alert_json,
    stored_text_of,
    utf8_text,
)

JSON_TYPES = {"application/json", "text/json"}
NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonl",
                "application/x-jsonlines", "application/jsonlines"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Item:
    """One alert of a body: ``index`` is the array index (0-based) or NDJSON line (1-based)."""

    index: int
    alert: FalcoAlert | None
    error: InvalidAlertError | None


BodyKind = Literal["single", "array", "ndjson"]


@dataclass(frozen=True, slots=True)
class ParsedBody:
    kind: BodyKind
    items: list[Item]

    @property
    def alerts(self) -> list[FalcoAlert]:
        return [i.alert for i in self.items if i.alert is not None]


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_body(body: bytes, content_type: str | None) -> ParsedBody:
    """Split and validate a request body. A single alert that is bad raises
    InvalidAlertError; batches report bad items instead of raising."""
    kind = media_type(content_type)
    if kind in NDJSON_TYPES:
        return _parse_ndjson(body)
    if kind and kind not in JSON_TYPES:
        hint = ""
        if kind == "text/plain":
            hint = " (Falco posts text/plain when json_output is false: set json_output: true)"
        raise UnsupportedMediaError(
            f"Content-Type {kind!r} is not accepted; use application/json or "
            f"application/x-ndjson{hint}"
        )
    if not body.strip():
        raise InvalidAlertError("", "empty body: expected a Falco alert (JSON object)")
    text = utf8_text(body)
    data = decode_json(text)
    if isinstance(data, list):
        if not data:
            raise InvalidAlertError("", "empty batch: the JSON array holds no alerts")
        return ParsedBody("array", [_item(i, value) for i, value in enumerate(data)])
    alert = parse_alert(data)
    alert.received = text.strip()
    return ParsedBody("single", [Item(0, alert, None)])


def _item(index: int, value: object) -> Item:
    try:
        alert = parse_alert(value)
        # an array item has no text of its own: its stored form is computed now, so a value
        # without one fails this item rather than the transaction of every waiting request
        alert.received = stored_text_of(alert)
        return Item(index, alert, None)
    except InvalidAlertError as exc:
        return Item(index, None, exc)


def _parse_ndjson(body: bytes) -> ParsedBody:
    items = ndjson_items(body)
    if not items:
        raise InvalidAlertError("", EMPTY_NDJSON)
    return ParsedBody("ndjson", items)


EMPTY_NDJSON = "empty batch: no NDJSON lines"


def ndjson_items(body: bytes, first_line: int = 1) -> list[Item]:
    """One item per non-blank line of ``body``, numbered from ``first_line``."""
    items: list[Item] = []
    for number, line in enumerate(body.split(b"\n"), start=first_line):
        if not line.strip():
            continue
        try:
            items.append(Item(number, parse_alert_json(line), None))
        except InvalidAlertError as exc:
            items.append(Item(number, None, exc))
    return items
