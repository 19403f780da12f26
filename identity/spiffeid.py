"""SPIFFE IDs and trust domains, parsed strictly per the SPIFFE-ID standard and go-spiffe.

Rules (SPIFFE-ID = spiffe/spiffe ``standards/SPIFFE-ID.md``):

- 2: the scheme is exactly ``spiffe://`` (lowercase, as go-spiffe); no query, fragment,
  port or user info.
- 2.1: the trust domain is non-empty, at most 255 bytes, of ``[a-z0-9._-]`` only.
- 2.2: the path is empty or ``/``-separated segments of ``[a-zA-Z0-9._-]``; no empty,
  ``.`` or ``..`` segment, no trailing ``/``; no percent-encoding.
- 2.3: the whole ID is at most 2048 bytes.

Every failure raises :class:`InvalidSpiffeIdError` (a ``ValueError``) whose message holds the
input and the rule that it breaks. Unlike py-spiffe's ``SpiffeId`` nothing is normalised: a
trailing newline or an uppercase trust domain is an error, not silently accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from identity.errors import IdentityError

SCHEME_PREFIX = "spiffe://"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255
_TD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_SEGMENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")

# Rule texts, worded as go-spiffe's (v2/spiffeid/errors.go) where it has one.
# Well-formed IDs (ASCII only; the trust domain length is checked by the caller's limit).
_FAST_ID = re.compile(r"spiffe://([a-z0-9._-]{1,255})((?:/[a-zA-Z0-9._-]+)*)", re.ASCII)
RULE_EMPTY = "cannot be empty"
RULE_SCHEME = "scheme is missing or invalid (SPIFFE-ID 2: must start with 'spiffe://')"
RULE_TD_MISSING = "trust domain is missing (SPIFFE-ID 2.1)"
RULE_TD_CHARS = (
    "trust domain characters are limited to lowercase letters, numbers, dots, dashes, "
    "and underscores (SPIFFE-ID 2.1)"
)
RULE_TD_LENGTH = f"trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes (SPIFFE-ID 2.1)"
RULE_PORT = "port is not allowed (SPIFFE-ID 2.1)"
RULE_USERINFO = "user info is not allowed (SPIFFE-ID 2.1)"
RULE_QUERY = "query is not allowed (SPIFFE-ID 2)"
RULE_FRAGMENT = "fragment is not allowed (SPIFFE-ID 2)"
RULE_SEGMENT_CHARS = (
    "path segment characters are limited to letters, numbers, dots, dashes, and "
    "underscores (SPIFFE-ID 2.2)"
)
RULE_DOT_SEGMENT = "path cannot contain dot segments (SPIFFE-ID 2.2)"
RULE_EMPTY_SEGMENT = "path cannot contain empty segments (SPIFFE-ID 2.2)"
RULE_TRAILING_SLASH = "path cannot have a trailing slash (SPIFFE-ID 2.2)"
RULE_LEADING_SLASH = "path must have a leading slash (SPIFFE-ID 2.2)"
RULE_ID_LENGTH = f"SPIFFE ID is longer than {MAX_ID_BYTES} bytes (SPIFFE-ID 2.3)"


class InvalidSpiffeIdError(IdentityError, ValueError):
    """A SPIFFE ID, trust domain or path that breaks the SPIFFE-ID standard."""

    code = "invalid_spiffe_id"

    def __init__(self, kind: str, value: object, rule: str) -> None:
        super().__init__(f"invalid {kind} {value!r}: {rule}")
        self.value = value
        self.rule = rule


def _check_trust_domain_name(name: str, original: object, kind: str) -> None:
    if not name:
        raise InvalidSpiffeIdError(kind, original, RULE_TD_MISSING)
    if "@" in name:
        raise InvalidSpiffeIdError(kind, original, RULE_USERINFO)
    if ":" in name:
        raise InvalidSpiffeIdError(kind, original, RULE_PORT)
    if any(c not in _TD_CHARS for c in name):
        raise InvalidSpiffeIdError(kind, original, RULE_TD_CHARS)
    if len(name.encode()) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidSpiffeIdError(kind, original, RULE_TD_LENGTH)


def _check_path(path: str, original: object, kind: str) -> None:
    if not path:
        return
    if path[0] != "/":
        raise InvalidSpiffeIdError(kind, original, RULE_LEADING_SLASH)
    if "?" in path:
        raise InvalidSpiffeIdError(kind, original, RULE_QUERY)
    if "#" in path:
        raise InvalidSpiffeIdError(kind, original, RULE_FRAGMENT)
    segments = path[1:].split("/")
    for i, segment in enumerate(segments):
        if segment == "":
            last = i == len(segments) - 1
            raise InvalidSpiffeIdError(
                kind, original, RULE_TRAILING_SLASH if last else RULE_EMPTY_SEGMENT
            )
        if segment in (".", ".."):
            raise InvalidSpiffeIdError(kind, original, RULE_DOT_SEGMENT)
        if any(c not in _SEGMENT_CHARS for c in segment):
            raise InvalidSpiffeIdError(kind, original, RULE_SEGMENT_CHARS)


@dataclass(frozen=True, slots=True, order=True)
class TrustDomain:
    """A trust domain name such as ``example.org`` (SPIFFE-ID 2.1)."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise InvalidSpiffeIdError("trust domain", self.name, "must be a string")
        _check_trust_domain_name(self.name, self.name, "trust domain")

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Parse ``example.org`` or, as go-spiffe does, the trust domain of a SPIFFE ID."""
        if not isinstance(text, str):
            raise InvalidSpiffeIdError("trust domain", text, "must be a string")
        if not text:
            raise InvalidSpiffeIdError("trust domain", text, RULE_EMPTY)
        if "/" in text or text.startswith("spiffe:"):
            return SpiffeId.parse(text).trust_domain
        _check_trust_domain_name(text, text, "trust domain")
        return cls(text)

    def id(self) -> SpiffeId:
        """The trust domain's own ID, ``spiffe://<name>`` (used in CA URI SANs)."""
        return SpiffeId(self, "")

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    """A parsed SPIFFE ID: trust domain plus a path that is empty or starts with ``/``."""

    trust_domain: TrustDomain
    path: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.trust_domain, TrustDomain):
            raise InvalidSpiffeIdError("SPIFFE ID", self.trust_domain, RULE_TD_MISSING)
        _check_path(self.path, self.path, "path")
        if len(SCHEME_PREFIX) + len(self.trust_domain.name) + len(self.path.encode()) > (
            MAX_ID_BYTES
        ):
            raise InvalidSpiffeIdError("SPIFFE ID", str(self)[:64] + "...", RULE_ID_LENGTH)

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse ``spiffe://<trust domain><path>`` strictly (see the module docstring)."""
        kind = "SPIFFE ID"
        fast = _FAST_ID.fullmatch(text) if isinstance(text, str) else None
        if fast is not None and len(text) <= MAX_ID_BYTES:
            # The common, well-formed case in one regex (same rules as below): skip the
            # step-by-step checks, which exist to name the rule that an input breaks.
            path = fast.group(2)
            if "/./" not in path + "/" and "/../" not in path + "/":
                td = object.__new__(TrustDomain)
                object.__setattr__(td, "name", fast.group(1))
                sid = object.__new__(cls)
                object.__setattr__(sid, "trust_domain", td)
                object.__setattr__(sid, "path", path)
                return sid
        if not isinstance(text, str):
            raise InvalidSpiffeIdError(kind, text, "must be a string")
        if not text:
            raise InvalidSpiffeIdError(kind, text, RULE_EMPTY)
        if len(text.encode()) > MAX_ID_BYTES:
            raise InvalidSpiffeIdError(kind, text[:64] + "...", RULE_ID_LENGTH)
        if not text.startswith(SCHEME_PREFIX):
            raise InvalidSpiffeIdError(kind, text, RULE_SCHEME)
        rest = text[len(SCHEME_PREFIX) :]
        cut = len(rest)
        for sep in "/?#":
            pos = rest.find(sep)
            if pos != -1:
                cut = min(cut, pos)
        name, path = rest[:cut], rest[cut:]
        if path[:1] == "?":
            raise InvalidSpiffeIdError(kind, text, RULE_QUERY)
        if path[:1] == "#":
            raise InvalidSpiffeIdError(kind, text, RULE_FRAGMENT)
        _check_trust_domain_name(name, text, kind)
        _check_path(path, text, kind)
        return cls(TrustDomain(name), path)

    @classmethod
    def from_path(cls, trust_domain: TrustDomain, path: str) -> SpiffeId:
        """The ID of ``path`` (must start with ``/``, or be empty) in ``trust_domain``."""
        return cls(trust_domain, path)

    def member_of(self, trust_domain: TrustDomain) -> bool:
        return self.trust_domain == trust_domain

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path[1:].split("/")) if self.path else ()

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain.name}{self.path}"
