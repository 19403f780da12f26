"""``zerogate policy upgrade FILE...``: rewrite Rego v0 modules for v1 (``opa fmt --v0-v1``).

Prints the upgraded module to stdout, or with ``--write`` replaces each file in place (only
after every file upgraded). Exit 0 on success, 1 when a file cannot be read or tokenized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from policy.upgrade import UpgradeError, upgrade_module

upgrade_app = typer.Typer(help="Upgrade Rego v0 to v1.")


@upgrade_app.command("upgrade")
def upgrade_command(
    files: Annotated[list[Path], typer.Argument(help=".rego files written for Rego v0")],
    write: Annotated[
        bool, typer.Option("--write", "-w", help="rewrite the files in place")
    ] = False,
) -> None:
    """Rewrite v0 rule heads (if/contains), drop future.keywords imports."""
    upgraded: dict[Path, str] = {}
    for path in files:
        try:
            upgraded[path] = upgrade_module(path.read_text(), file=str(path))
        except OSError as exc:
            typer.echo(f"error: {path}: {exc.strerror}", err=True)
            raise typer.Exit(1) from None
        except UpgradeError as exc:
            for err in exc.errors:
                typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
    for path, text in upgraded.items():
        if write:
            path.write_text(text)
        else:
            typer.echo(text, nl=False)
