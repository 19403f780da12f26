"""``zerogate admission ...``: verify gator suites, apply/sync Gatekeeper objects, list them,
print the webhook manifests.

Exit codes: ``verify`` as ``zerogate policy test`` (0 passed, 2 a case failed, 1 could not
run); other commands 0 on success, 1 on bad input (the reason on stderr), 2 when an applied
template does not compile (nothing is stored then).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from admission.gatekeeper import GatekeeperError, GatekeeperSet, load_objects, parse_template
from admission.manifests import render, webhook_configurations
from admission.objects import ObjectStore, classify, load_active
from admission.verify import SuiteError, exit_code, report, run_suites
from policy.errors import PolicyError
from zerogate.config import Settings, load_settings
from zerogate.errors import ZerogateError
from zerogate.store import Database

app = typer.Typer(
    help="Kubernetes admission: Gatekeeper objects, gator suites, manifests.", no_args_is_help=True
)


class Output(StrEnum):
    pretty = "pretty"
    json = "json"


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


@contextmanager
def _store() -> Iterator[ObjectStore]:
    db = Database.open(load_settings().effective_database_url)
    try:
        yield ObjectStore(db)
    finally:
        db.close()


@app.command("verify")
def verify_command(
    suites: Annotated[list[Path], typer.Argument(help="gator Suite YAML files or directories")],
    run: Annotated[
        str | None, typer.Option("--run", "-r", help="only test/case names matching REGEX")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="list passing cases too")
    ] = False,
) -> None:
    """Run Gatekeeper `gator verify` suites (kind: Suite)."""
    files: list[Path] = []
    for path in suites:
        if path.is_dir():
            files += sorted(path.rglob("suite.yaml"))
        elif path.exists():
            files.append(path)
        else:
            _fail(f"error: {path}: no such file")
    if not files:
        _fail("error: no suite.yaml found")
    try:
        results = run_suites(files, run=run)
    except (SuiteError, PolicyError) as exc:
        _fail(f"error: {exc}")
    report(results, sys.stdout, verbose=verbose)
    raise typer.Exit(exit_code(results))


@app.command("apply")
def apply_command(
    files: Annotated[
        list[Path], typer.Argument(help="YAML with ConstraintTemplates and constraints")
    ],
) -> None:
    """Store templates and constraints in the database (they survive restarts)."""
    try:
        objects = load_objects(files)
        templates = [parse_template(o, source=s) for o, s in objects if classify(o) == "template"]
        if templates:  # a template that does not compile is refused before anything is stored
            gk = GatekeeperSet()
            try:
                errors = gk.replace(templates, [])
            finally:
                gk.close()
            if errors:
                for name, errs in errors.items():
                    for e in errs:
                        typer.echo(f"{name}: {e}", err=True)
                raise typer.Exit(2)
        with _store() as store:
            keys = store.apply(objects)
    except (GatekeeperError, ZerogateError) as exc:
        _fail(f"error: {exc}")
    for key in keys:
        typer.echo(f"applied {key}")


@app.command("sync")
def sync_command(
    files: Annotated[
        list[Path], typer.Argument(help="YAML of Kubernetes objects for data.inventory")
    ],
    replace: Annotated[
        bool, typer.Option("--replace", help="drop previously synced objects")
    ] = False,
) -> None:
    """Load referential data (Namespaces, Ingresses, ...) into data.inventory."""
    try:
        with _store() as store:
            keys = store.sync(load_objects(files), replace=replace)
    except (GatekeeperError, ZerogateError) as exc:
        _fail(f"error: {exc}")
    typer.echo(f"synced {len(keys)} objects")


@app.command("list")
def list_command(output: Annotated[Output, typer.Option("--output", "-o")] = Output.pretty) -> None:
    """Active templates (with compile status) and constraints."""
    settings = load_settings()
    try:
        with _store() as store:
            templates, constraints, inventory, errors = load_active(
                settings.admission.gatekeeper_dir, store
            )
        gk = GatekeeperSet()
        try:
            compile_errors = gk.replace(templates, constraints, inventory)
        finally:
            gk.close()
    except (GatekeeperError, ZerogateError) as exc:
        _fail(f"error: {exc}")
    rows: dict[str, list[Any]] = {
        "templates": [
            {
                "name": t.name,
                "kind": t.kind,
                "source": t.source,
                "errors": [str(e) for e in compile_errors.get(t.name, [])],
            }
            for t in templates
        ],
        "constraints": [
            {"key": c.key, "enforcementAction": c.enforcement_action, "source": c.source}
            for c in constraints
        ],
        "object_errors": [str(e) for e in errors],
    }
    if output is Output.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for t in rows["templates"]:
        state = "ERROR " + "; ".join(t["errors"]) if t["errors"] else "ok"
        typer.echo(f"template   {t['name']:<40} {state}")
    for c in rows["constraints"]:
        typer.echo(f"constraint {c['key']:<40} {c['enforcementAction']}")
    for e in rows["object_errors"]:
        typer.echo(f"error      {e}")


def _live_bundle_pem(settings: Settings) -> bytes:
    """Our trust domain's X.509 authorities, as the webhook's caBundle."""
    from identity.service import open_identity

    db = Database.open(settings.effective_database_url)
    try:
        identity = open_identity(settings, db, None, rotate_now=False)
        pem = identity.ca.bundle().to_pem()
    except ZerogateError as exc:
        raise ValueError(
            f"no trust bundle yet ({exc}): start zerogate serve once or pass --ca-bundle"
        ) from exc
    finally:
        db.close()
    if "BEGIN CERTIFICATE" not in pem:
        raise ValueError("the trust bundle is empty: start zerogate serve once or pass --ca-bundle")
    return pem.encode("ascii")


@app.command("manifests")
def manifests_command(
    ca_bundle: Annotated[
        Path | None,
        typer.Option("--ca-bundle", help="PEM trust bundle; default: the live trust bundle"),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", help="zerogate's namespace")
    ] = None,
    service: Annotated[str | None, typer.Option("--service", help="webhook Service name")] = None,
    port: Annotated[int, typer.Option("--port", help="Service port")] = 443,
) -> None:
    """Print the Validating/MutatingWebhookConfiguration YAML."""
    full = load_settings()
    settings = full.admission
    try:
        pem = ca_bundle.read_bytes() if ca_bundle is not None else _live_bundle_pem(full)
        docs = webhook_configurations(
            ca_bundle_pem=pem,
            namespace=namespace or settings.namespace,
            service=service or settings.service,
            port=port,
            failure_mode=settings.failure_mode,
            validate_timeout_s=settings.validate_timeout_s,
            mutate_timeout_s=settings.mutate_timeout_s,
        )
    except (OSError, ValueError) as exc:
        _fail(f"error: {exc}")
    typer.echo(render(docs), nl=False)
