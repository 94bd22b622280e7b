"""The ``statepipe`` command line."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from statepipe import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="statepipe")
def main() -> None:
    """Run LLM agent workflows as DAGs and watch them live."""


@main.command()
@click.option(
    "--listen",
    default="127.0.0.1:7420",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to serve gRPC on (port 0 picks a free port).",
)
@click.option(
    "--database-url",
    envvar="STATEPIPE_DATABASE_URL",
    metavar="URL",
    help="PostgreSQL URL [env STATEPIPE_DATABASE_URL]; default: the embedded server "
    "under $STATEPIPE_HOME (~/.statepipe).",
)
@click.option(
    "--max-concurrency",
    default=256,
    show_default=True,
    help="Nodes running at once across all runs.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def server(listen: str, database_url: str | None, max_concurrency: int, log_level: str) -> None:
    """Start the control plane (gRPC API, scheduler, local executor).

    SIGTERM or Ctrl-C shuts it down gracefully; runs in flight are taken over
    at the next start.
    """
    from control_plane.server import ServerConfig, serve

    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = ServerConfig(listen=listen, database_url=database_url, max_concurrency=max_concurrency)
    try:
        asyncio.run(serve(config))
    except OSError as err:
        raise click.ClickException(str(err)) from None
