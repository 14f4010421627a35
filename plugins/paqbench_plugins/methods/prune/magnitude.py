"""Magnitude pruning: zero the smallest |W|, per layer or across layers, unstructured or N:M.

This is the worked example the README's plugin guide mirrors: a pydantic ``Params``
schema, the default targets of the compressed-layer contract, a check that every
target is a layer kind this method handles, and masks recorded so later steps keep
the zeros.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from paqbench import Method, RunContext, hookimpl
from paqbench.blockwise.steps import checked_targets
from paqbench.layers import get_mask
from paqbench.layers.contract import ZERO_WEIGHTS
from paqbench.prune.masks import (
    apply_keep_mask,
    current_weight,
    global_keep_masks,
    keep_lowest_dropped,
    pruning_facts,
)
from paqbench.prune.nm import check_width, nm_keep_mask
from paqbench.prune.params import SparsityParams
from paqbench.text import prose


class MagnitudeParams(SparsityParams):
    scope: Literal["layer", "global"] = Field("layer", description=prose("""
        layer: each targeted layer loses exactly `sparsity` of its weights; global: the smallest |W| across all
        targeted layers together (layers end at different sparsities)
    """))

    @model_validator(mode="after")
    def _pattern_is_per_layer(self) -> MagnitudeParams:
        if self.pattern is not None and self.scope == "global":
            raise ValueError("an N:M pattern is chosen within each row group of each layer; use scope: layer with it")
        return self


class Magnitude(Method):
    name = "magnitude"
    family = "prune"
    description = prose("""
        Magnitude pruning: zero the weights with the smallest |W|. Unstructured with an exact count, per layer (`scope:
        layer`, each layer exactly `sparsity`) or across all targets (`scope: global`), or N:M semi-structured
        (`pattern: '2:4'` zeroes 2 of every 4 consecutive input weights per row). Quantized layers are scored on their
        dequantized weight and their codes set to the zero point. Cost: one top-k per layer (global: one k-th value over
        all targeted weights, 4 bytes each in CPU memory), no calibration.
    """)
    Params = MagnitudeParams
    accepts = frozenset({"dense", "pruned", "quantized"})

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, params: MagnitudeParams, ctx: RunContext) -> dict[str, Any] | None:
        targets = checked_targets(model, params.targets, self, ctx, needs=ZERO_WEIGHTS)
        pattern = params.nm
        if pattern is not None:  # fail before changing anything
            for name, module in targets.items():
                check_width(int(current_weight(module).shape[1]), pattern, repr(name))
        if params.scope == "global":
            scores = {name: current_weight(module).abs().float() for name, module in targets.items()}
            masks = global_keep_masks(scores, params.sparsity, {name: get_mask(m) for name, m in targets.items()})
            del scores
            for name, module in targets.items():
                apply_keep_mask(module, masks.pop(name), name)
        else:
            for name, module in ctx.progress(targets.items(), "magnitude pruning", total=len(targets)):
                scores = current_weight(module).abs().float()
                if pattern is not None:
                    keep = nm_keep_mask(scores, pattern, get_mask(module))
                else:
                    keep = keep_lowest_dropped(scores, params.sparsity, get_mask(module))
                apply_keep_mask(module, keep, name)
        return pruning_facts(targets, pattern)


@hookimpl
def paqbench_register_methods(register):
    register(Magnitude)
