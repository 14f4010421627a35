"""What a quantization step reports: layer count, bits per weight, kernels in use."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import torch


def storage_facts(layers: Mapping[str, torch.nn.Module]) -> dict[str, object]:
    """How many layers, at what bits per weight (stored bits over weights).

    Each layer is a packed format with ``out_features``, ``in_features`` and
    ``paqbench_storage_bits()``."""
    weights = sum(layer.out_features * layer.in_features for layer in layers.values())
    bits = sum(layer.paqbench_storage_bits() for layer in layers.values())
    return {"layers": len(layers), "bits_per_weight": bits / weights if weights else 0.0}


def summarize(layers: Mapping[str, torch.nn.Module], calibration_windows: int | None = None) -> dict[str, object]:
    """Facts for the report: :func:`storage_facts` and on which kernels the layers run
    (each has a ``kernel`` name); then ``calibration_windows`` if the step used any."""
    facts = {**storage_facts(layers), "kernels": dict(Counter(layer.kernel for layer in layers.values()))}
    if calibration_windows is not None:
        facts["calibration_windows"] = calibration_windows
    return facts
