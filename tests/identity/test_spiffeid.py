"""SPIFFE ID and trust domain parsing against vectors from go-spiffe and the SPIFFE-ID spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from identity.spiffeid import (
    MAX_ID_BYTES,
    MAX_TRUST_DOMAIN_BYTES,
    InvalidSpiffeIdError,
    SpiffeId,
    TrustDomain,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "spiffeid.json").read_text(encoding="utf-8")
)


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [f"{r['source']}:{r['input']!r}" for r in rows]


@pytest.mark.parametrize("row", VECTORS["valid"], ids=_ids(VECTORS["valid"]))
def test_valid_ids(row: dict[str, Any]) -> None:
    sid = SpiffeId.parse(row["input"])
    assert sid.trust_domain == TrustDomain(row["trust_domain"])
    assert sid.path == row["path"]
    assert str(sid) == row["input"]


@pytest.mark.parametrize("row", VECTORS["invalid"], ids=_ids(VECTORS["invalid"]))
def test_invalid_ids_name_the_rule(row: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpiffeIdError) as err:
        SpiffeId.parse(row["input"])
    assert row["error"] in str(err.value)
    assert repr(row["input"]) in str(err.value)
    assert isinstance(err.value, ValueError)


TD = VECTORS["trust_domains"]


@pytest.mark.parametrize("row", TD["valid"], ids=_ids(TD["valid"]))
def test_valid_trust_domains(row: dict[str, Any]) -> None:
    assert TrustDomain.parse(row["input"]).name == row["name"]


@pytest.mark.parametrize("row", TD["invalid"], ids=_ids(TD["invalid"]))
def test_invalid_trust_domains(row: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpiffeIdError, match=row["error"]):
        TrustDomain.parse(row["input"])


def test_length_limits_spec_2_1_and_2_3() -> None:
    td = "a" * MAX_TRUST_DOMAIN_BYTES
    assert TrustDomain.parse(td).name == td
    with pytest.raises(InvalidSpiffeIdError, match="longer than 255 bytes"):
        TrustDomain.parse(td + "a")
    base = "spiffe://example.org/"
    ok = base + "a" * (MAX_ID_BYTES - len(base))
    assert len(str(SpiffeId.parse(ok))) == MAX_ID_BYTES
    with pytest.raises(InvalidSpiffeIdError, match="longer than 2048 bytes"):
        SpiffeId.parse(ok + "a")


def test_value_semantics() -> None:
    a = SpiffeId.parse("spiffe://example.org/w")
    b = SpiffeId.parse("spiffe://example.org/w")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != "spiffe://example.org/w"  # type: ignore[comparison-overlap]  # unlike py-spiffe
    with pytest.raises(AttributeError):
        a.path = "/x"  # type: ignore[misc]
    td = TrustDomain.parse("example.org")
    assert td.id() == SpiffeId.parse("spiffe://example.org")
    assert a.member_of(td) and not a.member_of(TrustDomain("other.org"))
    assert SpiffeId.parse("spiffe://example.org/a/b").segments == ("a", "b")


def test_from_path_checks_the_path() -> None:
    td = TrustDomain("example.org")
    assert str(SpiffeId.from_path(td, "/x/y")) == "spiffe://example.org/x/y"
    with pytest.raises(InvalidSpiffeIdError, match="leading slash"):
        SpiffeId.from_path(td, "x")
    with pytest.raises(InvalidSpiffeIdError, match="dot segments"):
        SpiffeId.from_path(td, "/x/..")


def test_non_string_input_is_rejected() -> None:
    with pytest.raises(InvalidSpiffeIdError, match="must be a string"):
        SpiffeId.parse(b"spiffe://example.org/x")  # type: ignore[arg-type]


def test_fast_path_agrees_with_the_rule_by_rule_checks() -> None:
    """``parse`` takes a regex shortcut for well-formed IDs; anything it accepts must also
    pass the full constructor checks and print back unchanged (seeded fuzz)."""
    import random

    rng = random.Random(7)
    alphabet = "ab.Z-_9/:%?#@\n "
    accepted = 0
    for _ in range(5000):
        tail = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        text = "spiffe://" + tail
        try:
            sid = SpiffeId.parse(text)
        except InvalidSpiffeIdError:
            continue
        accepted += 1
        rebuilt = SpiffeId(TrustDomain(sid.trust_domain.name), sid.path)
        assert str(rebuilt) == text == str(sid)
        assert rebuilt == sid and hash(rebuilt) == hash(sid)
    assert accepted > 50
