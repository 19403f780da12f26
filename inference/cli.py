"""``zerogate inference ...``: run the model service.

``serve --ungated`` serves the configured models without authentication (benchmarks, a
trusted internal upstream); the gated mode (SPIFFE authn, Rego authz, audit) is wired by
``zerogate serve`` once the gate exists, and ``serve`` without ``--ungated`` refuses to start
until then (exit code 2) rather than serve unguarded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from zerogate.config import load_settings
from zerogate.errors import ConfigError

app = typer.Typer(help="The OpenAI-compatible model service.", no_args_is_help=True)


@app.callback()
def _main() -> None:
    """The OpenAI-compatible model service."""


@app.command("serve")
def serve(
    config: Path | None = typer.Option(None, "--config", help="zerogate.yaml to read"),
    listen: str | None = typer.Option(None, "--listen", help="HOST:PORT (default from config)"),
    ungated: bool = typer.Option(
        False, "--ungated", help="serve WITHOUT authentication/authorization/audit"
    ),
) -> None:
    """Load the configured models and serve /v1/models, /v1/embeddings, /v1/chat/completions."""
    import uvicorn

    from inference.app import create_app
    from inference.models import ModelRegistry

    try:
        settings = load_settings(config)
        if not ungated:
            raise ConfigError(
                "gated serving is wired by `zerogate serve`; pass --ungated to serve this "
                "instance without authentication"
            )
        registry = ModelRegistry.from_settings(settings.inference, data_dir=settings.data_dir)
        web = create_app(registry, ungated=True)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    host, _, port = (listen or settings.inference.listen).rpartition(":")
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s %(message)s")
    uvicorn.run(web, host=host, port=int(port), log_level="warning", access_log=False)


if __name__ == "__main__":
    app()
