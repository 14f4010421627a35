"""paqbench: a pluggable benchmarking harness for compressing large language models.

Plugin authors need only this module: ``hookimpl`` marks hook implementations, and the
base classes define what a method, metric, model source, dataset, reporter or compressed
layer format is.
"""

from importlib.metadata import PackageNotFoundError, version

from paqbench.hookspecs import hookimpl
from paqbench.interfaces import (
    DataOrigin,
    Dataset,
    Measurement,
    Method,
    Metric,
    ModelSource,
    NoParams,
    Params,
    Reporter,
    RunContext,
    TextCorpus,
    Unavailable,
)
from paqbench.layers.contract import CompressedLayer

try:
    __version__ = version("paqbench")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = [
    "CompressedLayer",
    "DataOrigin",
    "Dataset",
    "Measurement",
    "Method",
    "Metric",
    "ModelSource",
    "NoParams",
    "Params",
    "Reporter",
    "RunContext",
    "TextCorpus",
    "Unavailable",
    "__version__",
    "hookimpl",
]
