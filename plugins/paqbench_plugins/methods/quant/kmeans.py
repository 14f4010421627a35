"""k-means: non-uniform weight quantization with learned lookup tables.

Each targeted Linear becomes a :class:`paqbench.quant.lut.LUTLinear`: per output channel
(or per group of input columns) a table of ``2**bits`` float16 values fitted by Lloyd
iterations (k-means in one dimension), started from the RTN grid so the result is never
worse than RTN on the squared error it minimises. With ``weighted`` each weight's error
is weighted by the second moment ``E[x^2]`` of its input column over the calibration
windows (SqueezeLLM's sensitivity-weighted k-means, with the diagonal input Hessian in
place of the Fisher information). One table entry is pinned to exactly 0.0, so pruned
weights stay zero and the layer can be pruned again afterwards.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from paqbench import Method, Params, RunContext, hookimpl
from paqbench.blockwise.offload import offload_of
from paqbench.blockwise.steps import checked_targets, replace_each
from paqbench.quant.codebook import input_second_moments
from paqbench.quant.lut import LUTLinear
from paqbench.quant.params import Targets
from paqbench.quant.summary import summarize
from paqbench.text import prose


class KMeansParams(Params):
    bits: Literal[2, 3, 4] = Field(4, description="bits per weight code; each table has 2**bits entries")
    granularity: Literal["channel", "group"] = Field(
        "channel", description="one table per output channel, or per (channel, group of `group_size` inputs)"
    )
    group_size: int = Field(
        128, gt=0, description="input columns per table with granularity: group (a shorter last group is allowed); "
        "each table costs 16 * 2**bits bits; ignored with granularity: channel"
    )
    iterations: int = Field(20, ge=0, description="Lloyd iterations (stops early once no code changes)")
    weighted: bool = Field(
        False, description="weigh each weight's squared error by E[x^2] of its input column over the calibration "
        "windows (one forward of the model over them)"
    )
    targets: Targets = None

    @property
    def table_group_size(self) -> int:
        return -1 if self.granularity == "channel" else self.group_size


class KMeans(Method):
    name = "kmeans"
    family = "quantize"
    description = prose("""
        Non-uniform quantization with learned lookup tables: per output channel (or per group of `group_size` inputs) a
        table of 2**`bits` fp16 values fitted by Lloyd iterations from the RTN grid (never worse than RTN in squared
        error), optionally `weighted` by the calibration inputs' E[x^2] per column (SqueezeLLM-style). One entry is
        pinned to 0.0: pruned weights stay exactly zero. Storage: bits + 16*2**bits/group bits per weight (4.44 at 4
        bits per channel on 576 columns). Cost: two Lloyd runs of `iterations` passes over each weight matrix (about 1.5
        s for a 1536x576 layer on one CPU core, 3-5 minutes for SmolLM2-135M); weighted adds one forward over the
        calibration windows.
    """)
    Params = KMeansParams
    accepts = frozenset({"dense", "pruned"})
    needs_calibration = True  # weighted only
    supports_offload = True  # weights reached through paqbench.blockwise.driver

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, params: KMeansParams, ctx: RunContext) -> dict[str, Any] | None:
        targets = checked_targets(model, params.targets, self, ctx)
        if params.weighted and offload_of(model) is not None:
            raise ValueError("kmeans with weighted: true runs the whole model at once and cannot run with "
                             "model.offload: disk; set weighted: false")
        importance = (input_second_moments(model, targets, ctx.calibration_batches(), ctx.progress)
                      if params.weighted else None)
        names = list(targets)
        del targets  # hold no reference to a replaced float layer

        def convert(name: str, linear: torch.nn.Linear) -> LUTLinear:
            return LUTLinear.from_linear(
                linear, params.bits, params.table_group_size,
                importance=None if importance is None else importance.pop(name), iterations=params.iterations,
            )

        layers = replace_each(model, names, ctx, self.name, convert)
        return summarize(layers, len(ctx.calibration_batches()) if params.weighted else None)


@hookimpl
def paqbench_register_methods(register):
    register(KMeans)
