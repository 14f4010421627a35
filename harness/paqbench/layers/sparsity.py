"""Recorded pruning masks.

Unstructured and N:M pruning write real zeros into the weight *and* record the mask as
a non-persistent buffer, so that later steps (another pruning pass, GPTQ, RTN) can keep
exactly those weights at zero. The mask is not saved: on disk the zeros speak for
themselves.
"""

from __future__ import annotations

import torch
from torch import nn

MASK_BUFFER = "paqbench_mask"


def get_mask(module: nn.Module) -> torch.Tensor | None:
    """The boolean keep-mask recorded on ``module`` (True = weight kept), if any."""
    return getattr(module, MASK_BUFFER, None)


@torch.no_grad()
def set_mask(module: nn.Module, keep: torch.Tensor) -> None:
    """Zero the pruned weights of ``module`` and record the mask, combined with any mask
    recorded before (a weight pruned once stays pruned)."""
    weight = module.weight
    if keep.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(keep.shape)} does not match weight {tuple(weight.shape)}")
    keep = keep.to(device=weight.device, dtype=torch.bool)
    previous = get_mask(module)
    if previous is not None:
        keep = keep & previous
    weight.mul_(keep.to(weight.dtype))
    record_mask(module, keep)


def record_mask(module: nn.Module, keep: torch.Tensor) -> None:
    """Record ``keep`` as ``module``'s mask as it is, without touching any weight: for packed
    layers, whose zeros already live in their codes, and for masks sliced by a structured edit."""
    keep = keep.to(torch.bool)
    if get_mask(module) is None:
        module.register_buffer(MASK_BUFFER, keep, persistent=False)
    else:
        setattr(module, MASK_BUFFER, keep)


def sparsity(tensor: torch.Tensor) -> float:
    """Fraction of exact zeros."""
    return 1.0 - torch.count_nonzero(tensor).item() / tensor.numel()
