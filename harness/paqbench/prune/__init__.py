"""Unstructured and N:M (semi-structured) pruning algorithms on one weight matrix.

- :mod:`paqbench.prune.masks`: keep-masks from scores (exact counts, per row, per layer
  or across layers) and applying a mask to any layer kind (dense, pruned, quantized).
- :mod:`paqbench.prune.nm`: N:M patterns (``"2:4"``: 2 zeros in every 4 consecutive
  input weights of a row), masks and a validator.
- :mod:`paqbench.prune.wanda`: Wanda's ``|W| * ||X||_2`` scores and their input-norm
  accumulator.
- :mod:`paqbench.prune.sparsegpt`: SparseGPT's OBS pruning with weight update, optionally
  joint with quantization.

Calibration for the layer-wise methods runs through :mod:`paqbench.blockwise.driver`.
"""

from paqbench.prune.masks import apply_keep_mask, current_weight, global_keep_masks, keep_lowest_dropped
from paqbench.prune.nm import NMPattern, is_nm_sparse, nm_keep_mask, parse_nm

__all__ = [
    "NMPattern",
    "apply_keep_mask",
    "current_weight",
    "global_keep_masks",
    "is_nm_sparse",
    "keep_lowest_dropped",
    "nm_keep_mask",
    "parse_nm",
]
