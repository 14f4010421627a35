"""W8A8 "int8 dynamic": int8 weights (per output channel) and int8 activations (per token,
quantized at run time), with an int8 matmul where the platform has an exact one."""

from __future__ import annotations

from typing import Any

import torch

from paqbench import Method, RunContext, hookimpl
from paqbench.blockwise.steps import replace_targets
from paqbench.quant.params import TargetParams
from paqbench.quant.summary import summarize
from paqbench.quant.w8a8 import Int8DynamicLinear
from paqbench.text import prose


class W8A8Params(TargetParams):
    """Only which layers: the int8 grids have no knob."""


class W8A8(Method):
    name = "w8a8"
    family = "quantize"
    description = prose("""
        Int8 dynamic quantization (W8A8): each targeted Linear becomes an Int8DynamicLinear holding int8 weights with
        one symmetric scale per output channel; at run time every token's activations are quantized to symmetric int8
        and multiplied in int8 with int32 accumulation (torch._int_mm on CUDA, oneDNN int8 on CPUs where it is exact;
        otherwise an exact float emulation of the same integers: `kernel` in the facts says which). Pruned weights stay
        exactly zero. No calibration; cost: one pass over the weights.
    """)
    Params = W8A8Params
    accepts = frozenset({"dense", "pruned"})
    supports_offload = True  # weights reached through paqbench.blockwise.driver

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, params: W8A8Params, ctx: RunContext) -> dict[str, Any] | None:
        return summarize(replace_targets(model, params.targets, self, ctx, _int8_layer))


def _int8_layer(_: str, source: torch.nn.Linear) -> Int8DynamicLinear:
    layer = Int8DynamicLinear.from_linear(source)
    layer.select_kernel(source.weight.device, source.weight.dtype)  # record the path a forward will take
    return layer


@hookimpl
def paqbench_register_methods(register):
    register(W8A8)
