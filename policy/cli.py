"""``zerogate policy ...``: test, eval, check and bundle build, offline (no server needed).

Exit codes follow ``opa test`` (OPA ``cmd/test.go``): 0 all passed; 2 a test failed; 1 the
command could not run (a module or data file does not parse or compile: each error is printed
as ``file:line:col: message``; no tests found; bad arguments). ``eval`` exits 0 when the
result is defined, 1 on errors; ``check`` 0 when everything compiles, 1 otherwise.

Example (the long help of ``policy test``)::

    # rego/example/authz.rego            # rego/example/authz_test.rego
    package example                      package example_test
    allow if input.user == "alice"       import data.example
                                         test_alice if example.allow with input as {"user": "alice"}

    $ zerogate policy test rego/ -v
"""

from __future__ import annotations

import json
import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from policy.bundle import bundle_from_directory, load_signing_key
from policy.engine import ENGINES, PolicyEngine, create_engine
from policy.errors import PolicyCompileError, PolicyError
from policy.testing import REPORTERS, exit_code, load_paths, run_tests
from zerogate.config import PolicySettings, load_settings
from zerogate.errors import ConfigError

app = typer.Typer(
    name="policy",
    help="Rego policies: test, evaluate, check, build bundles.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bundle_app = typer.Typer(help="OPA bundles.", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")


class Format(StrEnum):
    pretty = "pretty"
    json = "json"


EngineOption = Annotated[
    str | None,
    typer.Option("--engine", help=f"one of {sorted(ENGINES)}; default policy.engine"),
]
PathsArgument = Annotated[list[Path] | None, typer.Argument(help="directories or .rego files")]


_REF = re.compile(r"(data)?([./][\w-]+)*|[\w-]+([./][\w-]+)*")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _engine(name: str | None) -> PolicyEngine:
    try:
        settings = load_settings().policy
    except ConfigError:
        settings = PolicySettings()  # the CLI works offline without a valid config file
    if name is not None and name not in ENGINES:
        _fail(f"error: unknown engine {name!r}; choose one of {sorted(ENGINES)}")
    try:
        return create_engine(settings, name=name or _offline_default(settings.engine))
    except PolicyError as exc:
        _fail(f"error: {exc}")


def _offline_default(configured: str) -> str:
    return "opa" if configured == "opa-server" else configured


def _compile_failure(exc: PolicyCompileError) -> NoReturn:
    _fail(str(exc), 1)


@app.command("test")
def test_command(
    paths: PathsArgument = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="list every test")] = False,
    run: Annotated[
        str | None, typer.Option("--run", "-r", help="only tests whose name matches REGEX")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f")] = Format.pretty,
    engine: EngineOption = None,
) -> None:
    """Run every test_* rule of the *_test.rego files under PATH (default: rego/)."""
    chosen = paths or [Path("rego")]
    try:
        loaded = load_paths(chosen)
        if not loaded.cases:
            _fail(f"error: no tests found in {', '.join(str(p) for p in chosen)}")
        results = run_tests(_engine(engine), loaded, run=run)
    except PolicyCompileError as exc:
        _compile_failure(exc)
    except PolicyError as exc:
        _fail(f"error: {exc}")
    REPORTERS[fmt.value](results, sys.stdout, verbose=verbose)
    raise typer.Exit(exit_code(results))


@app.command("eval")
def eval_command(
    query: Annotated[str, typer.Argument(help="a document ref, e.g. data.zerogate.inference")],
    data: Annotated[
        list[Path] | None, typer.Option("--data", "-d", help="policy/data directory or file")
    ] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input", "-i", help="input JSON file ('-' for stdin)")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f")] = Format.json,
    engine: EngineOption = None,
) -> None:
    """Evaluate the document QUERY (``data.a.b`` or ``a/b``) like ``opa eval``."""
    if not _REF.fullmatch(query):
        _fail(f"error: QUERY must be a document reference like data.a.b or a/b, got {query!r}")
    try:
        loaded = load_paths(data or [])
    except PolicyCompileError as exc:
        _compile_failure(exc)
    value: Any = None
    if input_file is not None:
        try:
            text = sys.stdin.read() if str(input_file) == "-" else input_file.read_text()
            value = json.loads(text)
        except (OSError, json.JSONDecodeError) as exc:
            _fail(f"error: input {input_file}: {exc}")
    chosen = _engine(engine)
    try:
        chosen.load(loaded.modules, loaded.data)
        decision = chosen.evaluate(query, value)
    except PolicyCompileError as exc:
        _compile_failure(exc)
    except PolicyError as exc:
        _fail(f"error: {exc}")
    if fmt is Format.json:
        body: dict[str, Any] = {}
        if decision.defined:
            body["result"] = [{"expressions": [{"value": decision.result, "text": query}]}]
        typer.echo(json.dumps(body, indent=2))
    else:
        typer.echo(json.dumps(decision.result, indent=2) if decision.defined else "undefined")


@app.command("check")
def check_command(paths: PathsArgument = None, engine: EngineOption = None) -> None:
    """Parse and compile PATH... (modules, tests and data files); print errors."""
    chosen = paths or [Path("rego")]
    try:
        loaded = load_paths(chosen)
        _engine(engine).load(loaded.modules, loaded.data)
    except PolicyCompileError as exc:
        _compile_failure(exc)
    typer.echo(f"ok: {len(loaded.modules)} modules")


@bundle_app.command("build")
def bundle_build(
    path: Annotated[Path, typer.Argument(help="policy directory")],
    output: Annotated[Path, typer.Option("--output", "-o", help="bundle file to write")],
    signing_key: Annotated[
        Path | None, typer.Option("--signing-key", help="PEM private key: add .signatures.json")
    ] = None,
    name: Annotated[str, typer.Option("--name")] = "zerogate",
) -> None:
    """Build the OPA bundle of PATH (the same bytes /bundles/{name}.tar.gz serves)."""
    try:
        key = load_signing_key(signing_key) if signing_key else None
        bundle = bundle_from_directory(path, name=name, signing_key=key)
        _engine(None).load(*_served(path))
    except PolicyCompileError as exc:
        _compile_failure(exc)
    except PolicyError as exc:
        _fail(f"error: {exc}")
    output.write_bytes(bundle.content)
    typer.echo(f"wrote {output} revision={bundle.revision} etag={bundle.etag}")


def _served(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    from policy.sources import load_directory

    sources = load_directory(path)
    return dict(sources.modules), dict(sources.data)
