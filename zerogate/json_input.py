"""Decoding JSON that a client sent: every way it can fail is one ``JsonInputError``.

Strict where ``json.loads`` is lenient, and never raising what a handler does not expect:

- ``json.loads`` raises ``RecursionError`` for input nested deeper than the interpreter's
  recursion limit (``[`` * 5000). That is not a ``ValueError``, so handlers that caught only
  ``JSONDecodeError`` answered such a body with a 500 or a dropped connection.
- Bytes must be UTF-8 (RFC 8259 section 8.1); ``json.loads`` would guess UTF-16 or UTF-32
  from the first bytes.
- ``NaN`` and ``Infinity`` are not JSON (RFC 8259 section 6), and a number too large for a
  double (``1e400``) decoded to infinity, which OPA then refused as an evaluation error (a 500).
  Section 9 lets a parser limit the range of numbers: these are refused, unless the caller
  refuses them per item itself (``finite_numbers=False``: Falco batches, where one bad array
  item must not refuse the others; ``runtime.falco``).

Callers map ``JsonInputError`` to their 400.
"""

from __future__ import annotations

import json
import math
from typing import Any


class JsonInputError(ValueError):
    """The text is not JSON this service accepts; the message says why."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonInputError(f"number {text[:40]} is out of range (RFC 8259 section 9)")
    return value


def _constant(name: str) -> Any:
    raise JsonInputError(f"{name} is not JSON (RFC 8259 section 6)")


_FINITE = json.JSONDecoder(parse_float=_finite, parse_constant=_constant)
_ANY_NUMBER = json.JSONDecoder(parse_constant=_constant)


def loads(raw: str | bytes, *, finite_numbers: bool = True) -> Any:
    """The JSON value in ``raw``; JsonInputError (a ValueError) for anything else."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return (_FINITE if finite_numbers else _ANY_NUMBER).decode(text)
    except JsonInputError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise JsonInputError(f"not UTF-8 (RFC 8259 section 8.1): {exc.reason}") from None
    except RecursionError:
        raise JsonInputError("nested too deeply") from None
