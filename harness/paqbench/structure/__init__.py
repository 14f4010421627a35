"""Dependency-aware structured pruning: whole MLP channels, whole KV groups, whole blocks.

Unlike :mod:`paqbench.layers.structured` (one layer at a time, behind gather/scatter
wrappers), these edits keep every tensor of a coupled group consistent, so the model
simply *is* a smaller model: smaller ``nn.Linear`` weights (or sliced quantized codes),
fewer heads, fewer blocks, and a config that says so.

* :mod:`~paqbench.structure.blocks` finds the projections of Llama-like blocks.
* :mod:`~paqbench.structure.importance` scores channel and KV groups (L1, L2, Taylor).
* :mod:`~paqbench.structure.shrink` slices the coupled projections.
* :mod:`~paqbench.structure.config` writes the new sizes to the config and rebuilds them
  on load (:func:`paqbench.models.saved.load_structured` loads a saved model).
* :mod:`~paqbench.structure.drop` scores and removes whole decoder blocks. It is not
  imported here: it drives blocks through :mod:`paqbench.quant.sequential`, and
  :mod:`paqbench.quant.linear` imports this package to rebuild shrunk blocks on load.
"""

from paqbench.structure.blocks import BlockParts, block_parts
from paqbench.structure.config import (
    STRUCTURE_KEY,
    BlockSizes,
    block_sizes,
    rebuild_blocks,
    record_structure,
)

__all__ = [
    "STRUCTURE_KEY",
    "BlockParts",
    "BlockSizes",
    "block_parts",
    "block_sizes",
    "rebuild_blocks",
    "record_structure",
]
