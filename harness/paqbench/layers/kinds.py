"""Layer kinds. A method declares which it accepts; meeting any other kind is an
error naming the layer and the step, never a silent skip."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from paqbench.layers.sparsity import get_mask

#: A module class that implements the contract itself sets this class attribute to
#: its kind (e.g. the quantized linear layer sets ``"quantized"``).
KIND_ATTRIBUTE = "paqbench_layer_kind"


class UnsupportedLayerError(TypeError):
    """A method met a layer kind it cannot handle."""


def layer_kind(module: nn.Module) -> str:
    """``dense``, ``pruned`` (a Linear with a recorded mask), or the kind a compressed
    module declares; ``other`` for anything else."""
    declared = getattr(module, KIND_ATTRIBUTE, None)
    if declared:
        return str(declared)
    if isinstance(module, nn.Linear):
        return "pruned" if get_mask(module) is not None else "dense"
    return "other"


def check_supported(
    modules: dict[str, nn.Module], accepts: Iterable[str], method: str, step: str | None
) -> None:
    """Raise :class:`UnsupportedLayerError` for the first target ``method`` cannot handle."""
    allowed = set(accepts)
    for name, module in modules.items():
        kind = layer_kind(module)
        if kind not in allowed:
            where = f"step {step}" if step else f"method {method!r}"
            raise UnsupportedLayerError(
                f"{where} cannot handle layer {name!r}: it is {kind} ({type(module).__name__}), "
                f"and {method!r} accepts {', '.join(sorted(allowed))}. "
                "Reorder the pipeline, or narrow the method's `targets`."
            )
