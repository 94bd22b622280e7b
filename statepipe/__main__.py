"""``python -m statepipe`` runs the CLI."""

from statepipe.cli import main

main()
