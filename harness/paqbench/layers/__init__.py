"""The compressed-layer contract: which layers a method targets, what kind each layer
is, and how pruning masks are recorded so that later steps keep zeros zero."""

from paqbench.layers.contract import (
    CompressedLayer,
    LinearAdapter,
    as_layer,
    capabilities,
    dequantized_weight,
    kernels_in_use,
    require,
)
from paqbench.layers.kinds import UnsupportedLayerError, check_supported, layer_kind
from paqbench.layers.sparsity import get_mask, set_mask
from paqbench.layers.targets import decoder_blocks, select_targets

__all__ = [
    "CompressedLayer",
    "LinearAdapter",
    "UnsupportedLayerError",
    "as_layer",
    "capabilities",
    "check_supported",
    "decoder_blocks",
    "dequantized_weight",
    "get_mask",
    "kernels_in_use",
    "layer_kind",
    "require",
    "select_targets",
    "set_mask",
]
