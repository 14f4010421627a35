"""Deployable export: paqbench models written as compressed-tensors checkpoints
(transformers, vLLM) and GGUF files (llama.cpp), each reloaded in its engine and checked
against the in-memory model. See docs/export.md.

The package itself holds only what layers declare about themselves (capabilities,
records); :func:`paqbench.export.run.export_model` writes and checks the files. Keeping
the writers out of this ``__init__`` keeps the layer modules, which import
:mod:`~paqbench.export.capability`, free of an import circle through the writers.
"""

from paqbench.export.capability import TARGETS, Capability, capability_of
from paqbench.export.record import ExportRecord, LayerRecord

__all__ = ["TARGETS", "Capability", "ExportRecord", "LayerRecord", "capability_of"]
