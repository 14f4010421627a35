"""The ``quantization_config`` entry of config.json, built with compressed-tensors' own
configuration classes (what transformers' CompressedTensorsHfQuantizer and vLLM read)."""

from __future__ import annotations

from typing import Any

from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

from paqbench.export.compressed.packed import Scheme


def quantization_config(schemes: dict[Scheme, list[str]]) -> dict[str, Any]:
    """One config group per weight scheme, targeting its layers by exact module name."""
    groups = {}
    for index, (scheme, names) in enumerate(sorted(schemes.items(), key=lambda item: str(item[0]))):
        weights = QuantizationArgs(
            num_bits=scheme.bits, type="int", symmetric=scheme.symmetric, strategy=scheme.strategy,
            group_size=scheme.group_size, dynamic=False,
        )
        groups[f"group_{index}"] = QuantizationScheme(targets=sorted(names), weights=weights)
    config = QuantizationConfig(
        config_groups=groups, format="pack-quantized", quantization_status="compressed", ignore=[],
    )
    return config.to_dict()
