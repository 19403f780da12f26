"""RFC 8785 (JSON Canonicalization Scheme) serialisation, with a fast path.

The ``rfc8785`` package is exact but pure Python (about 100-300 us for a typical audit
payload). For the values that make up nearly every record (objects whose keys are ASCII,
strings, booleans, null, and integers within the IEEE 754 exact range) the standard library's
C encoder with sorted keys and no whitespace produces the same bytes:

- RFC 8785 section 3.2.3 sorts keys by UTF-16 code units; for ASCII keys that is the
  code-point order ``sort_keys`` uses (non-ASCII keys take the exact path);
- section 3.2.2.2: strings are escaped minimally, with the two-character escapes for
  ``\\b \\f \\n \\r \\t``, ``\\u00xx`` (lower-case hex) for other controls, and every other
  character as is: exactly ``json.dumps(..., ensure_ascii=False)``;
- section 3.2.2.3: numbers follow ECMAScript's Number-to-String. For integers of magnitude
  below 2**53 that is their decimal form; floats differ (``1e-07`` vs ``1e-7``), so any
  float, and any integer outside that range, takes the exact path, which raises where the
  value has no canonical form (NaN, infinities, too-large integers).

``tests/kernel/test_jcs.py`` checks the two paths agree on generated documents.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

_MAX_EXACT = 2**53
_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)


class CanonicalizationError(ValueError):
    """The value has no RFC 8785 form (NaN, infinity, huge integer, non-JSON type)."""


def _fast_ok(value: Any, depth: int = 0) -> bool:
    if depth > 64:
        return False
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return True
    if kind is int:
        return bool(-_MAX_EXACT < value < _MAX_EXACT)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return False
            # scalars inline: most audit payloads are flat objects of strings
            ikind = type(item)
            if ikind is str or item is None or ikind is bool:
                continue
            if ikind is int:
                if not -_MAX_EXACT < item < _MAX_EXACT:
                    return False
            elif not _fast_ok(item, depth + 1):
                return False
        return True
    if isinstance(value, list | tuple):
        return all(_fast_ok(item, depth + 1) for item in value)
    if isinstance(value, str):  # a str subclass (a str enum) encodes as its string
        return True
    if isinstance(value, dict):
        return _fast_ok(dict(value), depth)
    return False


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value``."""
    if _fast_ok(value):
        return _encoder.encode(value).encode("utf-8")
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise CanonicalizationError(str(exc)) from exc
