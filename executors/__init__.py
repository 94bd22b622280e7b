"""statepipe executors."""
