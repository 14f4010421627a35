"""Keep the model config in step with really-shrunk blocks, and rebuild them on load.

transformers builds every block from one config, so a model whose blocks all shrank
alike is described by updating ``intermediate_size``, ``num_attention_heads`` and
``num_key_value_heads`` (``head_dim`` is written explicitly: it is no longer
``hidden_size / num_attention_heads``) and loads back with plain ``from_pretrained``.
When the blocks differ (skipped first/last blocks, global ranking) or the uniform sizes
fail the config's own validation (Llama requires ``hidden_size % num_attention_heads ==
0``), the per-block sizes are recorded under ``config.paqbench_structure`` and the
uniform fields keep describing the unpruned layout;
:func:`paqbench.models.saved.load_structured` (or :func:`paqbench.quant.load_quantized`,
which calls :func:`rebuild_blocks`) builds the model from the config, shrinks each block
to its recorded sizes, then loads the weights.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from paqbench.structure.blocks import ATTENTION_PROJECTIONS, MLP_PROJECTIONS, BlockParts, block_parts
from paqbench.structure.shrink import update_attention_attributes

#: The config attribute that holds per-block sizes when blocks differ.
STRUCTURE_KEY = "paqbench_structure"


@dataclass(frozen=True)
class BlockSizes:
    """The widths one decoder block computes with."""

    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int


def block_sizes(model: nn.Module) -> list[BlockSizes]:
    """The current sizes of every decoder block."""
    return [BlockSizes(p.intermediate, p.n_heads, p.n_kv_heads) for p in block_parts(model)]


def record_structure(model: nn.Module) -> dict[str, Any]:
    """Write the blocks' sizes into ``model.config`` (see the module docstring) and say
    how: ``{"uniform": bool, ...sizes}``."""
    config = model.config
    parts = block_parts(model)
    sizes = [BlockSizes(p.intermediate, p.n_heads, p.n_kv_heads) for p in parts]
    head_dim = parts[0].head_dim
    config.head_dim = head_dim
    uniform = len(set(sizes)) == 1
    if uniform and _valid_with(config, asdict(sizes[0])):
        for key, value in asdict(sizes[0]).items():
            setattr(config, key, value)
        if hasattr(config, STRUCTURE_KEY):
            delattr(config, STRUCTURE_KEY)
        return {"uniform": True, **asdict(sizes[0]), "head_dim": head_dim}
    structure = {key: [getattr(s, key) for s in sizes] for key in asdict(sizes[0])}
    setattr(config, STRUCTURE_KEY, structure)
    return {"uniform": False, **structure, "head_dim": head_dim}


def _valid_with(config: Any, values: dict[str, int]) -> bool:
    """Whether the config class accepts these uniform sizes (transformers 5 configs
    validate on save: Llama's needs hidden_size divisible by the head count)."""
    trial = copy.deepcopy(config)
    for key, value in values.items():
        setattr(trial, key, value)
    validate = getattr(trial, "validate", None)
    if not callable(validate):
        return True
    try:
        validate()
    except Exception:
        return False
    return True


def structure_from_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[BlockSizes | None]:
    """Per-block sizes as saved in ``state_dict`` (``None`` for a block whose projections
    are not stored plainly, e.g. behind a structured-pruning wrapper)."""
    found: list[BlockSizes | None] = []
    for parts in block_parts(model):
        gate = _saved_out_features(state_dict, f"{parts.name}.mlp.gate_proj")
        q = _saved_out_features(state_dict, f"{parts.name}.self_attn.q_proj")
        k = _saved_out_features(state_dict, f"{parts.name}.self_attn.k_proj")
        if gate is None or q is None or k is None:
            found.append(None)
        else:
            found.append(BlockSizes(gate, q // parts.head_dim, k // parts.head_dim))
    return found


def _saved_out_features(state_dict: Mapping[str, torch.Tensor], name: str) -> int | None:
    weight = state_dict.get(f"{name}.weight")
    if weight is not None:
        return int(weight.shape[0])
    meta = state_dict.get(f"{name}.qmeta")  # QuantizedLinear: [bits, group, sym, in, out]
    if meta is not None:
        return int(meta[4])
    return None


@torch.no_grad()
def rebuild_blocks(model: nn.Module, state_dict: Mapping[str, torch.Tensor] | None = None) -> list[int]:
    """Shrink the projections of each block of a freshly built ``model`` to the saved
    sizes, before ``load_state_dict`` fills them; returns the indices of blocks changed.

    Sizes come from ``state_dict`` where it stores a block's projections plainly, else
    from ``config.paqbench_structure``. The new projections are empty ``nn.Linear``
    placeholders; quantized ones are swapped in afterwards from their ``qmeta``. A model
    that is not Llama-like, or has nothing to change, is left alone."""
    try:
        parts_list = block_parts(model)
    except ValueError:
        return []
    recorded = getattr(getattr(model, "config", None), STRUCTURE_KEY, None)
    from_config: list[BlockSizes | None] = [None] * len(parts_list)
    if recorded:
        counts = {len(v) for v in recorded.values()}
        if counts != {len(parts_list)}:
            raise ValueError(
                f"config.{STRUCTURE_KEY} describes {counts} blocks but the model has {len(parts_list)}"
            )
        from_config = [
            BlockSizes(*(int(recorded[key][i]) for key in BlockSizes.__dataclass_fields__))
            for i in range(len(parts_list))
        ]
    from_state = structure_from_state(model, state_dict) if state_dict is not None else from_config
    changed = []
    for parts, saved, configured in zip(parts_list, from_state, from_config, strict=True):
        target = saved or configured
        if target is None:
            continue
        current = BlockSizes(parts.intermediate, parts.n_heads, parts.n_kv_heads)
        if target == current:
            continue
        _reshape_block(parts, target)
        changed.append(parts.index)
    if changed and state_dict is not None and not recorded:
        record_structure(model)  # the in-memory config now says what the blocks are
    return changed


def _reshape_block(parts: BlockParts, sizes: BlockSizes) -> None:
    head_dim = parts.head_dim
    q_width = sizes.num_attention_heads * head_dim
    kv_width = sizes.num_key_value_heads * head_dim
    shapes = {  # (in, out) of each projection
        "q_proj": (None, q_width), "k_proj": (None, kv_width), "v_proj": (None, kv_width),
        "o_proj": (q_width, None),
        "gate_proj": (None, sizes.intermediate_size), "up_proj": (None, sizes.intermediate_size),
        "down_proj": (sizes.intermediate_size, None),
    }
    for owner, names in ((parts.attn, ATTENTION_PROJECTIONS), (parts.mlp, MLP_PROJECTIONS)):
        for proj in names:
            old = getattr(owner, proj)
            new_in, new_out = shapes[proj]
            in_features = new_in if new_in is not None else int(old.in_features)
            out_features = new_out if new_out is not None else int(old.out_features)
            reference = getattr(old, "weight", None)
            setattr(owner, proj, nn.utils.skip_init(
                nn.Linear, in_features, out_features, bias=getattr(old, "bias", None) is not None,
                device=reference.device if reference is not None else None,
                dtype=reference.dtype if reference is not None else None,
            ))
    if hasattr(parts.mlp, "intermediate_size"):
        parts.mlp.intermediate_size = sizes.intermediate_size
    update_attention_attributes(parts.attn, sizes.num_attention_heads, sizes.num_key_value_heads)
