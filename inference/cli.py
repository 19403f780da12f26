"""``zerogate inference ...``: run the model service.

``serve`` runs the gated service in its own process beside a control plane (``zerogate
serve``): its own X.509-SVID and the bundles from the control plane's Workload API
(``identity.workload_api_socket``), the deny list and audit log in the shared database, the
policies from ``policy.rego_dir`` (``inference/service.py``, ``run_standalone``). The
all-in-one ``zerogate serve`` runs the same service inside the control plane.

``serve --ungated`` serves the configured models without authentication (benchmarks, a
trusted internal upstream).

Exit codes: 0 clean stop; 1 the service could not start (no SVID from the Workload API, a
policy that does not compile); 2 bad configuration; 3 the listen address is taken.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from zerogate.config import Settings, load_settings
from zerogate.errors import ConfigError, ZerogateError

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
    try:
        settings = load_settings(config)
        if listen is not None:
            settings.inference.listen = listen
    except (ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not ungated:
        _serve_gated(settings)
        return
    import uvicorn

    from inference.app import create_app
    from inference.models import ModelRegistry

    try:
        registry = ModelRegistry.from_settings(settings.inference, data_dir=settings.data_dir)
        web = create_app(registry, ungated=True)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    host, _, port = settings.inference.listen.rpartition(":")
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s %(message)s")
    uvicorn.run(web, host=host, port=int(port), log_level="warning", access_log=False)


def _serve_gated(settings: Settings) -> None:
    from inference.service import run_standalone
    from zerogate.server import run_loop
    from zerogate.telemetry import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    try:
        run_loop(run_standalone(settings))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except ZerogateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3 if exc.code == "listen_failed" else 1) from exc


if __name__ == "__main__":
    app()
