"""paqbench: a pluggable benchmarking harness for compressing large language models.

Plugin authors need only this module: ``hookimpl`` marks hook implementations, and the
base classes define what a method, metric, model source, dataset, reporter or compressed
layer format is.
"""

from paqbench.context import RunContext
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
    TextCorpus,
    Unavailable,
)
from paqbench.layers.contract import CompressedLayer
from paqbench.version import __version__

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
