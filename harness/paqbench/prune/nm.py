"""N:M semi-structured sparsity.

Convention (the SparseGPT and Wanda reference code's ``prunen`` / ``prunem``): a pattern
``"N:M"`` zeroes **N** weights in every group of **M** consecutive input columns of each
output row, so its sparsity is ``N / M``. ``"2:4"`` (50%) is the pattern NVIDIA's sparse
tensor cores accelerate (there described as "2 nonzeros in 4", the same 50%); ``"4:8"``
is also 50%; ``"1:4"`` is 25% here, not 75%.

Groups run along the input dimension, per output row: the layout sparse tensor cores
read. A width that ``M`` does not divide is refused rather than given a partial group
that would not be a valid pattern.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class NMPattern:
    """Zero ``n`` of every ``m`` consecutive input weights of a row."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not 0 < self.n < self.m:
            raise ValueError(f"an N:M pattern needs 0 < N < M (N zeros in every M weights), got {self.n}:{self.m}")

    @property
    def sparsity(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_nm(pattern: str) -> NMPattern:
    """``"2:4"`` -> ``NMPattern(2, 4)``; a clear ValueError for anything else."""
    match = _PATTERN.match(str(pattern))
    if not match:
        raise ValueError(f"pattern must look like 'N:M' (e.g. '2:4': 2 zeros in every 4 weights), got {pattern!r}")
    return NMPattern(int(match.group(1)), int(match.group(2)))


def check_width(columns: int, pattern: NMPattern, layer: str = "the layer") -> None:
    """Refuse a width that the pattern's group size does not divide."""
    if columns % pattern.m:
        raise ValueError(
            f"N:M pattern {pattern} needs the input width to be a multiple of {pattern.m}, "
            f"but {layer} has {columns} input columns"
        )


def check_widths(layers: Mapping[str, nn.Module], pattern: NMPattern | None) -> None:
    """Refuse, before any work, the first of ``layers`` whose input width ``pattern``
    does not tile (no pattern: nothing to check)."""
    if pattern is None:
        return
    for name, module in layers.items():
        check_width(int(module.in_features), pattern, repr(name))


@torch.no_grad()
def nm_keep_mask(scores: torch.Tensor, pattern: NMPattern, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask (True = kept) that zeroes, in every group of ``m`` consecutive input
    columns of each row, the ``n`` weights with the lowest ``scores``. Weights already
    pruned (``keep`` False) are the first to go and are never revived, so a group may
    end with more than ``n`` zeros (still a valid pattern)."""
    rows, columns = scores.shape
    check_width(columns, pattern)
    scores = scores.detach().float().clone()
    if keep is not None:
        scores[~keep.to(device=scores.device, dtype=torch.bool)] = -torch.inf
    groups = scores.view(rows, columns // pattern.m, pattern.m)
    drop = torch.topk(groups, pattern.n, dim=-1, largest=False).indices
    mask = torch.ones_like(groups, dtype=torch.bool)
    mask.scatter_(-1, drop, False)
    mask = mask.view(rows, columns)
    if keep is not None:
        mask &= keep.to(device=mask.device, dtype=torch.bool)
    return mask


@torch.no_grad()
def is_nm_sparse(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive input weights of every row holds at least
    ``n`` exact zeros (False when ``m`` does not divide the width)."""
    pattern = NMPattern(n, m)
    rows, columns = weight.shape
    if columns % pattern.m:
        return False
    zeros = (weight.detach() == 0).view(rows, columns // pattern.m, pattern.m).sum(dim=-1)
    return bool((zeros >= pattern.n).all())
