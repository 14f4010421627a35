"""The parts of a Llama-like decoder block that structured pruning couples.

Llama, Mistral and Qwen2 (transformers 5) share one layout: ``self_attn`` with
``q_proj``/``k_proj``/``v_proj``/``o_proj`` (grouped-query attention: KV head ``g``
serves query heads ``g*rep .. g*rep+rep-1``, ``rep = heads / kv_heads``) and ``mlp``
with ``gate_proj``/``up_proj``/``down_proj`` (``down(act(gate(x)) * up(x))``). The
attention forward reshapes with ``view(..., -1, head_dim)`` and repeats KV heads
``num_key_value_groups`` times, so removing whole KV groups (a KV head together with its
query heads) keeps ``head_dim`` and ``num_key_value_groups`` valid: only the number of
heads, which the forward infers from the tensor, changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from paqbench.layers import decoder_blocks

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class BlockParts:
    """One decoder block's coupled modules and its current attention geometry."""

    index: int
    name: str
    block: nn.Module
    attn: nn.Module
    mlp: nn.Module
    head_dim: int

    @property
    def n_heads(self) -> int:
        return _out_features(self.attn.q_proj) // self.head_dim

    @property
    def n_kv_heads(self) -> int:
        return _out_features(self.attn.k_proj) // self.head_dim

    @property
    def rep(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def intermediate(self) -> int:
        return _out_features(self.mlp.gate_proj)

    def projections(self, parts: tuple[str, ...] = ("attention", "mlp")) -> dict[str, nn.Module]:
        """Qualified name -> projection module for the requested parts."""
        found: dict[str, nn.Module] = {}
        if "attention" in parts:
            for p in ATTENTION_PROJECTIONS:
                found[f"{self.name}.self_attn.{p}"] = getattr(self.attn, p)
        if "mlp" in parts:
            for p in MLP_PROJECTIONS:
                found[f"{self.name}.mlp.{p}"] = getattr(self.mlp, p)
        return found


def block_parts(model: nn.Module) -> list[BlockParts]:
    """Every decoder block of a Llama-like model, or a clear error for other layouts."""
    prefix, blocks = decoder_blocks(model)
    config = getattr(model, "config", None)
    parts = []
    for index, block in enumerate(blocks):
        name = f"{prefix}.{index}"
        attn = getattr(block, "self_attn", None)
        mlp = getattr(block, "mlp", None)
        missing = [f"self_attn.{p}" for p in ATTENTION_PROJECTIONS if not hasattr(attn, p)]
        missing += [f"mlp.{p}" for p in MLP_PROJECTIONS if not hasattr(mlp, p)]
        if missing:
            raise ValueError(
                f"block {name!r} ({type(block).__name__}) is not a Llama-like block: it lacks "
                f"{', '.join(missing)}; structured pruning supports Llama, Mistral and Qwen2 layouts"
            )
        head_dim = getattr(attn, "head_dim", None) or getattr(config, "head_dim", None)
        if not head_dim:
            raise ValueError(f"cannot tell the head_dim of {name}.self_attn")
        parts.append(BlockParts(index, name, block, attn, mlp, int(head_dim)))
    return parts


def _out_features(module: nn.Module) -> int:
    value = getattr(module, "out_features", None)
    if value is None:
        raise ValueError(f"cannot tell the output width of {type(module).__name__}")
    return int(value)


def _in_features(module: nn.Module) -> int:
    value = getattr(module, "in_features", None)
    if value is None:
        raise ValueError(f"cannot tell the input width of {type(module).__name__}")
    return int(value)
