"""Wanda (Sun et al., 2023): prune by ``|W_ij| * ||X_j||_2``.

A weight's score is its magnitude times the L2 norm of its input feature over the
calibration tokens, so a small weight on a large activation survives. The paper
compares scores within each output row (``compare: row``); comparing across the whole
layer is its ablation. No weight update, no Hessian: only one float per input column.
"""

from __future__ import annotations

import torch


class InputNormAccumulator:
    """Running ``sum over tokens of x_j^2`` for every input column ``j``, in float32."""

    def __init__(self, columns: int, device: torch.device | str | None = None) -> None:
        self.squared = torch.zeros(columns, dtype=torch.float32, device=device)
        self.rows = 0

    @torch.no_grad()
    def add(self, inputs: torch.Tensor) -> None:
        """Add a batch of layer inputs ``[..., columns]``."""
        x = inputs.reshape(-1, inputs.shape[-1]).to(device=self.squared.device, dtype=torch.float32)
        self.squared.add_(x.pow(2).sum(dim=0))
        self.rows += x.shape[0]

    @property
    def norms(self) -> torch.Tensor:
        """``||X_j||_2`` per input column."""
        return self.squared.sqrt()


@torch.no_grad()
def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """``|W| * ||X_j||_2`` ``[out, in]`` in float32."""
    weight = weight.detach().float()
    if input_norms.shape != (weight.shape[1],):
        raise ValueError(f"input norms {tuple(input_norms.shape)} do not match weight {tuple(weight.shape)}")
    return weight.abs() * input_norms.to(device=weight.device, dtype=torch.float32).unsqueeze(0)
