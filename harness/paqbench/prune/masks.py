"""Keep-masks from scores, and applying them to any layer kind.

A score ranks weights (higher = more important); a keep-mask is True where a weight
stays. Counts are exact (``round(sparsity * size)`` per row, per layer, or across
layers), as ``torch.nn.utils.prune`` counts them. Weights an earlier step pruned (their
recorded mask is False) are the first to go and count toward the target, so a weight
pruned once stays pruned and a second pass reaches its own ratio.

Applying a mask: a dense or pruned ``nn.Linear`` gets real zeros and the recorded mask
(:func:`paqbench.layers.set_mask`); a quantized layer has its codes set to the zero
point (``zero_weights``), so the weight dequantizes to exactly 0.0.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from paqbench.layers import get_mask
from paqbench.layers.contract import ZERO_WEIGHTS, as_layer, dequantized_weight, require
from paqbench.prune.nm import is_nm_sparse

#: The float weight ``[out, in]`` a layer computes with (dequantized for a format; a view of
#: the parameter for ``nn.Linear``, do not edit it): the contract's one definition.
current_weight = dequantized_weight


def apply_keep_mask(module: nn.Module, keep: torch.Tensor, name: str = "layer") -> None:
    """Prune ``module`` to ``keep`` (combined with its recorded mask) through the
    contract's ``zero_weights``: real zeros and a recorded mask on an ``nn.Linear``, codes
    at exact zero on a format; a layer without ``zero-weights`` is refused, named."""
    require({name: module}, ZERO_WEIGHTS, "pruning", None)
    as_layer(module, name).zero_weights(keep)


def pruned_count(module: nn.Module) -> int:
    """Weights pruned by the recorded mask (0 when none is recorded)."""
    mask = get_mask(module)
    return 0 if mask is None else int((~mask).sum())


def _prior_scores(scores: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    scores = scores.detach().float().clone()
    if keep is not None:
        scores[~keep.to(device=scores.device, dtype=torch.bool)] = -torch.inf
    return scores


@torch.no_grad()
def keep_lowest_dropped(
    scores: torch.Tensor, sparsity: float, keep: torch.Tensor | None = None, *, per_row: bool = False
) -> torch.Tensor:
    """Keep-mask dropping the ``round(sparsity * size)`` lowest ``scores`` of the whole
    matrix, or of each row when ``per_row`` (Wanda's comparison group). ``keep`` (an
    earlier mask) is respected: those weights go first and count toward the target."""
    scores = _prior_scores(scores, keep)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if per_row:
        n_drop = round(sparsity * scores.shape[1])
        if n_drop:
            drop = torch.topk(scores, n_drop, dim=1, largest=False).indices
            mask.scatter_(1, drop, False)
    else:
        n_drop = round(sparsity * scores.numel())
        if n_drop:
            drop = torch.topk(scores.flatten(), n_drop, largest=False).indices
            mask.view(-1)[drop] = False
    if keep is not None:
        mask &= keep.to(device=mask.device, dtype=torch.bool)
    return mask


@torch.no_grad()
def global_keep_masks(
    scores: Mapping[str, torch.Tensor], sparsity: float, keeps: Mapping[str, torch.Tensor | None]
) -> dict[str, torch.Tensor]:
    """Keep-masks dropping the ``round(sparsity * total)`` lowest scores across all
    layers together (ties at the threshold broken in layer order). Memory: one float32
    copy of every score, on the CPU."""
    flat = {name: _prior_scores(s, keeps.get(name)).flatten().cpu() for name, s in scores.items()}
    total = sum(t.numel() for t in flat.values())
    n_drop = round(sparsity * total)
    masks: dict[str, torch.Tensor] = {}
    if n_drop == 0:
        for name, s in scores.items():
            keep = keeps.get(name)
            masks[name] = torch.ones_like(s, dtype=torch.bool) if keep is None else keep.to(torch.bool).clone()
        return masks
    threshold = torch.kthvalue(torch.cat(list(flat.values())), n_drop).values
    below = {name: int((t < threshold).sum()) for name, t in flat.items()}
    ties_left = n_drop - sum(below.values())
    for name, t in flat.items():
        drop = t < threshold
        if ties_left > 0:
            tied = torch.nonzero(t == threshold).flatten()[:ties_left]
            drop[tied] = True
            ties_left -= tied.numel()
        mask = (~drop).view(scores[name].shape).to(scores[name].device)
        keep = keeps.get(name)
        if keep is not None:
            mask &= keep.to(device=mask.device, dtype=torch.bool)
        masks[name] = mask
    return masks


def pruning_facts(modules: Mapping[str, nn.Module], pattern: object | None = None) -> dict[str, object]:
    """Facts for the report: layers, weights pruned by the recorded masks, the achieved
    sparsity over all targeted weights, and with an N:M ``pattern`` whether every layer
    holds it (checked on the weights the layers compute with)."""
    pruned = sum(pruned_count(module) for module in modules.values())
    total = sum(current_weight_numel(module) for module in modules.values())
    facts: dict[str, object] = {
        "layers": len(modules),
        "pruned_weights": pruned,
        "sparsity": pruned / total if total else 0.0,
    }
    if pattern is not None:
        facts["pattern"] = str(pattern)
        facts["pattern_valid"] = all(
            is_nm_sparse(current_weight(module), pattern.n, pattern.m) for module in modules.values()
        )
    return facts


def current_weight_numel(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.weight.numel()
    return int(module.out_features) * int(module.in_features)
