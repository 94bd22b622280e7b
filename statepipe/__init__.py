"""statepipe: run LLM agent workflows as DAGs and watch them live."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("statepipe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
