"""RTN: round-to-nearest min-max weight quantization, per channel or group-wise.

The baseline every quantization paper compares against: each group of weights gets the
uniform grid spanning its min and max (widened to include 0), and every weight goes to
its nearest grid point. No calibration data. Pruned weights (a recorded mask, or exact
zeros) stay exactly zero.
"""

from __future__ import annotations

from typing import Any

import torch

from paqbench import Method, RunContext, hookimpl
from paqbench.blockwise.steps import replace_targets
from paqbench.quant.linear import QuantizedLinear
from paqbench.quant.params import WeightQuantParams
from paqbench.quant.summary import summarize
from paqbench.text import prose


class RTN(Method):
    name = "rtn"
    family = "quantize"
    description = prose("""
        Round-to-nearest weight quantization: min-max grid per group of `group_size` input columns (shorter last group
        allowed; -1 = per output channel), `bits` in {2,3,4,8}, asymmetric or `symmetric`. Replaces each targeted Linear
        by a QuantizedLinear holding packed codes, so checkpoint bytes really shrink. Pruned weights stay exactly zero.
        Cost: one pass over the weights, no calibration (seconds for a 1B model).
    """)
    Params = WeightQuantParams
    accepts = frozenset({"dense", "pruned"})
    supports_offload = True  # weights reached through paqbench.blockwise.driver

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, params: WeightQuantParams, ctx: RunContext) -> dict[str, Any] | None:
        config = params.quant_config()
        return summarize(replace_targets(model, params.targets, self, ctx,
                                         lambda _, linear: QuantizedLinear.from_linear(linear, config)))


@hookimpl
def paqbench_register_methods(register):
    register(RTN)
