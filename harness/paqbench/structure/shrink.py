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

from paqbench.layers.contract import as_layer
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


def slice_linear(
    module: nn.Module, index: torch.Tensor, dim: Dim, name: str = "", step: str | None = None
) -> nn.Module:
    """``module`` keeping only the input columns or output rows ``index``: a new, smaller
    ``nn.Linear`` for a float layer, the same (edited) module for a format
    (:meth:`paqbench.layers.contract.CompressedLayer.sliced`); a layer outside the contract
    raises, naming the layer and the step."""
    return as_layer(module, name, step).sliced(index.to(torch.int64), dim)


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
