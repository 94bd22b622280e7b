"""``python -m statepipe`` runs the CLI."""

from statepipe.cli import main

main(prog_name="statepipe")
