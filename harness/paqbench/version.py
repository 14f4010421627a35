"""The installed paqbench version, in a module of its own so that any part of the
library can read it without importing the package's public API (and its imports)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("paqbench")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"
