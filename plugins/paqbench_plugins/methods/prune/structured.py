"""Dependency-aware structured pruning of Llama-like blocks (LLM-Pruner style).

LLM-Pruner (Ma et al., 2023) removes *coupled* structures so the model stays a valid,
smaller dense model: an MLP intermediate channel is a row of gate_proj and up_proj and
a column of down_proj; an attention group is a KV head with its query heads (their q,
k, v rows and o_proj columns). Groups are ranked by the summed importance of every
weight they own (L1, L2 or first-order Taylor ``|W * dL/dW|``), per block or across
blocks, and removed; the layers really shrink (no masks, no gathers) and the config is
updated so the model saves and loads back. Quantized layers are sliced in their codes
(quantize-then-prune) and scored on their dequantized weight.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from paqbench import Method, Params, RunContext, hookimpl
from paqbench.layers import check_supported, require
from paqbench.layers.contract import SLICE_INPUTS, SLICE_OUTPUTS
from paqbench.layers.structured import kept_count
from paqbench.measure.counting import count_parameters
from paqbench.structure.blocks import BlockParts, block_parts
from paqbench.structure.config import record_structure
from paqbench.structure.importance import attention_group_scores, mlp_channel_scores, weight_gradients
from paqbench.structure.shrink import shrink_attention, shrink_mlp
from paqbench.text import prose


class StructuredParams(Params):
    ratio: float = Field(
        0.2, ge=0.0, lt=1.0,
        description="fraction of the MLP channels (and, unless attention_ratio is set, of the KV groups) "
        "removed per pruned block (scope: layer) or across the pruned blocks (scope: global)",
    )
    attention_ratio: float | None = Field(
        None, ge=0.0, lt=1.0,
        description="fraction of KV groups removed, if different from `ratio` (KV groups are coarse: "
        "SmolLM2-135M has 3 per block, so ratio 0.1 removes none per block)",
    )
    parts: Literal["mlp", "attention", "both"] = Field(
        "both", description="which coupled structures to prune: MLP channels, KV groups, or both"
    )
    importance: Literal["l1", "l2", "taylor"] = Field(
        "taylor",
        description="group score: l1 / l2 norm of all the group's weights, or taylor: sum of |W * dL/dW| "
        "(first order, causal-LM loss on the calibration windows; one forward+backward per window)",
    )
    scope: Literal["layer", "global"] = Field(
        "layer",
        description="layer: every pruned block loses the same fraction; global: rank scores normalised by "
        "their block's mean across all pruned blocks (blocks end with different sizes)",
    )
    skip_first: int = Field(
        0, ge=0, description="number of first decoder blocks left unpruned (LLM-Pruner keeps the first ones)"
    )
    skip_last: int = Field(
        0, ge=0, description="number of last decoder blocks left unpruned (LLM-Pruner keeps the last ones)"
    )
    round_to: int = Field(
        1, ge=1,
        description="round each block's kept MLP channel count down to a multiple of this (8 for fp16/bf16 "
        "tensor cores); KV groups are whole heads and are not rounded",
    )

    @model_validator(mode="after")
    def _something_to_prune(self) -> StructuredParams:
        if self.parts == "mlp" and self.attention_ratio is not None:
            raise ValueError("attention_ratio is set but parts is 'mlp'; set parts: both or attention")
        return self

    @property
    def kv_ratio(self) -> float:
        return self.ratio if self.attention_ratio is None else self.attention_ratio


def allocate(
    scores: dict[int, torch.Tensor], ratio: float, scope: str, multiple_of: int, what: str
) -> dict[int, torch.Tensor]:
    """Indices (ascending) of the groups each block keeps.

    ``layer``: each block keeps ``kept_count(n, ratio, multiple_of)`` of its top groups.
    ``global``: scores are divided by their block's mean, the ``round(ratio * total)``
    lowest across blocks are removed (every block keeps at least ``multiple_of`` groups,
    or 1), then each block's count is rounded down to a multiple of ``multiple_of``."""
    counts: dict[int, int] = {}
    if scope == "layer":
        for block, s in scores.items():
            counts[block] = kept_count(s.numel(), ratio, multiple_of)
    else:
        floor = {b: min(max(multiple_of, 1), s.numel()) for b, s in scores.items()}
        flat = []
        for block, s in scores.items():
            mean = s.float().mean()
            normalized = s.float() / mean if mean > 0 else s.float()
            flat.extend((float(v), block) for v in normalized.tolist())
        flat.sort(key=lambda item: item[0])
        remaining = {b: s.numel() for b, s in scores.items()}
        to_remove = round(ratio * len(flat))
        for _, block in flat:
            if to_remove == 0:
                break
            if remaining[block] > floor[block]:
                remaining[block] -= 1
                to_remove -= 1
        for block, keep in remaining.items():
            n = scores[block].numel()
            if keep < n and multiple_of > 1:
                keep = max(keep // multiple_of * multiple_of, min(multiple_of, n))
            counts[block] = keep
    kept = {}
    for block, s in scores.items():
        keep = counts[block]
        if keep == 0:
            raise ValueError(
                f"ratio {ratio} would remove all {s.numel()} {what} of block {block}; lower the ratio"
            )
        top = torch.topk(s.float(), keep, largest=True, sorted=False).indices
        kept[block] = torch.sort(top).values.to(torch.int64)
    return kept


class Structured(Method):
    name = "structured"
    family = "prune"
    description = prose("""
        LLM-Pruner-style dependency-aware structured pruning of Llama/Mistral/Qwen2 blocks: remove whole MLP
        intermediate channels (gate/up rows with the down column) and whole KV groups (a KV head with its query heads:
        q/k/v rows and o columns), ranked by L1, L2 or first-order Taylor importance summed over each group's weights,
        per block or globally, skipping the first/last blocks. Layers really shrink (smaller nn.Linear, sliced quantized
        codes), so params, storage and latency fall; the config records the new sizes so save/load round-trips
        (per-block sizes: paqbench.models.saved.load_structured). Cost: norms only, or for taylor one forward+backward
        per calibration window plus one float32 gradient per pruned weight in memory. No recovery fine-tuning.
    """)
    Params = StructuredParams
    accepts = frozenset({"dense", "pruned", "quantized"})
    needs_calibration = True  # taylor importance only

    def apply(self, model: torch.nn.Module, params: StructuredParams, ctx: RunContext) -> dict[str, Any]:
        all_parts = block_parts(model)
        n_blocks = len(all_parts)
        if params.skip_first + params.skip_last >= n_blocks:
            raise ValueError(
                f"skip_first={params.skip_first} + skip_last={params.skip_last} leaves none of the "
                f"{n_blocks} blocks to prune"
            )
        selected = all_parts[params.skip_first : n_blocks - params.skip_last]
        kinds = {"mlp": ("mlp",), "attention": ("attention",), "both": ("attention", "mlp")}[params.parts]
        targets: dict[str, torch.nn.Module] = {}
        for parts in selected:
            targets.update(parts.projections(kinds))
        check_supported(targets, self.accepts, self.name, ctx.current_step)
        for needs in (SLICE_OUTPUTS, SLICE_INPUTS):  # fail before changing anything
            require(targets, needs, self.name, ctx.current_step)

        grads = None
        if params.importance == "taylor":
            grads = weight_gradients(model, ctx.calibration_batches(), targets)
        do_mlp, do_attn = "mlp" in kinds, "attention" in kinds
        mlp_scores = {p.index: mlp_channel_scores(p, params.importance, grads) for p in selected} if do_mlp else {}
        attn_scores = (
            {p.index: attention_group_scores(p, params.importance, grads) for p in selected} if do_attn else {}
        )
        del grads
        keep_mlp = allocate(mlp_scores, params.ratio, params.scope, params.round_to, "MLP channels")
        keep_attn = allocate(attn_scores, params.kv_ratio, params.scope, 1, "KV groups")

        params_before = count_parameters(model)[0]
        by_index: dict[int, BlockParts] = {p.index: p for p in selected}
        blocks_info = []
        with torch.no_grad():
            for index, parts in ctx.progress(by_index.items(), "structured pruning", total=len(by_index)):
                before = (parts.intermediate, parts.n_heads, parts.n_kv_heads)
                if index in keep_mlp and keep_mlp[index].numel() < parts.intermediate:
                    shrink_mlp(parts, keep_mlp[index], ctx.current_step)
                if index in keep_attn and keep_attn[index].numel() < parts.n_kv_heads:
                    shrink_attention(parts, keep_attn[index], ctx.current_step)
                blocks_info.append({
                    "block": index,
                    "intermediate_size": [before[0], parts.intermediate],
                    "num_attention_heads": [before[1], parts.n_heads],
                    "num_key_value_heads": [before[2], parts.n_kv_heads],
                })
        structure = record_structure(model)
        params_after = count_parameters(model)[0]
        return {
            "importance": params.importance,
            "scope": params.scope,
            "parts": params.parts,
            "blocks_pruned": [p.index for p in selected],
            "blocks": blocks_info,
            "config": structure,
            "params_before": params_before,
            "params_after": params_after,
        }


@hookimpl
def paqbench_register_methods(register):
    register(Structured)
