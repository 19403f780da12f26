"""Rego v0 -> v1 source upgrade, as ``opa fmt --v0-v1`` does (``zerogate policy upgrade``).

OPA 1.0 made the ``if`` keyword mandatory before rule bodies and ``contains`` mandatory for
multi-value (partial set) rules, and the ``future.keywords`` imports became no-ops that the
v1 parser refuses as duplicates of ``rego.v1``. Gatekeeper's library is written in v0, so
every template goes through :func:`upgrade_module` before the v1 engine compiles it.

The upgrade works on tokens from a small Rego lexer (strings, raw strings, comments and
brackets are never confused with rule syntax), walks the top-level statements and rewrites
only rule heads:

============================  =====================================
v0                            v1
============================  =====================================
``p[x] { b }``                ``p contains x if { b }``
``p[k] = v { b }``            ``p[k] = v if { b }``
``p = v { b }`` / ``p { b }`` ``p = v if { b }`` / ``p if { b }``
``f(x) = y { b }``            ``f(x) = y if { b }``
``... else = v { b }``        ``... else = v if { b }``
``p { a } { b }``             ``p if { a }`` and ``p if { b }``
``p[x]`` (no body)            ``p contains x``
``import future.keywords.*``  removed (``rego.v1`` semantics hold)
``re_match(...)``             ``regex.match(...)`` (deprecated built-in)
============================  =====================================

``default`` rules, constants and rules that already use ``if``/``contains`` stay as they are,
so upgrading v1 (or v0 written with the future keywords) is the identity. Bodies, comments
and layout are kept verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from policy.errors import ErrorLocation, PolicyCompileError

__all__ = ["Token", "UpgradeError", "lex", "upgrade_module"]


class UpgradeError(PolicyCompileError):
    """The source cannot be tokenized or its rule structure is not Rego."""


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # ws nl comment ident string number op open close
    text: str
    row: int
    col: int


_TOKEN = re.compile(
    r"""
    (?P<nl>\r?\n)
  | (?P<ws>[ \t\f\r]+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>:=|==|!=|<=|>=|[=<>+\-*/%|&.,;:!])
  | (?P<open>[\[({])
  | (?P<close>[\])}])
    """,
    re.VERBOSE,
)

_PAIRS = {"(": ")", "[": "]", "{": "}"}
_KEYWORDS_V1 = {"if", "contains", "else", "default", "package", "import", "some", "every", "in"}
_DEPRECATED = {"re_match": "regex.match", "net.cidr_overlap": "net.cidr_contains"}
# v1 removed any()/all(); calls become these helpers, appended to the module that needs them
_HELPERS = {
    "any": "__zg_any(xs) := true if {\n\tsome x in xs\n\tx == true\n} else := false\n",
    "all": "__zg_all(xs) := false if {\n\tsome x in xs\n\tx != true\n} else := true\n",
}


def lex(source: str, *, file: str = "<module>") -> list[Token]:
    """Split Rego source into tokens; raises UpgradeError at the first unknown character."""
    tokens: list[Token] = []
    pos, row, line_start = 0, 1, 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None or m.lastgroup is None:
            col = pos - line_start + 1
            raise UpgradeError(
                [
                    ErrorLocation(
                        file, row, col, f"unexpected character {source[pos]!r}", "rego_parse_error"
                    )
                ]
            )
        kind = "string" if m.lastgroup == "raw" else m.lastgroup
        text = m.group()
        tokens.append(Token(kind, text, row, pos - line_start + 1))
        newlines = text.count("\n")
        if newlines:
            row += newlines
            line_start = pos + text.rindex("\n") + 1
        pos = m.end()
    return tokens


def _is_operand_end(tok: Token) -> bool:
    if tok.kind in ("string", "number", "close"):
        return True
    return tok.kind == "ident" and tok.text not in _KEYWORDS_V1


class _Rule:
    """One top-level rule split into head text, its value part and body chains."""

    def __init__(self) -> None:
        self.default = False
        self.v1 = False  # already uses if/contains
        self.ref: list[Token] = []
        self.value: list[Token] = []  # "= term" / ":= term" tokens, verbatim
        self.chains: list[list[tuple[list[Token], list[Token]]]] = []  # [(else-head, body)]


class _Parser:
    def __init__(self, tokens: list[Token], file: str) -> None:
        self.toks = tokens
        self.i = 0
        self.file = file

    # --- token helpers --------------------------------------------------------------------

    def error(self, message: str, tok: Token | None = None) -> UpgradeError:
        tok = tok or (self.toks[self.i] if self.i < len(self.toks) else self.toks[-1])
        return UpgradeError(
            [ErrorLocation(self.file, tok.row, tok.col, message, "rego_parse_error")]
        )

    def peek_sig(self, j: int, *, newlines: bool = True) -> int:
        """Index of the next significant token at or after ``j`` (len if none)."""
        while j < len(self.toks):
            kind = self.toks[j].kind
            if kind in ("ws", "comment") or (newlines and kind == "nl"):
                j += 1
                continue
            return j
        return j

    def balanced(self, j: int) -> int:
        """``toks[j]`` opens a bracket; return the index after its matching close."""
        stack = [_PAIRS[self.toks[j].text]]
        j += 1
        while j < len(self.toks):
            tok = self.toks[j]
            if tok.kind == "open":
                stack.append(_PAIRS[tok.text])
            elif tok.kind == "close":
                if tok.text != stack[-1]:
                    raise self.error(f"unbalanced {tok.text!r}", tok)
                stack.pop()
                if not stack:
                    return j + 1
            j += 1
        raise self.error("unterminated bracket", self.toks[-1])

    def term(self, j: int) -> int:
        """Consume an expression starting at ``j``; stop before a body ``{``, ``if``,
        ``else`` or the end of the line once the expression is complete."""
        last: Token | None = None
        while j < len(self.toks):
            tok = self.toks[j]
            if tok.kind in ("ws", "comment"):
                j += 1
                continue
            complete = last is not None and _is_operand_end(last)
            if tok.kind == "nl":
                if complete:
                    return j
                j += 1
                continue
            if tok.kind == "ident" and tok.text in ("if", "else") and complete:
                return j
            if tok.kind == "open":
                if tok.text == "{" and complete:
                    return j
                end = self.balanced(j)
                last = self.toks[end - 1]
                j = end
                continue
            last = tok
            j += 1
        return j

    # --- statements -----------------------------------------------------------------------

    def statement_end_of_line(self, j: int) -> int:
        while j < len(self.toks) and self.toks[j].kind != "nl":
            if self.toks[j].kind == "open":
                j = self.balanced(j)
                continue
            j += 1
        return j

    def rule(self, j: int) -> tuple[_Rule, int]:
        rule = _Rule()
        toks = self.toks
        if toks[j].text == "default":
            rule.default = True
            end = self.term(self.peek_sig(j + 1))
            return rule, end
        # head reference: name, then .name / [term] / (args)
        start = j
        if toks[j].kind != "ident":
            raise self.error(f"expected a rule, found {toks[j].text!r}", toks[j])
        j += 1
        while j < len(toks):
            tok = toks[j]
            if (
                tok.kind == "op"
                and tok.text == "."
                and j + 1 < len(toks)
                and toks[j + 1].kind == "ident"
            ):
                j += 2
            elif tok.kind == "open" and tok.text in "[(":
                j = self.balanced(j)
            else:
                break
        rule.ref = toks[start:j]
        k = self.peek_sig(j, newlines=False)
        if k < len(toks) and toks[k].kind == "ident" and toks[k].text == "contains":
            rule.v1 = True
            k = self.term(self.peek_sig(k + 1, newlines=False))
        elif k < len(toks) and toks[k].kind == "op" and toks[k].text in ("=", ":="):
            vend = self.term(self.peek_sig(k + 1, newlines=False))
            rule.value = toks[j:vend]
            k = vend
        else:
            k = j
        head_end = k
        k2 = self.peek_sig(k, newlines=False)
        if k2 < len(toks) and toks[k2].kind == "ident" and toks[k2].text == "if":
            rule.v1 = True
        if rule.v1:
            return rule, self._skip_v1_bodies(k2)
        # v0 bodies: "{...}" chains, separated by whitespace/newlines, with else clauses
        k = self.peek_sig(k)
        chain: list[tuple[list[Token], list[Token]]] = []
        while k < len(toks):
            tok = toks[k]
            if tok.kind == "open" and tok.text == "{":
                end = self.balanced(k)
                if chain:
                    rule.chains.append(chain)
                chain = [([], toks[k:end])]
                k = self.peek_sig(end)
                continue
            if tok.kind == "ident" and tok.text == "else" and chain:
                head_end = self.peek_sig(k + 1)
                if toks[head_end].kind == "op" and toks[head_end].text in ("=", ":="):
                    head_end = self.term(self.peek_sig(head_end + 1))
                body_at = self.peek_sig(head_end)
                if body_at >= len(toks) or toks[body_at].text != "{":
                    raise self.error("else without a body", tok)
                end = self.balanced(body_at)
                chain.append((toks[k:head_end], toks[body_at:end]))
                k = self.peek_sig(end)
                continue
            break
        if chain:
            rule.chains.append(chain)
            # end of the last consumed body, not the next statement's first token
            return rule, self._after(chain[-1][1])
        return rule, head_end

    def _after(self, span: list[Token]) -> int:
        # spans are slices of self.toks: find the index after the span's last token by identity
        last = span[-1]
        for idx in range(len(self.toks) - 1, -1, -1):
            if self.toks[idx] is last:
                return idx + 1
        raise self.error("internal: span not found", last)

    def _skip_v1_bodies(self, k: int) -> int:
        """A rule already in v1 form: skip ``if`` bodies and ``else`` clauses verbatim."""
        toks = self.toks
        while k < len(toks):
            k = self.peek_sig(k, newlines=False)
            if k >= len(toks):
                return k
            tok = toks[k]
            if tok.kind == "ident" and tok.text == "if":
                k = self.peek_sig(k + 1, newlines=False)
                k = self.balanced(k) if k < len(toks) and toks[k].text == "{" else self.term(k)
                nxt = self.peek_sig(k)
                if nxt < len(toks) and toks[nxt].kind == "ident" and toks[nxt].text == "else":
                    k = nxt
                    continue
                return k
            if tok.kind == "ident" and tok.text == "else":
                k = self.peek_sig(k + 1, newlines=False)
                if k < len(toks) and toks[k].text in ("=", ":="):
                    k = self.term(self.peek_sig(k + 1, newlines=False))
                continue
            if tok.kind == "open" and tok.text == "{":
                k = self.balanced(k)
                continue
            return k
        return k


def _text(tokens: list[Token], used: set[str] | None = None) -> str:
    return "".join(_rename_deprecated(tokens, used if used is not None else set()))


def _rename_deprecated(tokens: list[Token], used: set[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.kind == "ident" and i + 1 < len(tokens):
            prev = tokens[i - 1].text if i else ""
            if tok.text in _HELPERS and tokens[i + 1].text == "(" and prev != ".":
                used.add(tok.text)
                out.append(f"__zg_{tok.text}")
                i += 1
                continue
            if tok.text == "re_match" and tokens[i + 1].text == "(":
                out.append(_DEPRECATED["re_match"])
                i += 1
                continue
            if (
                tok.text == "net"
                and i + 3 < len(tokens)
                and tokens[i + 1].text == "."
                and tokens[i + 2].text == "cidr_overlap"
                and tokens[i + 3].text == "("
            ):
                out.append(_DEPRECATED["net.cidr_overlap"])
                i += 3
                continue
        out.append(tok.text)
        i += 1
    return out


def _v1_head(rule: _Rule) -> str:
    ref = rule.ref
    is_set = (
        not rule.value
        and len(ref) >= 2
        and ref[1].text == "["
        and ref[-1].text == "]"
        and _balanced_single(ref[1:])
    )
    if is_set:
        return f"{ref[0].text} contains {_text(ref[2:-1]).strip()}"
    head = _text(ref)
    if rule.value:
        head += _text(rule.value).rstrip()
    return head


def _balanced_single(span: list[Token]) -> bool:
    """True when ``span`` is exactly one bracket group ``[ ... ]``."""
    depth = 0
    for idx, tok in enumerate(span):
        if tok.kind == "open":
            depth += 1
        elif tok.kind == "close":
            depth -= 1
            if depth == 0 and idx != len(span) - 1:
                return False
    return True


def _render(rule: _Rule, verbatim: str) -> str:
    if rule.default or rule.v1:
        return verbatim
    head = _v1_head(rule)
    if not rule.chains:
        return head
    rendered: list[str] = []
    for chain in rule.chains:
        text = head
        for else_head, body in chain:
            if else_head:
                text += " " + _text(else_head).strip()
            text += " if " + _text(body)
        rendered.append(text)
    return "\n\n".join(rendered)


def upgrade_module(source: str, *, file: str = "<module>") -> str:
    """Return ``source`` rewritten for Rego v1. Idempotent; raises UpgradeError when the
    source is not tokenizable Rego (compile errors are left to the engine)."""
    parser = _Parser(lex(source, file=file), file)
    toks = parser.toks
    out: list[str] = []
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok.kind in ("ws", "nl", "comment"):
            out.append(tok.text)
            i += 1
            continue
        if tok.kind == "ident" and tok.text == "package":
            end = parser.statement_end_of_line(i)
            out.append(_text(toks[i:end]))
            i = end
            continue
        if tok.kind == "ident" and tok.text == "import":
            end = parser.statement_end_of_line(i)
            path = "".join(t.text for t in toks[i + 1 : end] if t.kind not in ("ws", "comment"))
            if path.startswith("future.keywords") or path == "rego.v1":
                # drop the import and its line break
                i = end + 1 if end < len(toks) else end
                continue
            out.append(_text(toks[i:end]))
            i = end
            continue
        rule, end = parser.rule(i)
        if end <= i:
            raise parser.error(f"cannot parse rule at {tok.text!r}", tok)
        out.append(_render(rule, _text(toks[i:end])))
        i = end
    text = "".join(out)
    for name, helper in _HELPERS.items():
        if f"__zg_{name}(" in text and helper.split(" if", 1)[0] not in text:
            text = text.rstrip("\n") + "\n\n" + helper
    return text
