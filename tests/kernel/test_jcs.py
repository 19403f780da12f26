"""The fast canonical JSON path produces exactly what RFC 8785 (the rfc8785 package) does."""

from __future__ import annotations

import random
import string
from typing import Any

import pytest
import rfc8785

from zerogate.jcs import CanonicalizationError, canonical_json

ALPHABET = string.printable + '\u00e9\u00df\u2028\u2029\u20ac\U0001f600\x00\x1f\x7f"\\/'


def _string(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))


def _value(rng: random.Random, depth: int) -> Any:
    kind = rng.randint(0, 8 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randint(-(2**53) + 1, 2**53 - 1)
    if kind == 3:
        return rng.choice([0.5, -1.25, 1e-7, 1e21, 123456789.0, 0.1, 2.0**60, -0.0])
    if kind in (4, 5):
        return _string(rng)
    if kind in (6, 7):
        keys = [_string(rng) for _ in range(rng.randint(0, 5))]
        return {k: _value(rng, depth + 1) for k in keys}
    return [_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]


@pytest.mark.parametrize("seed", range(20))
def test_agrees_with_rfc8785(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        doc = {_string(rng): _value(rng, 0) for _ in range(rng.randint(0, 6))}
        assert canonical_json(doc) == rfc8785.dumps(doc), doc


def test_rfc8785_appendix_example() -> None:
    # RFC 8785 section 3.2.2 example (numbers, literals, string escapes).
    doc = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(doc) == expected.encode()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2**60, object()])
def test_values_without_a_canonical_form_raise(bad: object) -> None:
    with pytest.raises(CanonicalizationError):
        canonical_json({"v": bad})
