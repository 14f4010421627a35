"""The compressed-layer contract: which layers a method targets, what kind each layer
is, and how pruning masks are recorded so that later steps keep zeros zero."""

from paqbench.layers.kinds import UnsupportedLayerError, check_supported, kernels_in_use, layer_kind
from paqbench.layers.sparsity import get_mask, set_mask
from paqbench.layers.targets import decoder_blocks, select_targets

__all__ = [
    "UnsupportedLayerError",
    "check_supported",
    "decoder_blocks",
    "get_mask",
    "kernels_in_use",
    "layer_kind",
    "select_targets",
    "set_mask",
]
