"""Checking that compression steps compose (exposed through :mod:`paqbench.testing`).

paqbench's promise is that any method may follow any other. :func:`run_checked_step`
applies one method to a model and then holds it to that promise: either the step
composes (every recorded pruning mask still holds, zeros are exactly zero, every layer's
weight has the shape the layer declares, the model runs and its perplexity is finite),
or it refuses with :class:`~paqbench.layers.UnsupportedLayerError` naming a layer of the
model and the step, before changing anything. The method x format matrix
(tests/test_method_matrix.py) runs it for every ordered pair of built-in methods.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import torch
from torch import nn

from paqbench.layers.contract import CompressedLayer, as_layer
from paqbench.layers.kinds import UnsupportedLayerError
from paqbench.layers.sparsity import get_mask

Outcome = Literal["composed", "refused"]


class CompositionError(AssertionError):
    """A step broke the composition promise."""


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every weight-holding layer: float ``nn.Linear`` and non-container formats."""
    return {
        name: module for name, module in model.named_modules()
        if isinstance(module, nn.Linear) or (isinstance(module, CompressedLayer) and not module.container)
    }


def _snapshot(model: nn.Module) -> dict[str, Any]:
    tensors = {key: value.detach().clone() for key, value in model.state_dict().items()}
    kinds = {name: type(module).__name__ for name, module in model.named_modules()}
    masks = {name: mask.clone() for name, m in model.named_modules() if (mask := get_mask(m)) is not None}
    return {"tensors": tensors, "kinds": kinds, "masks": masks}


def _unchanged(before: dict[str, Any], after: dict[str, Any]) -> bool:
    if before["kinds"] != after["kinds"] or before["tensors"].keys() != after["tensors"].keys():
        return False
    if before["masks"].keys() != after["masks"].keys():
        return False
    same = all(torch.equal(before["tensors"][k], after["tensors"][k]) for k in before["tensors"])
    return same and all(torch.equal(before["masks"][k], after["masks"][k]) for k in before["masks"])


def check_invariants(model: nn.Module, masked_before: set[str], ids: torch.Tensor, step: str) -> None:
    """Zeros stay zero, masks are not lost, shapes are consistent, the model runs with a
    finite perplexity on ``ids`` (``[batch, tokens]``)."""
    layers = _layers(model)
    for name, module in layers.items():
        weight = as_layer(module, name).dequantized_weight()
        declared = (getattr(module, "out_features", getattr(module, "num_embeddings", None)),
                    getattr(module, "in_features", getattr(module, "embedding_dim", None)))
        if tuple(weight.shape) != declared:
            raise CompositionError(f"step {step}: {name} computes with a {tuple(weight.shape)} weight but declares "
                                   f"{declared}")
        mask = get_mask(module)
        if mask is not None:
            if mask.shape != weight.shape:
                raise CompositionError(
                    f"step {step}: {name}'s mask {tuple(mask.shape)} != weight {tuple(weight.shape)}"
                )
            if bool((weight[~mask.to(weight.device)] != 0).any()):
                raise CompositionError(f"step {step}: {name} has nonzero weights where its mask pruned them")
    for name in masked_before:  # a layer pruned before is still pruned (wherever a wrapper moved it)
        module = layers.get(name) or layers.get(f"{name}.layer")
        if module is not None and get_mask(module) is None:
            raise CompositionError(f"step {step}: {name} lost its recorded pruning mask")
    with torch.no_grad():
        output = model(input_ids=ids, labels=ids)
    logits, loss = output.logits, float(output.loss)
    if tuple(logits.shape[:2]) != tuple(ids.shape):
        raise CompositionError(f"step {step}: logits of shape {tuple(logits.shape)} for input {tuple(ids.shape)}")
    if not math.isfinite(math.exp(min(loss, 700.0))) or not math.isfinite(loss):
        raise CompositionError(f"step {step}: perplexity is not finite (loss {loss})")


def run_checked_step(method: Any, params: Any, model: nn.Module, ctx: Any, ids: torch.Tensor) -> Outcome:
    """Apply ``method`` (an instance) with ``params`` to ``model`` under ``ctx`` (whose
    ``current_step`` names the step), then check it composed or refused cleanly."""
    step = ctx.current_step
    masked_before = {name for name, m in _layers(model).items() if get_mask(m) is not None}
    before = _snapshot(model)
    try:
        method.apply(model, params, ctx)
    except UnsupportedLayerError as exc:
        message = str(exc)
        if f"step {step}" not in message:
            raise CompositionError(f"refusal does not name the step {step!r}: {message}") from exc
        named = re.search(r"layer '([^']+)'", message)
        if named is None or named.group(1) not in dict(model.named_modules()):
            raise CompositionError(f"refusal does not name a layer of the model: {message}") from exc
        if not _unchanged(before, _snapshot(model)):
            raise CompositionError(f"step {step} refused after changing the model: {message}") from exc
        return "refused"
    check_invariants(model, masked_before, ids, step)
    return "composed"
