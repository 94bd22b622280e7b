"""The ``statepipe`` command line."""

from __future__ import annotations

import click

from statepipe import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="statepipe")
def main() -> None:
    """Run LLM agent workflows as DAGs and watch them live."""
