"""The ``quantization_config`` entry of config.json, built with compressed-tensors' own
configuration classes (what transformers' CompressedTensorsHfQuantizer and vLLM read)."""

from __future__ import annotations

from typing import Any, Protocol

from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme


class WeightScheme(Protocol):
    """A layer scheme the writer groups by: its weights, its activations and its format."""

    format: str

    def weight_args(self) -> QuantizationArgs: ...

    def input_args(self) -> QuantizationArgs | None: ...


def quantization_config(schemes: dict[Any, list[str]]) -> dict[str, Any]:
    """One config group per scheme, targeting its layers by exact module name; one
    format for the file when all groups share it, else ``mixed-precision`` with each
    group's own."""
    formats = {scheme.format for scheme in schemes}
    mixed = len(formats) > 1
    groups = {}
    for index, (scheme, names) in enumerate(sorted(schemes.items(), key=lambda item: str(item[0]))):
        groups[f"group_{index}"] = QuantizationScheme(
            targets=sorted(names), weights=scheme.weight_args(), input_activations=scheme.input_args(),
            format=scheme.format if mixed else None,
        )
    config = QuantizationConfig(
        config_groups=groups, format="mixed-precision" if mixed else formats.pop(),
        quantization_status="compressed", ignore=[],
    )
    return config.to_dict()
