"""The ``zerogate`` command line: kernel commands here, subsystem commands mounted below.

Exit codes: 0 success; 1 the command ran and found a problem (``audit verify`` found
tampering, ``policy test`` could not run); 2 bad usage or bad configuration (the message names
the key); 3 the store or another dependency is unreachable.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from zerogate import audit as audit_mod
from zerogate.cli_common import ConfigOption, OutputFormat, fail
from zerogate.config import Settings, load_settings, render_default_yaml
from zerogate.errors import AuditError, ConfigError, StoreError, ZerogateError
from zerogate.store import Database
from zerogate.telemetry import setup_logging

app = typer.Typer(
    name="zerogate",
    help="zerogate: SPIFFE identity, Rego policy, admission, Falco response and a gated "
    "inference service in one control plane.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


GO_RUNTIME_DEFAULTS = {"GOGC": "1600", "GOMEMLIMIT": "1GiB"}
"""The embedded OPA's Go runtime settings unless the operator sets them (docs/admission.md).
OPA evaluations allocate heavily over a small live heap (compiled policies and data): each
garbage collection slows the evaluations running during it (mark assists), which was the
tail of the admission webhook's latency. Collecting at 17x the live heap instead of Go's 2x
took the webhook's p99 at 250 reviews/s from 12-16 ms (GOGC=400) to 8-10 ms for ~190 MB more
memory at peak; GOMEMLIMIT makes Go collect sooner as the heap nears 1 GiB, whatever GOGC says,
so a large policy set cannot grow the heap without bound."""


@app.callback()
def _process_defaults() -> None:
    """Process-wide defaults, set before any subsystem loads (the Go runtime reads them once,
    when the OPA library loads). An operator's own values win."""
    for name, value in GO_RUNTIME_DEFAULTS.items():
        os.environ.setdefault(name, value)


audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _mount_subsystems() -> None:
    """Each subsystem's own Typer commands (noun verb), mounted under ``zerogate``."""
    from admission.cli import app as admission_app
    from identity.cli import bundle_app, ca_app, entry_app, svid_app
    from identity.token_cli import token_app
    from policy.cli import app as policy_app
    from policy.upgrade_cli import upgrade_command
    from runtime.cli import app as runtime_app
    from runtime.cli import quarantine_app

    app.add_typer(entry_app, name="entry")
    app.add_typer(ca_app, name="ca")
    app.add_typer(svid_app, name="svid")
    app.add_typer(bundle_app, name="bundle")
    app.add_typer(token_app, name="token")
    policy_app.command("upgrade")(upgrade_command)
    app.add_typer(policy_app, name="policy")
    app.add_typer(admission_app, name="admission")
    app.add_typer(runtime_app, name="runtime")
    app.add_typer(quarantine_app, name="quarantine")


def settings_or_exit(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        fail(str(exc), 2)


def open_db_or_exit(url: str) -> Database:
    try:
        return Database.open(url)
    except StoreError as exc:
        fail(str(exc), 3)


@app.command()
def init(
    path: Annotated[Path, typer.Option("--path", help="where to write")] = Path("zerogate.yaml"),
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
) -> None:
    """Write a commented zerogate.yaml with every key and its default."""
    if path.exists() and not force:
        fail(f"{path} exists; pass --force to overwrite it", 2)
    path.write_text(render_default_yaml(), encoding="utf-8")
    typer.echo(f"wrote {path}")


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the all-in-one control plane with the embedded defaults (or zerogate.yaml)."""
    settings = settings_or_exit(config)
    setup_logging(settings.log_level, settings.log_format)
    from zerogate.server import build_control_plane, run_loop

    try:
        plane = build_control_plane(settings)
    except ConfigError as exc:
        fail(str(exc), 2)
    except StoreError as exc:
        fail(str(exc), 3)
    except ZerogateError as exc:
        fail(str(exc), 1)
    try:
        run_loop(plane.run())
    except ZerogateError as exc:  # e.g. the port is taken
        fail(str(exc), 3)


# audit ------------------------------------------------------------------------------------


def _public_key(settings: Settings, public_key: Path | None) -> Ed25519PublicKey:
    if public_key is not None:
        try:
            loaded = serialization.load_pem_public_key(public_key.read_bytes())
        except (OSError, ValueError) as exc:
            fail(f"cannot read public key {public_key}: {exc}", 2)
        if not isinstance(loaded, Ed25519PublicKey):
            fail(f"{public_key} is not an Ed25519 public key", 2)
        return loaded
    key_path = settings.audit_signing_key
    if not key_path.exists():
        fail(f"no checkpoint key at {key_path}: pass --public-key", 2)
    try:
        return audit_mod.load_or_create_signing_key(key_path).public_key()
    except AuditError as exc:
        fail(str(exc), 2)


@audit_app.command("verify")
def audit_verify(
    config: ConfigOption = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="override the configured database")
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="Ed25519 public key (PEM) that signs checkpoints"),
    ] = None,
) -> None:
    """Check every record and checkpoint; exit 1 naming the first bad seq."""
    settings = settings_or_exit(config)
    key = _public_key(settings, public_key)
    db = open_db_or_exit(database_url or settings.effective_database_url)
    try:
        result = audit_mod.verify(db, key)
    finally:
        db.close()
    if result.ok:
        typer.echo(result.summary())
        return
    typer.echo(result.summary())
    for finding in result.findings[:20]:
        typer.echo(f"  {finding}", err=True)
    raise typer.Exit(1)


@audit_app.command("tail")
def audit_tail(
    config: ConfigOption = None,
    n: Annotated[int, typer.Option("-n", min=1, help="how many records")] = 20,
    kind: Annotated[str | None, typer.Option("--kind", help="only records of this kind")] = None,
    output: Annotated[OutputFormat, typer.Option("--output", "-o")] = OutputFormat.pretty,
    database_url: Annotated[str | None, typer.Option("--database-url")] = None,
) -> None:
    """Show the newest records, oldest first."""
    settings = settings_or_exit(config)
    db = open_db_or_exit(database_url or settings.effective_database_url)
    try:
        records = audit_mod.tail(db, n, kind)
    finally:
        db.close()
    for record in records:
        if output is OutputFormat.json:
            typer.echo(json.dumps(record.to_json(), sort_keys=True))
        else:
            payload = json.dumps(record.payload, sort_keys=True)
            typer.echo(
                f"{record.seq:>8}  {audit_mod.format_ts(record.ts)}  {record.kind}  {payload}"
            )


@audit_app.command("append")
def audit_append(
    kind: Annotated[
        str, typer.Option("--kind", help="dotted lower-case, e.g. operator.breakglass")
    ],
    payload: Annotated[str, typer.Option("--payload", help="a JSON object, or - for stdin")],
    config: ConfigOption = None,
    database_url: Annotated[str | None, typer.Option("--database-url")] = None,
) -> None:
    """Append an operator's own record (a break-glass action, a change ticket)."""
    settings = settings_or_exit(config)
    raw = sys.stdin.read() if payload == "-" else payload
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"--payload is not valid JSON: {exc}", 2)
    if not isinstance(data, dict):
        fail("--payload must be a JSON object", 2)
    db = open_db_or_exit(database_url or settings.effective_database_url)
    log = None
    try:
        log = audit_mod.AuditLog.from_settings(db, settings)
        seq = log.write(kind, data)
    except AuditError as exc:
        fail(str(exc), 2)
    finally:
        if log is not None:
            log.close()
        db.close()
    typer.echo(f"appended seq {seq}")


_mount_subsystems()
