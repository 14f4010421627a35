"""VQ: vector quantization of weights with a small k-means codebook.

Each targeted Linear becomes a :class:`paqbench.quant.vq.VQLinear`: its rows are cut
into vectors of ``dim`` consecutive input weights, a codebook of ``2**codebook_bits``
float16 vectors is fitted by k-means (k-means++ seeding from the run's seed, Lloyd
iterations) per layer or per group of ``rows_per_codebook`` rows, and each vector
stores the index of its nearest codeword: ``codebook_bits / dim`` bits per weight plus
the codebooks.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field

from paqbench import Method, Params, RunContext, hookimpl
from paqbench.blockwise.steps import checked_targets, replace_each
from paqbench.quant.codebook import input_second_moments
from paqbench.quant.params import Targets, refuse_zero
from paqbench.quant.summary import summarize
from paqbench.quant.vq import VQLinear
from paqbench.text import prose


class VQParams(Params):
    dim: int = Field(2, ge=1, le=16, description="consecutive input weights per vector (must divide each width)")
    codebook_bits: int = Field(
        8, ge=1, le=8, description="bits per vector index: 2**codebook_bits codewords (bits per weight: "
        "codebook_bits / dim, plus the codebooks)"
    )
    rows_per_codebook: Annotated[
        int, refuse_zero("rows_per_codebook must be positive, or -1 for one codebook per layer")
    ] = Field(
        -1, ge=-1, description="output rows sharing one codebook; -1: one codebook per layer"
    )
    iterations: int = Field(10, ge=0, description="Lloyd iterations after k-means++ seeding (stops early)")
    weighted: bool = Field(
        False, description="weigh each coordinate's squared error by E[x^2] of its input column over the "
        "calibration windows (one forward of the model over them)"
    )
    targets: Targets = None


class VQ(Method):
    name = "vq"
    family = "quantize"
    description = prose("""
        Vector quantization: rows cut into vectors of `dim` consecutive input weights, one codebook of
        2**`codebook_bits` fp16 vectors per layer (or per `rows_per_codebook` rows) fitted by k-means (k-means++ seeded
        by the run seed, `iterations` Lloyd steps, optionally `weighted` by calibration E[x^2]); each vector stores its
        codeword index. Bits per weight: codebook_bits/dim + codebooks (4.04 at dim 2, 8 bits on 576x1536). Pruned
        weights (recorded mask) stay exactly zero through a 1-bit keep bitmap (+1 bit per weight). Cost: O(vectors x
        codewords) per Lloyd iteration; about 1 s per iteration for a 576x1536 layer on one CPU core, far less on a GPU.
    """)
    Params = VQParams
    accepts = frozenset({"dense", "pruned"})
    needs_calibration = True  # weighted only

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, params: VQParams, ctx: RunContext) -> dict[str, Any] | None:
        targets = checked_targets(model, params.targets, self, ctx)
        for name, module in targets.items():  # fail before changing anything
            if module.in_features % params.dim:
                raise ValueError(
                    f"step {ctx.current_step}: vectors of dim={params.dim} do not tile the {module.in_features} "
                    f"input columns of layer {name!r}; choose a dim that divides every targeted width, or narrow "
                    "`targets`"
                )
        importance = (input_second_moments(model, targets, ctx.calibration_batches(), ctx.progress)
                      if params.weighted else None)
        names = list(targets)
        del targets  # hold no reference to a replaced float layer
        numbers = {name: number for number, name in enumerate(names)}  # each layer's seed offset

        def convert(name: str, linear: torch.nn.Linear) -> VQLinear:
            return VQLinear.from_linear(
                linear, params.codebook_bits, params.dim, params.rows_per_codebook,
                importance=None if importance is None else importance.pop(name), iterations=params.iterations,
                seed=ctx.seed * 100003 + numbers[name],
            )

        layers = replace_each(model, names, ctx, self.name, convert)
        return summarize(layers, len(ctx.calibration_batches()) if params.weighted else None)


@hookimpl
def paqbench_register_methods(register):
    register(VQ)
