"""HQQ: data-free half-quadratic quantization (Badri & Shaji 2023) into a QuantizedLinear.

Optimizes each group's zero point against an lp-norm (p < 1) error model by proximal
iterations, without calibration data; see :mod:`paqbench.quant.hqq` for the algorithm and
how its float zero is put on paqbench's integer grid.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from paqbench import Method, Params, RunContext, hookimpl
from paqbench.blockwise.steps import replace_targets
from paqbench.layers import get_mask
from paqbench.quant.hqq import HQQConfig, quantize_hqq
from paqbench.quant.linear import QuantizedLinear
from paqbench.quant.params import GroupSize, Targets
from paqbench.quant.quantizer import QuantConfig, keep_mask
from paqbench.quant.summary import summarize
from paqbench.text import prose


class HQQParams(Params):
    bits: Literal[2, 3, 4, 5, 6, 7, 8] = Field(4, description="bits per weight code (2 to 8)")
    group_size: GroupSize = 128
    lp_norm: float = Field(0.7, gt=0.0, le=1.0, description="p of the lp-norm error model (p < 1: sparse errors)")
    beta: float = Field(10.0, gt=0.0, description="initial weight of the quadratic (half-quadratic) term")
    kappa: float = Field(1.01, ge=1.0, description="beta grows by this factor every iteration")
    iterations: int = Field(20, ge=1, description="most proximal iterations (stops early when no group improves)")
    targets: Targets = None

    def quant_config(self) -> QuantConfig:
        return QuantConfig(bits=self.bits, group_size=self.group_size, symmetric=False)

    def solver(self) -> HQQConfig:
        return HQQConfig(lp_norm=self.lp_norm, beta=self.beta, kappa=self.kappa, iterations=self.iterations)


class HQQ(Method):
    name = "hqq"
    family = "quantize"
    description = prose("""
        Half-quadratic quantization (HQQ, data-free): asymmetric grid per group of `group_size` input columns, `bits`
        2-8; starting from the min-max grid, each group's zero point is optimized against an lp-norm (p<1) error by
        proximal iterations, then rounded to an integer code and the scale refitted by least squares; a group keeps the
        RTN grid where HQQ's would not lower its error. Stored as a packed QuantizedLinear (same kernels, storage and
        export as rtn). Pruned weights stay exactly zero. No calibration; cost: up to 20 vectorized iterations over the
        weights (minutes for a 135M model on a 2-core CPU).
    """)
    Params = HQQParams
    accepts = frozenset({"dense", "pruned"})
    supports_offload = True  # weights reached through paqbench.blockwise.driver

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, params: HQQParams, ctx: RunContext) -> dict[str, object]:
        config, solver = params.quant_config(), params.solver()
        counts = [0, 0]  # groups, groups that kept HQQ's grid

        def convert(_: str, linear: torch.nn.Linear) -> QuantizedLinear:
            result = quantize_hqq(linear.weight, config, keep_mask(linear), solver)
            counts[0] += result.groups
            counts[1] += result.hqq_groups
            return QuantizedLinear.from_quantized(result.quantized, linear.bias, get_mask(linear),
                                                  dtype=linear.weight.dtype)

        facts = summarize(replace_targets(model, params.targets, self, ctx, convert))
        facts["hqq_group_fraction"] = counts[1] / counts[0] if counts[0] else 0.0
        return facts


@hookimpl
def paqbench_register_methods(register):
    register(HQQ)
