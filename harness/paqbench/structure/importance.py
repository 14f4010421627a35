"""Importance of coupled groups: an MLP intermediate channel, or a KV group.

A group's score sums an element score over *every* weight the group owns (LLM-Pruner's
group importance): for MLP channel ``c`` the row ``c`` of gate_proj and up_proj and the
column ``c`` of down_proj; for KV group ``g`` the k/v rows of head ``g``, the q rows of
its query heads and the matching o_proj columns.

Element scores: ``l1`` = ``|W|``; ``l2`` = ``W^2`` (the group score is the square root
of the sum, i.e. the L2 norm of all the group's weights); ``taylor`` = ``|W * dL/dW|``,
the first-order estimate of the loss change when the weight is set to zero, with
``dL/dW`` from the causal-LM loss on calibration windows. Quantized layers are scored on
their dequantized weight, and their gradient is the gradient with respect to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from paqbench.layers.contract import dequantized_weight
from paqbench.structure.blocks import BlockParts

Importance = Literal["l1", "l2", "taylor"]


def element_scores(weight: torch.Tensor, importance: Importance, grad: torch.Tensor | None = None) -> torch.Tensor:
    """Per-weight score in float32 (see the module docstring)."""
    weight = weight.detach().float()
    if importance == "l1":
        return weight.abs()
    if importance == "l2":
        return weight.square()
    if grad is None:
        raise ValueError("taylor importance needs the weight's gradient")
    return (weight * grad.to(weight.device, torch.float32)).abs()


def _finish(total: torch.Tensor, importance: Importance) -> torch.Tensor:
    return total.sqrt() if importance == "l2" else total


@torch.no_grad()
def mlp_channel_scores(
    parts: BlockParts, importance: Importance, grads: Mapping[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """``[intermediate]`` score of each MLP channel of the block."""
    prefix = f"{parts.name}.mlp"
    total = None
    for proj, axis in (("gate_proj", 1), ("up_proj", 1), ("down_proj", 0)):
        name = f"{prefix}.{proj}"
        weight = dequantized_weight(getattr(parts.mlp, proj), name)
        scores = element_scores(weight, importance, (grads or {}).get(name)).sum(axis)
        total = scores if total is None else total + scores
    return _finish(total, importance)


@torch.no_grad()
def attention_group_scores(
    parts: BlockParts, importance: Importance, grads: Mapping[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """``[kv_heads]`` score of each KV group (a KV head with its query heads)."""
    prefix = f"{parts.name}.self_attn"
    groups = parts.n_kv_heads
    total = torch.zeros(groups)
    for proj, axis in (("q_proj", 1), ("k_proj", 1), ("v_proj", 1), ("o_proj", 0)):
        name = f"{prefix}.{proj}"
        weight = dequantized_weight(getattr(parts.attn, proj), name)
        per_channel = element_scores(weight, importance, (grads or {}).get(name)).sum(axis)
        # q rows / o columns: rep * head_dim per group; k/v rows: head_dim per group (all
        # contiguous per group, in group order)
        total += per_channel.reshape(groups, -1).sum(1).cpu()
    return _finish(total, importance)


def weight_gradients(
    model: nn.Module, batches: Sequence[torch.Tensor], modules: Mapping[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """``dL/dW`` (float32, ``[out, in]``) of each module in ``modules``, for the mean
    causal-LM loss over ``batches``.

    Computed from each layer's input ``x`` and output gradient ``g`` as ``g^T x`` (summed
    over tokens) through hooks, so it works for any linear-like layer, a quantized one
    included (where it is the gradient with respect to the dequantized weight), and no
    parameter needs ``requires_grad``: the model's own gradients stay untouched."""
    if not batches:
        raise ValueError("taylor importance needs calibration batches")
    grads: dict[str, torch.Tensor] = {}
    device = next(model.parameters()).device
    scale = 1.0 / len(batches)

    def forward_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            x = args[0].detach()

            def on_grad(g: torch.Tensor) -> None:
                g2 = g.detach().reshape(-1, g.shape[-1]).float()
                x2 = x.reshape(-1, x.shape[-1]).float()
                update = (g2.T @ x2).mul_(scale)
                if name in grads:
                    grads[name].add_(update)
                else:
                    grads[name] = update

            output.register_hook(on_grad)

        return hook

    def embed_hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output.detach().requires_grad_(True)  # the graph starts here, not at the weights

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    handles = [model.get_input_embeddings().register_forward_hook(embed_hook)]
    handles += [module.register_forward_hook(forward_hook(name)) for name, module in modules.items()]
    try:
        for p in params:
            p.requires_grad_(False)
        model.eval()
        with torch.enable_grad():
            for batch in batches:
                batch = batch.to(device)
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    missing = [name for name in modules if name not in grads]
    if missing:
        raise RuntimeError(f"the loss did not reach {missing[:3]}: no gradient to score them with")
    return grads
