"""NF4: 4-bit NormalFloat with blockwise absmax and double quantization (QLoRA).

Each targeted Linear becomes a :class:`paqbench.quant.nf4.NF4Linear`: 4-bit indices
into the 16 NormalFloat values (bitsandbytes' exact table), one absmax per block of
``block_size`` input weights, and with ``double_quant`` those absmax constants stored in
8 bits (mean offset, one fp32 scale per 256). No calibration data. Pruned weights
(a recorded mask, or exact zeros) take code 7, which is exactly 0.0.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from paqbench import Method, Params, RunContext, hookimpl
from paqbench.blockwise.steps import replace_targets
from paqbench.quant.nf4 import NF4Linear
from paqbench.quant.params import Targets
from paqbench.quant.summary import summarize
from paqbench.text import prose


class NF4Params(Params):
    block_size: int = Field(
        64, ge=2, description="input weights sharing one absmax (QLoRA: 64); a width it does not divide gets a "
        "shorter last block"
    )
    double_quant: bool = Field(
        True, description="store the absmax constants in 8 bits (mean offset, fp32 scale per `dq_block`): "
        "4.127 instead of 4.5 bits per weight at block 64"
    )
    dq_block: int = Field(256, ge=1, description="absmax constants sharing one second-level fp32 scale")
    targets: Targets = None


class NF4(Method):
    name = "nf4"
    family = "quantize"
    description = prose("""
        NF4 (QLoRA, Dettmers et al. 2023): 4-bit NormalFloat codes (bitsandbytes' table, code 7 = 0.0) times a blockwise
        absmax (`block_size` 64), with `double_quant` of the absmax constants (8-bit dynamic map, mean offset, fp32
        scale per `dq_block` 256): about 4.127 bits per weight plus index overhead. Replaces each targeted Linear by an
        NF4Linear holding packed codes; pruned weights stay exactly zero. Forward: dequantize + matmul, or bitsandbytes'
        NF4 kernel on CUDA when it is installed and agrees with the reference. Cost: one pass over the weights, no
        calibration (seconds for a 1B model).
    """)
    Params = NF4Params
    accepts = frozenset({"dense", "pruned"})
    supports_offload = True  # weights reached through paqbench.blockwise.driver

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, params: NF4Params, ctx: RunContext) -> dict[str, Any] | None:
        def convert(_: str, linear: torch.nn.Linear) -> NF4Linear:
            return NF4Linear.from_linear(linear, params.block_size, params.double_quant, params.dq_block)

        return summarize(replace_targets(model, params.targets, self, ctx, convert))


@hookimpl
def paqbench_register_methods(register):
    register(NF4)
