"""Identity commands: ``entry``, ``ca``, ``svid`` and ``bundle`` (mounted on ``zerogate``).

Noun then verb, as SPIRE's ``spire-server entry create``; ``--output pretty|json`` where
things are listed; ``--data -`` reads an entry as JSON from stdin. The commands are local
clients of the store (the same code the server runs, via ``identity.service.open_identity``).

Exit codes: 0 success; 1 the command ran and the thing was not there or conflicted (entry not
found, revision conflict); 2 bad usage, bad input or bad configuration (the message names
the rule or key); 3 the store or another dependency is unreachable.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from identity.ca import JwtSvidParams, X509SvidParams
from identity.entries import Entry
from identity.errors import (
    EntryConflictError,
    EntryNotFoundError,
    IdentityError,
)
from identity.rotation import Kind
from identity.service import IdentityService, open_identity
from identity.spiffeid import InvalidSpiffeIdError, SpiffeId
from zerogate.audit import AuditLog
from zerogate.cli_common import ConfigOption, OutputFormat, OutputOption
from zerogate.cli_common import fail as _fail
from zerogate.config import Settings, load_settings
from zerogate.errors import AuditError, ConfigError, StoreError, ZerogateError
from zerogate.store import Database

entry_app = typer.Typer(help="Registration entries: which workload gets which SPIFFE ID.")
ca_app = typer.Typer(help="The SPIFFE certificate authority.", no_args_is_help=True)
svid_app = typer.Typer(help="Mint SVIDs locally (as an administrator).", no_args_is_help=True)
svid_mint_app = typer.Typer(help="Mint an X.509-SVID or a JWT-SVID.", no_args_is_help=True)
svid_app.add_typer(svid_mint_app, name="mint")
bundle_app = typer.Typer(help="The trust bundle of our trust domain.", no_args_is_help=True)
entry_app.info.no_args_is_help = True


class BundleFormat(StrEnum):
    pem = "pem"
    spiffe = "spiffe"


@contextmanager
def _service(config: Path | None, *, signing: bool = False) -> Iterator[IdentityService]:
    """The identity core on the configured store, with the real audit log; closed after."""
    try:
        settings: Settings = load_settings(config)
    except ConfigError as exc:
        _fail(str(exc), 2)
    if signing and settings.identity.key_store == "memory":
        _fail(
            "identity.key_store is memory: the CA keys live only in the server process; "
            "use the HTTP API (POST /v1/svid/...) or a disk key store",
            2,
        )
    try:
        db = Database.open(settings.effective_database_url)
    except StoreError as exc:
        _fail(str(exc), 3)
    audit = AuditLog.from_settings(db, settings)
    try:
        try:
            service = open_identity(settings, db, audit, rotate_now=signing)
        except ZerogateError as exc:
            _fail(str(exc), 2)
        try:
            yield service
        except (EntryNotFoundError, EntryConflictError) as exc:
            _fail(str(exc), 1)
        except StoreError as exc:
            _fail(str(exc), 3)
        except AuditError as exc:
            _fail(f"audit log refused the record: {exc}", 3)
        except (IdentityError, ZerogateError, InvalidSpiffeIdError) as exc:
            _fail(str(exc), 2)
    finally:
        audit.close()
        db.close()


def _actor() -> str:
    return f"cli:uid:{os.getuid()}"


# entry ------------------------------------------------------------------------------------


def _pretty_entry(entry: Entry) -> str:
    def ttl(v: int | None) -> str:
        return "default" if v is None else f"{v}s"

    lines = [
        f"Entry ID         : {entry.id}",
        f"SPIFFE ID        : {entry.spiffe_id}",
        f"Parent ID        : {entry.parent_id or '-'}",
        f"Revision         : {entry.revision}",
        f"X509-SVID TTL    : {ttl(entry.x509_svid_ttl)}",
        f"JWT-SVID TTL     : {ttl(entry.jwt_svid_ttl)}",
    ]
    lines += [f"Selector         : {s}" for s in entry.selectors]
    lines += [f"DNS name         : {d}" for d in entry.dns_names]
    lines += [
        f"Admin            : {str(entry.admin).lower()}",
        f"Disabled         : {str(entry.disabled).lower()}",
        f"Hint             : {entry.hint or '-'}",
    ]
    return "\n".join(lines)


def _print_entries(entries: list[Entry], output: OutputFormat, *, single: bool = False) -> None:
    if output is OutputFormat.json:
        doc: Any = entries[0].to_dict() if single else [e.to_dict() for e in entries]
        typer.echo(json.dumps(doc, indent=2))
        return
    if not entries:
        typer.echo("Found 0 entries")
        return
    if not single:
        typer.echo(f"Found {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    typer.echo("\n\n".join(_pretty_entry(e) for e in entries))


def _read_data(data: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if data == "-" else Path(data).read_text(encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot read --data {data}: {exc}", 2)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        _fail(f"--data is not JSON: {exc}", 2)
    if not isinstance(doc, dict):
        _fail("--data must hold one JSON object (an entry)", 2)
    return doc


SpiffeIdOpt = Annotated[str | None, typer.Option("--spiffe-id", help="SPIFFE ID to issue")]
SelectorOpt = Annotated[
    list[str] | None,
    typer.Option("--selector", "-s", help="TYPE:VALUE, e.g. unix:uid:1000 (repeatable)"),
]
ParentOpt = Annotated[str | None, typer.Option("--parent-id", help="parent SPIFFE ID")]
X509TtlOpt = Annotated[int | None, typer.Option("--x509-ttl", help="X.509-SVID TTL (seconds)")]
JwtTtlOpt = Annotated[int | None, typer.Option("--jwt-ttl", help="JWT-SVID TTL (seconds)")]
DnsOpt = Annotated[list[str] | None, typer.Option("--dns", help="DNS SAN (repeatable)")]
HintOpt = Annotated[str | None, typer.Option("--hint", help="hint for the workload")]
DataOpt = Annotated[
    str | None, typer.Option("--data", help="entry as JSON from a file, or - for stdin")
]


def _flags_to_fields(
    spiffe_id: str | None,
    selector: list[str] | None,
    parent_id: str | None,
    x509_ttl: int | None,
    jwt_ttl: int | None,
    dns: list[str] | None,
    admin: bool | None,
    hint: str | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if spiffe_id is not None:
        fields["spiffe_id"] = spiffe_id
    if selector:
        fields["selectors"] = selector
    if parent_id is not None:
        fields["parent_id"] = parent_id
    if x509_ttl is not None:
        fields["x509_svid_ttl"] = x509_ttl
    if jwt_ttl is not None:
        fields["jwt_svid_ttl"] = jwt_ttl
    if dns:
        fields["dns_names"] = dns
    if admin is not None:
        fields["admin"] = admin
    if hint is not None:
        fields["hint"] = hint
    return fields


@entry_app.command("create")
def entry_create(
    spiffe_id: SpiffeIdOpt = None,
    selector: SelectorOpt = None,
    parent_id: ParentOpt = None,
    x509_ttl: X509TtlOpt = None,
    jwt_ttl: JwtTtlOpt = None,
    dns: DnsOpt = None,
    admin: Annotated[bool, typer.Option("--admin", help="may call write APIs")] = False,
    hint: HintOpt = None,
    data: DataOpt = None,
    output: OutputOption = OutputFormat.pretty,
    config: ConfigOption = None,
) -> None:
    """Register a workload: SPIFFE ID plus the selectors it must present."""
    fields = _flags_to_fields(
        spiffe_id, selector, parent_id, x509_ttl, jwt_ttl, dns, admin or None, hint
    )
    if data is not None:
        if fields:
            _fail("give the entry either as flags or as --data, not both", 2)
        fields = _read_data(data)
    if "spiffe_id" not in fields:
        _fail("--spiffe-id is required", 2)
    with _service(config) as svc:
        entry = svc.entries.create(fields, actor=_actor())
        _print_entries([entry], output, single=True)


@entry_app.command("list")
def entry_list(
    spiffe_id: Annotated[str | None, typer.Option("--spiffe-id", help="only this ID")] = None,
    selector: Annotated[
        str | None, typer.Option("--selector", help="only entries with this selector")
    ] = None,
    output: OutputOption = OutputFormat.pretty,
    config: ConfigOption = None,
) -> None:
    """List registration entries."""
    with _service(config) as svc:
        _print_entries(svc.entries.list(spiffe_id=spiffe_id, selector=selector), output)


@entry_app.command("show")
def entry_show(
    entry_id: Annotated[str, typer.Argument(help="entry ID")],
    output: OutputOption = OutputFormat.pretty,
    config: ConfigOption = None,
) -> None:
    """Show one entry."""
    with _service(config) as svc:
        _print_entries([svc.entries.get(entry_id)], output, single=True)


@entry_app.command("update")
def entry_update(
    entry_id: Annotated[str, typer.Argument(help="entry ID")],
    spiffe_id: SpiffeIdOpt = None,
    selector: Annotated[
        list[str] | None, typer.Option("--selector", "-s", help="replaces all selectors")
    ] = None,
    parent_id: ParentOpt = None,
    x509_ttl: X509TtlOpt = None,
    jwt_ttl: JwtTtlOpt = None,
    dns: Annotated[list[str] | None, typer.Option("--dns", help="replaces all DNS SANs")] = None,
    admin: Annotated[bool | None, typer.Option("--admin/--no-admin")] = None,
    disabled: Annotated[
        bool | None, typer.Option("--disable/--enable", help="stop/resume serving it")
    ] = None,
    hint: HintOpt = None,
    revision: Annotated[
        int | None, typer.Option("--revision", help="fail unless the entry is at this revision")
    ] = None,
    data: DataOpt = None,
    output: OutputOption = OutputFormat.pretty,
    config: ConfigOption = None,
) -> None:
    """Change fields of an entry (only the ones given)."""
    fields = _flags_to_fields(spiffe_id, selector, parent_id, x509_ttl, jwt_ttl, dns, admin, hint)
    if disabled is not None:
        fields["disabled"] = disabled
    if data is not None:
        if fields:
            _fail("give the changes either as flags or as --data, not both", 2)
        fields = _read_data(data)
    if not fields:
        _fail("nothing to update: give at least one field", 2)
    with _service(config) as svc:
        entry = svc.entries.update(entry_id, fields, expected_revision=revision, actor=_actor())
        _print_entries([entry], output, single=True)


@entry_app.command("delete")
def entry_delete(
    entry_id: Annotated[str, typer.Argument(help="entry ID")],
    config: ConfigOption = None,
) -> None:
    """Delete an entry; its SVIDs stop being served at once."""
    with _service(config) as svc:
        entry = svc.entries.delete(entry_id, actor=_actor())
        typer.echo(f"Deleted entry {entry.id} ({entry.spiffe_id})")


# ca ---------------------------------------------------------------------------------------


@ca_app.command("rotate")
def ca_rotate(
    taint: Annotated[
        bool, typer.Option("--taint", help="the current CA is compromised: re-issue everything")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Prepare and activate a new X.509 CA and JWT key now."""
    with _service(config, signing=True) as svc:
        svc.authorities.force_rotate(taint=taint)
        active, _ = svc.authorities.active(Kind.X509)
        jwt_active, _ = svc.authorities.active(Kind.JWT)
        typer.echo(
            f"rotated: x509 CA {active.key_id} and JWT key {jwt_active.kid} active"
            f"{' (previous ones tainted)' if taint else ''}; bundle sequence "
            f"{svc.authorities.sequence}"
        )


@ca_app.command("show")
def ca_show(output: OutputOption = OutputFormat.pretty, config: ConfigOption = None) -> None:
    """The signing authorities in every slot (prepared, active, old)."""
    with _service(config) as svc:
        rows = [
            {
                "key_id": a.key_id,
                "kind": a.kind.value,
                "status": a.status.value,
                "not_before": a.not_before.isoformat(),
                "not_after": a.not_after.isoformat(),
                "tainted": a.tainted,
            }
            for a in svc.authorities.authorities()
        ]
        if output is OutputFormat.json:
            typer.echo(json.dumps(rows, indent=2))
            return
        for r in rows:
            typer.echo(
                f"{r['kind']:5} {r['status']:9} {r['key_id']}  until {r['not_after']}"
                f"{'  TAINTED' if r['tainted'] else ''}"
            )


# svid -------------------------------------------------------------------------------------


def _spiffe_id(text: str) -> SpiffeId:
    try:
        return SpiffeId.parse(text)
    except InvalidSpiffeIdError as exc:
        _fail(str(exc), 2)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


@svid_mint_app.command("x509")
def svid_mint_x509(
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="SPIFFE ID of the SVID")],
    out: Annotated[
        Path, typer.Option("--out", help="directory for svid.pem, svid.key, bundle.pem")
    ],
    ttl: Annotated[int | None, typer.Option("--ttl", help="seconds (default from config)")] = None,
    dns: DnsOpt = None,
    config: ConfigOption = None,
) -> None:
    """Mint an X.509-SVID: writes svid.pem (chain), svid.key (0600) and bundle.pem."""
    sid = _spiffe_id(spiffe_id)
    if ttl is not None and ttl <= 0:
        _fail("--ttl must be a positive number of seconds", 2)
    with _service(config, signing=True) as svc:
        svid = svc.ca.issue_x509_svid(
            X509SvidParams(
                spiffe_id=sid,
                ttl=timedelta(seconds=ttl) if ttl else None,
                dns_names=tuple(dns or ()),
            )
        )
        out.mkdir(parents=True, exist_ok=True)
        _write(out / "svid.key", svid.key_pem(), 0o600)
        _write(out / "svid.pem", svid.chain_pem(), 0o644)
        _write(out / "bundle.pem", svc.ca.bundle().to_pem().encode(), 0o644)
        typer.echo(
            f"wrote {out}/svid.pem, svid.key, bundle.pem: {sid} serial {svid.serial_hex} "
            f"expires {svid.expires_at.isoformat()}"
        )


@svid_mint_app.command("jwt")
def svid_mint_jwt(
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="SPIFFE ID (the sub claim)")],
    audience: Annotated[list[str], typer.Option("--audience", help="aud (repeatable)")],
    ttl: Annotated[int | None, typer.Option("--ttl", help="seconds (default from config)")] = None,
    config: ConfigOption = None,
) -> None:
    """Mint a JWT-SVID and print it."""
    sid = _spiffe_id(spiffe_id)
    if ttl is not None and ttl <= 0:
        _fail("--ttl must be a positive number of seconds", 2)
    with _service(config, signing=True) as svc:
        svid = svc.ca.issue_jwt_svid(
            JwtSvidParams(
                spiffe_id=sid,
                audience=tuple(audience),
                ttl=timedelta(seconds=ttl) if ttl else None,
            )
        )
        typer.echo(svid.token)


# bundle -----------------------------------------------------------------------------------


@bundle_app.command("show")
def bundle_show(
    fmt: Annotated[
        BundleFormat, typer.Option("--format", help="pem or spiffe (bundle JSON)")
    ] = BundleFormat.pem,
    config: ConfigOption = None,
) -> None:
    """Print our trust domain's bundle."""
    with _service(config) as svc:
        bundle = svc.ca.bundle()
        if not bundle.x509_authorities and not bundle.jwt_authorities:
            _fail("no CA yet: start `zerogate serve` or run `zerogate ca rotate` first", 1)
        if fmt is BundleFormat.pem:
            typer.echo(bundle.to_pem(), nl=False)
        else:
            typer.echo(bundle.to_json(indent=2))
