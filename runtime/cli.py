"""Runtime commands: ``runtime tail|replay`` (``app``) and ``quarantine list|add|release``
(``quarantine_app``), mounted on ``zerogate`` by zerogate/cli.py.

They are local clients of the store: ``tail`` follows Falco's ``file_output`` (resuming from
the offset stored in the database), ``replay`` feeds a file once; both store and audit exactly
as the server does. Quarantine changes made here reach a running server within its revision
watch interval (``runtime/quarantine.py``) and remote gates through its SSE push.

Exit codes: 0 success; 1 the thing was not there (release of an ID that is not quarantined) or
a replayed file held invalid lines; 2 bad usage, input or configuration; 3 the store, the audit
log or the file is unreachable.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from runtime.errors import QuarantineError, QuarantineNotFoundError, SourceError
from runtime.events import EventStore
from runtime.ingest import EventIngestor
from runtime.quarantine import QuarantineRecord, QuarantineService
from runtime.sources.file import FileTailer, replay
from runtime.state import StateStore
from zerogate.audit import AuditLog
from zerogate.cli_common import ConfigOption, OutputFormat, OutputOption
from zerogate.cli_common import fail as _fail
from zerogate.config import Settings, load_settings
from zerogate.errors import AuditError, ConfigError, StoreError
from zerogate.store import Database

app = typer.Typer(help="Falco runtime events: follow or replay Falco output files.")
quarantine_app = typer.Typer(help="Quarantined SPIFFE IDs (refused by every enforcement point).")
app.info.no_args_is_help = True
quarantine_app.info.no_args_is_help = True


@dataclass
class _Ctx:
    settings: Settings
    db: Database
    audit: AuditLog


@contextmanager
def _context(config: Path | None) -> Iterator[_Ctx]:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(str(exc), 2)
    try:
        db = Database.open(settings.effective_database_url)
    except StoreError as exc:
        _fail(str(exc), 3)
    audit = AuditLog.from_settings(db, settings)
    try:
        try:
            yield _Ctx(settings, db, audit)
        except QuarantineNotFoundError as exc:
            _fail(str(exc), 1)
        except QuarantineError as exc:
            _fail(str(exc), 2)
        except SourceError as exc:
            _fail(str(exc), 3)
        except (StoreError, AuditError) as exc:
            _fail(str(exc), 3)
    finally:
        audit.close()
        db.close()


def _ingestor(ctx: _Ctx) -> EventIngestor:
    store = EventStore(ctx.db, dedup_window_s=ctx.settings.runtime.dedup_window_s)
    ingestor = EventIngestor(store, ctx.audit)
    ingestor.recover()
    ingestor.start()
    return ingestor


# runtime ----------------------------------------------------------------------------------


@app.command("tail")
def runtime_tail(
    file: Annotated[Path, typer.Argument(help="Falco file_output (json_output: true)")],
    poll: Annotated[float, typer.Option(help="seconds between checks at end of file")] = 0.2,
    config: ConfigOption = None,
) -> None:
    """Follow FILE like `tail -F`: survives rotation and restarts (offset kept in the store)."""
    with _context(config) as ctx:
        ingestor = _ingestor(ctx)
        tailer = FileTailer(file, ingestor, StateStore(ctx.db), poll_interval_s=poll)

        def stop(_sig: int, _frame: FrameType | None) -> None:
            tailer.request_stop()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        typer.echo(f"following {tailer.path} (Ctrl-C to stop)", err=True)
        try:
            tailer.run()
        finally:
            ingestor.close()
        typer.echo(json.dumps(tailer.stats.to_json()))


@app.command("replay")
def runtime_replay(
    file: Annotated[Path, typer.Argument(help="file of Falco JSON alerts, one per line")],
    config: ConfigOption = None,
) -> None:
    """Feed FILE once; exit 1 when some lines were not valid alerts (the rest is stored)."""
    with _context(config) as ctx:
        ingestor = _ingestor(ctx)
        try:
            stats = replay(file, ingestor)
        finally:
            ingestor.close()
        typer.echo(json.dumps(stats.to_json()))
        for line in stats.errors[:20]:
            typer.echo(f"invalid: {line}", err=True)
    if stats.invalid:
        raise typer.Exit(1)


# quarantine -------------------------------------------------------------------------------


def _service(ctx: _Ctx) -> QuarantineService:
    return QuarantineService(
        ctx.db, audit=ctx.audit, default_ttl_s=ctx.settings.runtime.quarantine_ttl_s
    )


def _print(records: list[QuarantineRecord], output: OutputFormat, single: bool = False) -> None:
    if output is OutputFormat.json:
        data = [r.to_json() for r in records]
        typer.echo(json.dumps(data[0] if single else data, indent=2))
        return
    if not records:
        typer.echo("no quarantined SPIFFE IDs")
        return
    for r in records:
        state = "released" if r.released_at else f"until {r.expires_at.isoformat()}"
        typer.echo(f"{r.spiffe_id}  {state}  rule={r.rule or '-'}  reason={r.reason}")


@quarantine_app.command("list")
def quarantine_list(
    all_: Annotated[bool, typer.Option("--all", help="include expired and released")] = False,
    output: OutputOption = OutputFormat.pretty,
    config: ConfigOption = None,
) -> None:
    """List quarantined SPIFFE IDs."""
    with _context(config) as ctx:
        _print(_service(ctx).list(include_inactive=all_), output)


@quarantine_app.command("add")
def quarantine_add(
    spiffe_id: Annotated[str, typer.Argument(help="spiffe://<trust domain>/<path>")],
    reason: Annotated[str, typer.Option(help="why (shown to refused callers)")],
    ttl: Annotated[int | None, typer.Option(help="seconds; default runtime.quarantine_ttl_s")] = (
        None
    ),
    output: OutputOption = OutputFormat.pretty,
    config: ConfigOption = None,
) -> None:
    """Quarantine SPIFFE_ID: gates refuse it, the Workload API stops serving it."""
    with _context(config) as ctx:
        record = _service(ctx).add(
            spiffe_id, reason=reason, ttl_s=ttl, created_by=f"cli:uid:{os.getuid()}"
        )
        _print([record], output, single=True)


@quarantine_app.command("release")
def quarantine_release(
    spiffe_id: Annotated[str, typer.Argument(help="spiffe://<trust domain>/<path>")],
    output: OutputOption = OutputFormat.pretty,
    config: ConfigOption = None,
) -> None:
    """End the quarantine of SPIFFE_ID now."""
    with _context(config) as ctx:
        record = _service(ctx).release(spiffe_id, released_by=f"cli:uid:{os.getuid()}")
        _print([record], output, single=True)
