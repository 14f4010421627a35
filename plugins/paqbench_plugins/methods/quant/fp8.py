"""FP8 (E4M3): one-byte float weights per channel or per tensor, with dynamic FP8
activations per token or per tensor, or weight-only."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from paqbench import Method, Params, RunContext, hookimpl
from paqbench.blockwise.steps import replace_targets
from paqbench.quant.fp8 import FP8Linear
from paqbench.quant.params import Targets
from paqbench.quant.summary import storage_facts
from paqbench.text import prose


class FP8Params(Params):
    weight_scale: Literal["per-channel", "per-tensor"] = Field(
        "per-channel", description="one float32 weight scale per output channel, or one for the whole tensor"
    )
    activations: Literal["per-token", "per-tensor", "none"] = Field(
        "per-token", description="dynamic E4M3 activations with a scale per token or per call; none: weight-only"
    )
    targets: Targets = None


class FP8(Method):
    name = "fp8"
    family = "quantize"
    description = prose("""
        FP8 E4M3 quantization: each targeted Linear becomes an FP8Linear storing its weight as float8_e4m3fn (one byte
        per weight) with a float32 scale per output channel (or per tensor); activations are rounded to E4M3 at run time
        with a scale per token (default) or per tensor, or left in float (`activations: none`, weight-only). Forward:
        exact float32 emulation (torch._scaled_mm on CUDA >= sm89, untested on hardware here). Pruned weights stay
        exactly zero. No calibration; cost: one pass over the weights.
    """)
    Params = FP8Params
    accepts = frozenset({"dense", "pruned"})
    supports_offload = True  # weights reached through paqbench.blockwise.driver

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, params: FP8Params, ctx: RunContext) -> dict[str, object]:
        per_channel = params.weight_scale == "per-channel"
        layers = replace_targets(model, params.targets, self, ctx,
                                 lambda _, linear: FP8Linear.from_linear(linear, params.activations, per_channel))
        return {**storage_facts(layers), "activations": params.activations, "weight_scale": params.weight_scale}


@hookimpl
def paqbench_register_methods(register):
    register(FP8)
