"""statepipe ui."""
