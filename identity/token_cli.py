"""``zerogate token``: one-time join tokens for nodes outside Kubernetes.

``zerogate token generate --spiffe-id ID [--ttl S] [--output pretty|json]`` stores the
SHA-256 of a fresh random token bound to ``ID`` (which must be in our trust domain) and prints
the token once; it cannot be shown again. Redeeming it (``POST /v1/svid/x509`` with the
token) yields that ID, once.

Exit codes as the rest of ``zerogate``: 0 success; 2 bad input or configuration; 3 the
store (or the audit log) is unreachable.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from identity.attestation import JoinTokenError, JoinTokens
from identity.spiffeid import InvalidSpiffeIdError, TrustDomain
from zerogate.audit import AuditLog
from zerogate.cli_common import OutputFormat
from zerogate.cli_common import fail as _fail
from zerogate.config import load_settings
from zerogate.errors import AuditError, ConfigError, StoreError
from zerogate.store import Database

token_app = typer.Typer(help="One-time join tokens for node attestation.", no_args_is_help=True)


@token_app.callback()
def _group() -> None:
    """One-time join tokens for node attestation."""


@token_app.command("generate")
def generate(
    spiffe_id: Annotated[
        str, typer.Option("--spiffe-id", help="the SPIFFE ID the token attests to")
    ],
    ttl: Annotated[int, typer.Option("--ttl", help="seconds until the unused token expires")] = 600,
    output: Annotated[OutputFormat, typer.Option("--output", "-o")] = OutputFormat.pretty,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="zerogate.yaml")] = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="override the configured database")
    ] = None,
) -> None:
    """Create a one-time join token bound to a SPIFFE ID and print it once."""
    if ttl <= 0:
        _fail(f"--ttl must be a positive number of seconds, got {ttl}", 2)
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(str(exc), 2)
    try:
        db = Database.open(database_url or settings.effective_database_url)
    except StoreError as exc:
        _fail(str(exc), 3)
    audit: AuditLog | None = None
    try:
        audit = AuditLog.from_settings(db, settings)
        tokens = JoinTokens(db, audit=audit, trust_domain=TrustDomain.parse(settings.trust_domain))
        issued = tokens.generate(spiffe_id, timedelta(seconds=ttl))
    except (InvalidSpiffeIdError, JoinTokenError) as exc:
        _fail(str(exc), 2)
    except (StoreError, AuditError) as exc:
        _fail(str(exc), 3)
    finally:
        if audit is not None:
            audit.close()
        db.close()
    if output is OutputFormat.json:
        typer.echo(
            json.dumps(
                {
                    "token": issued.token,
                    "token_id": issued.token_id,
                    "spiffe_id": issued.spiffe_id,
                    "expires_at": issued.expires_at.isoformat(),
                },
                sort_keys=True,
            )
        )
    else:
        typer.echo(issued.token)
        typer.echo(
            f"token_id={issued.token_id} spiffe_id={issued.spiffe_id} "
            f"expires_at={issued.expires_at.isoformat()} (shown once)",
            err=True,
        )
