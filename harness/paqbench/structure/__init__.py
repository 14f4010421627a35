"""Dependency-aware structured pruning: whole MLP channels, whole KV groups, whole blocks.

Unlike :mod:`paqbench.layers.structured` (one layer at a time, behind gather/scatter
wrappers), these edits keep every tensor of a coupled group consistent, so the model
simply *is* a smaller model: smaller ``nn.Linear`` weights (or sliced quantized codes),
fewer heads, fewer blocks, and a config that says so.

* :mod:`~paqbench.structure.blocks` finds the projections of Llama-like blocks.
* :mod:`~paqbench.structure.importance` scores channel and KV groups (L1, L2, Taylor).
* :mod:`~paqbench.structure.shrink` slices the coupled projections.
* :mod:`~paqbench.structure.config` writes the new sizes to the config and rebuilds them
  on load (:func:`load_structured`).
* :mod:`~paqbench.structure.drop` scores and removes whole decoder blocks.
"""

from paqbench.structure.blocks import BlockParts, block_parts
from paqbench.structure.config import (
    STRUCTURE_KEY,
    BlockSizes,
    block_sizes,
    load_structured,
    rebuild_blocks,
    record_structure,
)
from paqbench.structure.drop import angular_distances, block_influence, drop_blocks

__all__ = [
    "STRUCTURE_KEY",
    "BlockParts",
    "BlockSizes",
    "angular_distances",
    "block_influence",
    "block_parts",
    "block_sizes",
    "drop_blocks",
    "load_structured",
    "rebuild_blocks",
    "record_structure",
]
