"""Slice coupled projections so the block really becomes smaller.

A dense or masked ``nn.Linear`` is replaced by a new, smaller ``nn.Linear`` (its recorded
mask sliced with it, so later steps keep its zeros); a quantized layer is edited in place
with ``select_output_features`` / ``select_input_features`` (codes, scales, zero points,
group index and bias sliced together). No wrapper and no gather: the smaller layers are
what the block calls.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from paqbench.layers import get_mask, layer_kind, set_mask
from paqbench.layers.structured import logical_weight
from paqbench.structure.blocks import BlockParts

Dim = Literal["input", "output"]


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows (of q/k/v) or columns (of o) that belong to ``heads``, ascending."""
    heads = torch.sort(heads.to(torch.int64)).values
    offsets = torch.arange(head_dim, dtype=torch.int64, device=heads.device)
    return (heads[:, None] * head_dim + offsets[None, :]).reshape(-1)


def group_query_heads(groups: torch.Tensor, rep: int) -> torch.Tensor:
    """Query heads served by the KV heads ``groups`` (``rep`` query heads each)."""
    groups = torch.sort(groups.to(torch.int64)).values
    offsets = torch.arange(rep, dtype=torch.int64, device=groups.device)
    return (groups[:, None] * rep + offsets[None, :]).reshape(-1)


@torch.no_grad()
def slice_linear(
    module: nn.Module, index: torch.Tensor, dim: Dim, name: str = "", step: str | None = None
) -> nn.Module:
    """``module`` keeping only the input columns or output rows ``index``.

    Returns a new ``nn.Linear`` for a dense or masked layer, the same (edited) module for
    a quantized one; anything else raises, naming the layer (via ``logical_weight``)."""
    kind = layer_kind(module)
    index = index.to(torch.int64)
    if kind == "quantized":
        logical_weight(module, name, step)  # raises for a quantized layer that cannot be edited
        index = index.to(module.qweight.device if hasattr(module, "qweight") else index.device)
        if dim == "input":
            module.select_input_features(index)
        else:
            module.select_output_features(index)
        return module
    if kind not in ("dense", "pruned"):
        logical_weight(module, name, step)  # raises with the layer's name and kind
    weight = module.weight
    index = index.to(weight.device)
    axis = 1 if dim == "input" else 0
    new_weight = weight.index_select(axis, index)
    bias = module.bias
    if bias is not None and dim == "output":
        bias = bias.index_select(0, index)
    small = nn.utils.skip_init(
        nn.Linear, new_weight.shape[1], new_weight.shape[0], bias=bias is not None,
        device=weight.device, dtype=weight.dtype,
    )
    small.weight.copy_(new_weight)
    small.weight.requires_grad_(weight.requires_grad)
    if bias is not None:
        small.bias.copy_(bias)
        small.bias.requires_grad_(module.bias.requires_grad)
    mask = get_mask(module)
    if mask is not None:
        set_mask(small, mask.index_select(axis, index))
    return small


def shrink_mlp(parts: BlockParts, keep: torch.Tensor, step: str | None = None) -> None:
    """Keep the intermediate channels ``keep``: rows of gate/up, columns of down."""
    keep = torch.sort(keep.to(torch.int64)).values
    mlp, prefix = parts.mlp, f"{parts.name}.mlp"
    mlp.gate_proj = slice_linear(mlp.gate_proj, keep, "output", f"{prefix}.gate_proj", step)
    mlp.up_proj = slice_linear(mlp.up_proj, keep, "output", f"{prefix}.up_proj", step)
    mlp.down_proj = slice_linear(mlp.down_proj, keep, "input", f"{prefix}.down_proj", step)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = int(keep.numel())


def shrink_attention(parts: BlockParts, keep_groups: torch.Tensor, step: str | None = None) -> None:
    """Keep the KV groups ``keep_groups``: their k/v rows, their query heads' q rows and
    o columns. ``head_dim`` and ``num_key_value_groups`` stay valid (whole groups go)."""
    rep, head_dim = parts.rep, parts.head_dim
    q_index = head_rows(group_query_heads(keep_groups, rep), head_dim)
    kv_index = head_rows(keep_groups, head_dim)
    attn, prefix = parts.attn, f"{parts.name}.self_attn"
    attn.q_proj = slice_linear(attn.q_proj, q_index, "output", f"{prefix}.q_proj", step)
    attn.k_proj = slice_linear(attn.k_proj, kv_index, "output", f"{prefix}.k_proj", step)
    attn.v_proj = slice_linear(attn.v_proj, kv_index, "output", f"{prefix}.v_proj", step)
    attn.o_proj = slice_linear(attn.o_proj, q_index, "input", f"{prefix}.o_proj", step)
    update_attention_attributes(attn, int(keep_groups.numel()) * rep, int(keep_groups.numel()))


def update_attention_attributes(attn: nn.Module, heads: int, kv_heads: int) -> None:
    """Per-module head counts, for transformers versions and forks that keep them
    (transformers 5's Llama infers them from the tensor and keeps only ``head_dim`` and
    ``num_key_value_groups``, which whole-group pruning leaves unchanged)."""
    for attribute, value in (
        ("num_heads", heads), ("num_attention_heads", heads),
        ("num_key_value_heads", kv_heads), ("num_kv_heads", kv_heads),
    ):
        if isinstance(getattr(attn, attribute, None), int):
            setattr(attn, attribute, value)
    if kv_heads and isinstance(getattr(attn, "num_key_value_groups", None), int):
        attn.num_key_value_groups = heads // kv_heads
