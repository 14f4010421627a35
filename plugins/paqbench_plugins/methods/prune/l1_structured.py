"""L1 (or L2) structured pruning of linear layers along the input or the output dimension.

The FastLlama seed study pruned each linear layer with
``torch.nn.utils.prune.ln_structured(n=1)``: whole input columns (``dim=1``) or output
rows (``dim=0``) with the smallest norm. There the weights were only masked; here the
layer really shrinks (see :mod:`paqbench.layers.structured`): the smaller weight is what
is stored, counted and multiplied.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

import torch
from pydantic import Field

from paqbench import Method, Params, RunContext, hookimpl
from paqbench.blockwise.steps import checked_targets
from paqbench.layers import dequantized_weight
from paqbench.layers.contract import SLICE_INPUTS, SLICE_OUTPUTS
from paqbench.layers.structured import install, kept_count, prune_channels, select_channels
from paqbench.measure.counting import count_parameters
from paqbench.text import prose


class L1StructuredParams(Params):
    ratio: float = Field(
        0.1, ge=0.0, lt=1.0,
        description="fraction of each targeted layer's (current) channels removed",
    )
    dim: Literal["input", "output"] = Field(
        "input",
        description="input: remove weight columns (the layer reads fewer features, output "
        "shape kept); output: remove weight rows (removed output channels are 0)",
    )
    targets: str | None = Field(
        None,
        description="regex over module names; default: the Linear layers inside decoder blocks",
    )
    norm: Literal["l1", "l2"] = Field(
        "l1", description="channel score: L1 or L2 norm of the channel's weights"
    )
    multiple_of: int = Field(
        1, ge=1,
        description="round each pruned width down to a multiple of this; 8 keeps fp16/bf16 "
        "GPU matmuls on tensor cores (unaligned widths ran 4-6x slower on an H100); "
        "1: the exact ln_structured count",
    )


class L1Structured(Method):
    name = "l1-structured"
    family = "prune"
    description = prose("""
        Structured pruning by channel norm, as torch's ln_structured (n=1; n=2 with norm: l2): in each targeted layer
        keep the width - round(ratio*width) input columns (dim: input) or output rows (dim: output) with the largest
        norm, and really shrink the layer: input pruning gathers the kept features and runs the smaller matmul; output
        pruning computes the kept rows and scatters them into zeros (removed outputs are 0, bias included). The smaller
        layer sits inside a wrapper under `<name>.layer`, where later steps find it. Quantized layers are scored on
        their dequantized weight and their codes sliced. `multiple_of: 8` rounds pruned widths down for GPU tensor
        cores. Parameters and checkpoint bytes fall; latency does not (each layer adds a gather or scatter of its
        activation). Cost: one norm and top-k per layer, no calibration.
    """)
    Params = L1StructuredParams
    accepts = frozenset({"dense", "pruned", "quantized"})

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, params: L1StructuredParams, ctx: RunContext) -> dict[str, Any]:
        needs = SLICE_INPUTS if params.dim == "input" else SLICE_OUTPUTS
        targets = checked_targets(model, params.targets, self, ctx, needs)  # fail before changing anything
        for name, module in targets.items():
            width = getattr(module, "in_features" if params.dim == "input" else "out_features", None)
            if width is not None and kept_count(width, params.ratio, params.multiple_of) == 0:
                raise ValueError(
                    f"ratio {params.ratio} would remove all {width} {params.dim} channels of "
                    f"{name!r}; lower `ratio` or narrow `targets`"
                )
        params_before = count_parameters(model)[0]
        weights_before = weights_after = 0
        changed = 0
        # kept channels per layer, summarised by projection name and width (the count is
        # a function of the width and the ratio, so this loses nothing)
        kept: dict[tuple[str, int, int], int] = defaultdict(int)
        steps = ctx.progress(targets.items(), "l1-structured pruning", total=len(targets))
        for name, module in steps:
            weight = dequantized_weight(module, name, ctx.current_step)
            out_features, in_features = weight.shape
            channels = in_features if params.dim == "input" else out_features
            keep = kept_count(channels, params.ratio, params.multiple_of)
            kept[(_short_name(name), channels, keep)] += 1
            weights_before += weight.numel()
            weights_after += weight.numel() // channels * keep
            if keep == channels:
                continue  # nothing to remove: the layer stays exactly as it was
            index = select_channels(
                weight, params.dim, params.ratio, params.norm, params.multiple_of
            )
            del weight
            shape = (out_features, in_features)
            install(model, name, prune_channels(module, index, params.dim, shape))
            changed += 1
        params_after = count_parameters(model)[0]
        return {
            "dim": params.dim,
            "norm": params.norm,
            "multiple_of": params.multiple_of,
            "layers": len(targets),
            "layers_pruned": changed,
            "kept_channels": [
                {"layer": short, "channels": channels, "kept": keep, "layers": count}
                for (short, channels, keep), count in kept.items()
            ],
            "target_weights_before": weights_before,
            "target_weights_after": weights_after,
            "params_before": params_before,
            "params_after": params_after,
        }


def _short_name(name: str) -> str:
    """``model.layers.3.mlp.down_proj`` -> ``mlp.down_proj`` (the wrapper's ``.layer``
    suffix of an already pruned layer dropped)."""
    parts = [p for p in name.split(".") if not p.isdigit() and p != "layer"]
    return ".".join(parts[-2:])


@hookimpl
def paqbench_register_methods(register):
    register(L1Structured)
