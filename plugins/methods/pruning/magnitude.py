"""Magnitude pruning: zero the smallest |W| in each targeted layer.

This is the worked example the README's plugin guide mirrors: a pydantic ``Params``
schema, the default targets of the compressed-layer contract, a check that every
target is a layer kind this method handles, and masks recorded so later steps keep
the zeros.
"""

from __future__ import annotations

import torch
from pydantic import Field

from paqbench import Method, Params, hookimpl
from paqbench.layers import check_supported, get_mask, select_targets, set_mask


class MagnitudeParams(Params):
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of weights zeroed in each targeted layer")
    targets: str | None = Field(
        None, description="regex over module names; default: the Linear layers inside decoder blocks"
    )


class Magnitude(Method):
    name = "magnitude"
    family = "prune"
    description = (
        "Unstructured magnitude pruning: in each targeted layer, zero the fraction "
        "`sparsity` of weights with the smallest |W| (exact count, layer-wise). Cost: one "
        "top-k per layer, no calibration."
    )
    Params = MagnitudeParams
    accepts = frozenset({"dense", "pruned"})

    @torch.no_grad()
    def apply(self, model, params: MagnitudeParams, ctx):
        targets = select_targets(model, params.targets)
        check_supported(targets, self.accepts, self.name, ctx.current_step)
        pruned = total = 0
        for module in ctx.progress(targets.values(), "magnitude pruning", total=len(targets)):
            weight = module.weight
            n_prune = round(params.sparsity * weight.numel())
            keep = torch.ones_like(weight, dtype=torch.bool)
            if n_prune > 0:
                scores = weight.detach().abs().float()
                previous = get_mask(module)
                if previous is not None:
                    scores[~previous] = -1.0  # already pruned: first to go, never revived
                drop = torch.topk(scores.flatten(), n_prune, largest=False).indices
                keep.view(-1)[drop] = False
            set_mask(module, keep)
            pruned += int((weight == 0).sum())
            total += weight.numel()
        return {"layers": len(targets), "sparsity": pruned / total if total else 0.0}


@hookimpl
def paqbench_register_methods(register):
    register(Magnitude)
