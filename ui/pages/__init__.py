"""One module per page; each has ``register(console)`` (wired in ui/main.py)."""
