"""Random unstructured pruning: the floor any scoring rule should beat.

As ``torch.nn.utils.prune.random_unstructured``: in each targeted layer, exactly
``round(sparsity * numel)`` weights chosen uniformly at random are zeroed, and the
pruning is permanent (real zeros plus the recorded mask, no reparametrisation). Seeded:
the same seed prunes the same weights.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from paqbench import Method, Params, RunContext, hookimpl
from paqbench.blockwise.steps import checked_targets
from paqbench.layers import get_mask
from paqbench.layers.contract import ZERO_WEIGHTS
from paqbench.prune.masks import apply_keep_mask, keep_lowest_dropped, pruning_facts
from paqbench.text import prose


class RandomParams(Params):
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of weights zeroed in each targeted layer")
    seed: int | None = Field(None, description="random seed; default: the run's seed")
    targets: str | None = Field(
        None, description="regex over module names; default: the Linear layers inside decoder blocks"
    )


class RandomPruning(Method):
    name = "random"
    family = "prune"
    description = prose("""
        Random unstructured pruning (as torch's random_unstructured, made permanent): zero exactly round(sparsity *
        numel) uniformly chosen weights in each targeted layer; weights pruned earlier count toward the target and stay
        pruned. Seeded (`seed`, default the run's seed). Quantized layers have the chosen codes set to the zero point. A
        baseline for scoring rules. Cost: one random draw per layer.
    """)
    Params = RandomParams
    accepts = frozenset({"dense", "pruned", "quantized"})

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, params: RandomParams, ctx: RunContext) -> dict[str, Any] | None:
        targets = checked_targets(model, params.targets, self, ctx, needs=ZERO_WEIGHTS)
        seed = params.seed if params.seed is not None else int(getattr(ctx, "seed", 0) or 0)
        generator = torch.Generator().manual_seed(seed)  # on the CPU: the same draw on every device
        for name, module in ctx.progress(targets.items(), "random pruning", total=len(targets)):
            scores = torch.rand((module.out_features, module.in_features), generator=generator)
            keep = keep_lowest_dropped(scores, params.sparsity, _cpu(get_mask(module)))
            apply_keep_mask(module, keep, name)
        return {**pruning_facts(targets), "seed": seed}


def _cpu(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else mask.cpu()


@hookimpl
def paqbench_register_methods(register):
    register(RandomPruning)
