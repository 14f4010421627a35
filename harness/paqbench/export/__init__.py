"""Deployable export: paqbench models written as compressed-tensors checkpoints
(transformers, vLLM) and GGUF files (llama.cpp), each reloaded in its engine and checked
against the in-memory model. See docs/export.md."""

from paqbench.export.capability import TARGETS, Capability, capability_of
from paqbench.export.record import ExportRecord, LayerRecord
from paqbench.export.run import ExportOutcome, export_model

__all__ = ["TARGETS", "Capability", "ExportOutcome", "ExportRecord", "LayerRecord", "capability_of", "export_model"]
