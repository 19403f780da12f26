"""What every ``zerogate`` subcommand shares: the ``--config`` and ``--output`` options and
one way to fail (a message on stderr, then the exit code; codes in ``zerogate.cli``)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="zerogate.yaml (default $ZEROGATE_CONFIG, ./zerogate.yaml)"
    ),
]


class OutputFormat(StrEnum):
    pretty = "pretty"
    json = "json"


OutputOption = Annotated[OutputFormat, typer.Option("--output", "-o", help="pretty or json")]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
