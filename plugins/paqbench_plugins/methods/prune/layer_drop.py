"""Layer dropping: remove whole decoder blocks that change the hidden state least.

ShortGPT (Men et al., 2024) scores each block by its Block Influence, ``1 - cos`` between
its input and output hidden states, and removes the lowest; Gromov et al. (2024) remove
the ``n`` consecutive blocks whose input and output (``n`` blocks apart) have the
smallest angular distance. Either way the model loses whole blocks: parameters,
storage, KV cache and latency fall in proportion, and the saved model is an ordinary
checkpoint with a smaller ``num_hidden_layers``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from paqbench import Method, Params, RunContext, hookimpl
from paqbench.layers import decoder_blocks
from paqbench.measure.counting import count_parameters
from paqbench.structure.drop import angular_distances, block_influence, drop_blocks
from paqbench.text import prose


class LayerDropParams(Params):
    importance: Literal["bi", "angular"] = Field(
        "bi",
        description="bi: ShortGPT Block Influence (1 - cos(block input, block output)), drop the n lowest "
        "blocks anywhere; angular: Gromov et al., drop the n consecutive blocks whose input and output are "
        "closest in angle",
    )
    n_blocks: int | None = Field(None, ge=1, description="number of blocks to remove (or give `ratio`)")
    ratio: float | None = Field(
        None, gt=0.0, lt=1.0, description="fraction of the blocks to remove, rounded (or give `n_blocks`)"
    )
    keep_first: int = Field(0, ge=0, description="number of first blocks never removed")
    keep_last: int = Field(
        1, ge=0, description="number of last blocks never removed (Gromov et al. always keep the final block)"
    )
    positions: Literal["all", "last"] = Field(
        "all",
        description="tokens the similarity is averaged over: all calibration tokens, or only each window's "
        "last token (as Gromov et al.)",
    )

    @model_validator(mode="after")
    def _one_amount(self) -> LayerDropParams:
        if (self.n_blocks is None) == (self.ratio is None):
            raise ValueError("give exactly one of n_blocks and ratio")
        return self


def choose_blocks(scores: torch.Tensor, params: LayerDropParams, n_total: int, n_drop: int) -> list[int]:
    """The block indices to remove, given BI scores ``[L]`` or angular distances ``[L - n + 1]``."""
    first, last = params.keep_first, n_total - params.keep_last  # candidates: first <= i < last
    if n_drop > last - first:
        raise ValueError(
            f"cannot remove {n_drop} block(s): only {max(last - first, 0)} of {n_total} lie between "
            f"keep_first={params.keep_first} and keep_last={params.keep_last}"
        )
    if params.importance == "bi":
        candidates = torch.arange(first, last)
        order = torch.argsort(scores[first:last], stable=True)
        return sorted(candidates[order[:n_drop]].tolist())
    starts = range(first, last - n_drop + 1)  # blocks start .. start + n - 1 all removable
    best = min(starts, key=lambda start: (float(scores[start]), start))
    return list(range(best, best + n_drop))


class LayerDrop(Method):
    name = "layer-drop"
    family = "prune"
    description = prose("""
        Remove whole decoder blocks: the n with the lowest ShortGPT Block Influence (1 - cos between a block's input and
        output hidden states over calibration tokens), or the n consecutive blocks with the smallest angular distance
        between their input and output (Gromov et al.). Updates num_hidden_layers, layer_types and each attention's
        layer_idx, so KV caching, generate() and save/from_pretrained work. Any layer kind (blocks go whole). Cost: one
        block-by-block forward of the calibration windows; no recovery fine-tuning.
    """)
    Params = LayerDropParams
    accepts = frozenset({"dense", "pruned", "quantized", "other"})
    needs_calibration = True

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, params: LayerDropParams, ctx: RunContext) -> dict[str, Any]:
        _, blocks = decoder_blocks(model)
        n_total = len(blocks)
        n_drop = params.n_blocks if params.n_blocks is not None else round(params.ratio * n_total)
        if n_drop >= n_total:
            raise ValueError(f"removing {n_drop} of {n_total} blocks would leave none")
        params_before = count_parameters(model)[0]
        info: dict[str, Any] = {"importance": params.importance, "blocks_before": n_total}
        if n_drop == 0:
            return {**info, "dropped": [], "params_before": params_before, "params_after": params_before}
        # fail on impossible counts before the calibration forward
        choose_blocks(torch.zeros(n_total), params.model_copy(update={"importance": "bi"}), n_total, n_drop)
        batches = ctx.calibration_batches()
        if params.importance == "bi":
            scores = block_influence(model, batches, params.positions)
        else:
            scores = angular_distances(model, batches, n_drop, params.positions)
        dropped = choose_blocks(scores, params, n_total, n_drop)
        drop_blocks(model, dropped)
        return {
            **info,
            "scores": [round(float(s), 6) for s in scores],
            "dropped": dropped,
            "blocks_after": n_total - len(dropped),
            "params_before": params_before,
            "params_after": count_parameters(model)[0],
        }


@hookimpl
def paqbench_register_methods(register):
    register(LayerDrop)
