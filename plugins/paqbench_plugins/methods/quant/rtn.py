"""RTN: round-to-nearest min-max weight quantization, per channel or group-wise.

The baseline every quantization paper compares against: each group of weights gets the
uniform grid spanning its min and max (widened to include 0), and every weight goes to
its nearest grid point. No calibration data. Pruned weights (a recorded mask, or exact
zeros) stay exactly zero.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import torch
from pydantic import Field, field_validator

from paqbench import Method, Params, hookimpl
from paqbench.blockwise.driver import each_target
from paqbench.layers import check_supported, select_targets
from paqbench.quant.linear import QuantizedLinear, replace_module
from paqbench.quant.quantizer import QuantConfig


class WeightQuantParams(Params):
    """The grid shared by weight-only quantization methods."""

    bits: Literal[2, 3, 4, 8] = Field(4, description="bits per weight code (2, 3, 4 or 8)")
    group_size: int = Field(
        128, ge=-1, description="input columns sharing one scale and zero point; -1: one per output channel. "
        "A width it does not divide gets a shorter last group"
    )
    symmetric: bool = Field(False, description="symmetric grid (zero point at the mid code) instead of min-max")
    targets: str | None = Field(
        None, description="regex over module names; default: the Linear layers inside decoder blocks"
    )

    @field_validator("group_size")
    @classmethod
    def _group_size_not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("group_size must be positive, or -1 for one group per output channel")
        return value

    def quant_config(self) -> QuantConfig:
        return QuantConfig(bits=self.bits, group_size=self.group_size, symmetric=self.symmetric)


def summarize(layers: dict[str, QuantizedLinear]) -> dict[str, object]:
    """Facts for the report: how many layers, at what bits per weight, on which kernels."""
    weights = sum(layer.out_features * layer.in_features for layer in layers.values())
    bits = sum(layer.paqbench_storage_bits() for layer in layers.values())
    return {
        "layers": len(layers),
        "bits_per_weight": bits / weights if weights else 0.0,
        "kernels": dict(Counter(layer.kernel for layer in layers.values())),
    }


class RTN(Method):
    name = "rtn"
    family = "quantize"
    description = (
        "Round-to-nearest weight quantization: min-max grid per group of `group_size` "
        "input columns (shorter last group allowed; -1 = per output channel), `bits` in "
        "{2,3,4,8}, asymmetric or `symmetric`. Replaces each targeted Linear by a "
        "QuantizedLinear holding packed codes, so checkpoint bytes really shrink. Pruned "
        "weights stay exactly zero. Cost: one pass over the weights, no calibration "
        "(seconds for a 1B model)."
    )
    Params = WeightQuantParams
    accepts = frozenset({"dense", "pruned"})

    @torch.no_grad()
    def apply(self, model, params: WeightQuantParams, ctx):
        config = params.quant_config()
        targets = select_targets(model, params.targets)
        check_supported(targets, self.accepts, self.name, ctx.current_step)
        names = list(targets)
        del targets  # hold no reference to a replaced float layer: its memory is freed as we go
        layers: dict[str, QuantizedLinear] = {}
        for name, linear in each_target(model, names, ctx.progress, "rtn"):
            layer = QuantizedLinear.from_linear(linear, config)
            replace_module(model, name, layer)
            layers[name] = layer
        return summarize(layers)


@hookimpl
def paqbench_register_methods(register):
    register(RTN)
