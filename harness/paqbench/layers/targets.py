"""Which layers a method compresses.

The default is the field's: every linear layer inside the decoder blocks, never the
embeddings or the LM head. A regex (matched with ``re.search`` against the module's
full name) overrides it.
"""

from __future__ import annotations

import re

from torch import nn

from paqbench.layers.contract import CompressedLayer
from paqbench.layers.kinds import layer_kind


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of decoder blocks and its qualified name.

    Found as the ModuleList whose length is ``config.num_hidden_layers`` (Llama, Mistral,
    Qwen, Phi: ``model.layers``; GPT-2: ``transformer.h``; OPT: ``model.decoder.layers``).
    """
    expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0
    ]
    for name, module in candidates:
        if expected is not None and len(module) == expected:
            return name, module
    if candidates:
        return max(candidates, key=lambda item: len(item[1]))
    raise ValueError(f"{type(model).__name__} has no list of decoder blocks that paqbench can find")


def select_targets(model: nn.Module, pattern: str | None = None) -> dict[str, nn.Module]:
    """Target modules by qualified name, in model order.

    Without ``pattern``: linear-like layers (dense, pruned or already compressed) inside
    the decoder blocks. With ``pattern``: every such layer anywhere whose name matches.
    """
    if pattern is None:
        prefix, _ = decoder_blocks(model)
        selected = {
            name: module
            for name, module in model.named_modules()
            if name.startswith(prefix + ".") and _is_linear_like(module)
        }
    else:
        regex = re.compile(pattern)
        selected = {
            name: module
            for name, module in model.named_modules()
            if regex.search(name) and _is_linear_like(module)
        }
    if not selected:
        raise ValueError(
            f"no linear layers match targets={pattern!r}"
            if pattern
            else "the model has no linear layers in its decoder blocks"
        )
    return selected


def _is_linear_like(module: nn.Module) -> bool:
    """Any layer with a kind, except containers (structured-pruning wrappers), whose inner
    layer is the target."""
    return layer_kind(module) != "other" and not (isinstance(module, CompressedLayer) and module.container)
