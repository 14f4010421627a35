"""Checking the index of a structured edit (``select_input_features`` / ``select_output_features``)."""

from __future__ import annotations

import torch


def check_feature_index(index: torch.Tensor, size: int, what: str, device: torch.device) -> torch.Tensor:
    """``index`` as a 1-D int64 tensor on ``device``, refused with a clear error when it is
    not integer, empty or out of range for a layer with ``size`` ``what`` features."""
    index = torch.as_tensor(index, device=device)
    if index.dim() != 1 or index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{what} index must be a 1-D integer tensor, got {index.dtype} of shape {tuple(index.shape)}")
    if index.numel() == 0:
        raise ValueError(f"selecting no {what} features would leave an empty layer")
    if int(index.min()) < 0 or int(index.max()) >= size:
        raise IndexError(f"{what} index out of range for {size} features")
    return index.long()
