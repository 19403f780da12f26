"""Policy errors, each with a stable ``code`` and, for policy source errors, locations.

Hierarchy::

    ZerogateError
    +-- PolicyError                 code=policy_error
        +-- PolicyCompileError      code=policy_compile_error  parse/compile errors, each
        |                                                      ``file:line:col: message``
        +-- PolicyEvalError         code=policy_eval_error     evaluation failed (fail closed)
        |   +-- PolicyUnavailableError code=policy_unavailable the engine cannot answer now
        +-- PolicyInputError        code=invalid_input         path or input is malformed
        +-- PolicyNotFoundError     code=policy_not_found      no module with that id
        +-- EngineLoadError         code=engine_unavailable    an engine's library cannot load

Engines turn their native error text into these (``parse_opa_errors``,
``parse_regorus_errors``) so callers never see engine-specific exceptions. Locations follow
OPA's ``ast.Error`` (``v1/ast/errors.go``): file, row, col, code, message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from zerogate.errors import ZerogateError


@dataclass(frozen=True, slots=True)
class ErrorLocation:
    """One error in a policy source: where it is and what is wrong."""

    file: str
    row: int
    col: int
    message: str
    code: str = "rego_compile_error"

    def __str__(self) -> str:
        return f"{self.file}:{self.row}:{self.col}: {self.message}"

    def as_opa(self) -> dict[str, object]:
        """The shape of one entry in OPA's REST ``errors`` list (v1/server/types/types.go)."""
        return {
            "code": self.code,
            "message": self.message,
            "location": {"file": self.file, "row": self.row, "col": self.col},
        }


class PolicyError(ZerogateError):
    code = "policy_error"


class PolicyCompileError(PolicyError):
    """A module failed to parse or compile; ``errors`` holds each one with its location."""

    code = "policy_compile_error"

    def __init__(self, errors: list[ErrorLocation], *, summary: str | None = None) -> None:
        self.errors = list(errors)
        head = summary or (
            f"{len(self.errors)} error{'s' if len(self.errors) != 1 else ''} occurred"
        )
        lines = [head, *(str(e) for e in self.errors)]
        super().__init__("\n".join(lines))


class PolicyEvalError(PolicyError):
    """Evaluation failed. Callers on a request path MUST deny (fail closed)."""

    code = "policy_eval_error"

    def __init__(self, message: str, *, location: ErrorLocation | None = None) -> None:
        super().__init__(message)
        self.location = location


class PolicyUnavailableError(PolicyEvalError):
    code = "policy_unavailable"


class PolicyInputError(PolicyError):
    code = "invalid_input"


class PolicyNotFoundError(PolicyError):
    code = "policy_not_found"


class EngineLoadError(PolicyError):
    code = "engine_unavailable"


# --- engine error text -> locations -------------------------------------------------------

# OPA: "b.rego:5: rego_parse_error: unexpected } token\n\t}\n\t^" (ast.Error.Error()); the
# optional detail lines show the source line and a caret under the column.
_OPA_ERROR = re.compile(
    r"^(?P<file>[^\n:]+(?::[^\n:]+)*?):(?P<row>\d+):(?:(?P<col>\d+):)? "
    r"(?P<code>rego_[a-z_]+): (?P<message>.*)$"
)
_OPA_COUNT = re.compile(r"^\d+ errors? occurred:\s*", re.MULTILINE)
_QUOTED_NAME = re.compile(r"(?:function|ref:?|var|rule)\s+([A-Za-z_][\w.]*)")


def parse_opa_errors(text: str, sources: dict[str, str]) -> list[ErrorLocation]:
    """Turn OPA's error text into locations. Column: the caret line when OPA prints one,
    else the named identifier's column on that line, else the line's first non-blank."""
    body = text
    for prefix in ("bundle activation failed: ",):
        body = body.replace(prefix, "")
    body = _OPA_COUNT.sub("", body)
    lines = body.split("\n")
    found: list[ErrorLocation] = []
    i = 0
    while i < len(lines):
        match = _OPA_ERROR.match(lines[i].strip())
        if match is None:
            i += 1
            continue
        details: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].startswith("\t"):
            details.append(lines[j][1:])
            j += 1
        row = int(match["row"])
        col = (
            int(match["col"])
            if match["col"]
            else _column(match["message"], details, sources.get(match["file"], ""), row)
        )
        found.append(
            ErrorLocation(match["file"], row, col, match["message"].strip(), match["code"])
        )
        i = j
    return found


def _column(message: str, details: list[str], source: str, row: int) -> int:
    if len(details) >= 2 and details[1].strip() == "^":
        return details[1].index("^") + 1
    lines = source.split("\n")
    line = lines[row - 1] if 0 < row <= len(lines) else ""
    name = _QUOTED_NAME.search(message)
    if name is not None:
        leaf = name.group(1).rsplit(".", 1)[-1]
        at = line.find(leaf)
        if at >= 0:
            return at + 1
    stripped = len(line) - len(line.lstrip())
    return stripped + 1


# regorus: "\n--> b.rego:2:22\n  |\n2 | allow if f(1)\n  |   ^\nerror: message\n\nStack ..."
_REGORUS_LOC = re.compile(r"-->\s*(?P<file>.+?):(?P<row>\d+):(?P<col>\d+)")
_REGORUS_MSG = re.compile(r"^error:\s*(?P<message>.*)$", re.MULTILINE)


def clean_regorus_text(text: str) -> str:
    """Drop the Rust stack backtrace regorus appends to every error."""
    return text.split("\nStack backtrace:")[0].split("\nCaused by:")[0].strip()


def parse_regorus_errors(text: str) -> list[ErrorLocation]:
    cleaned = clean_regorus_text(text)
    loc = _REGORUS_LOC.search(cleaned)
    msg = _REGORUS_MSG.search(cleaned)
    if loc is None:
        return []
    message = msg["message"].strip() if msg else cleaned.splitlines()[-1]
    return [ErrorLocation(loc["file"], int(loc["row"]), int(loc["col"]), message)]
