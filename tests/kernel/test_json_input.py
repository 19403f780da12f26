"""Client JSON decoding: each failure is a JsonInputError with a reason, never a
RecursionError or UnicodeDecodeError escaping to the handler."""

from __future__ import annotations

import pytest

from zerogate.json_input import JsonInputError, loads


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "Expecting property name"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        ('{"a": ' * 5000 + "1" + "}" * 5000, "nested too deeply"),
        (b'{"n": 1e400}', "out of range"),
        (b'{"n": -1e999}', "out of range"),
        (b'{"n": NaN}', "NaN is not JSON"),
        (b"[Infinity]", "Infinity is not JSON"),
    ],
    ids=["syntax", "not-utf8", "deep-array", "deep-object", "1e400", "-1e999", "nan", "inf"],
)
def test_every_failure_is_a_json_input_error(raw: str | bytes, reason: str) -> None:
    with pytest.raises(JsonInputError, match=reason):
        loads(raw)


def test_valid_json_decodes_as_json_loads_does() -> None:
    assert loads(b'{"a": [1, 2.5, null, "\\u00e9"]}') == {"a": [1, 2.5, None, "é"]}
    assert loads("[" * 100 + "]" * 100) is not None
