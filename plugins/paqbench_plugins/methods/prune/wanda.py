"""Wanda: pruning by weights and activations (Sun et al., 2023), layer-sequential.

Each weight is scored ``|W_ij| * ||X_j||_2`` from its layer's calibration inputs and the
lowest scores of each output row (the paper's comparison group) are zeroed; no weight
update. Calibration runs one decoder block at a time (:mod:`paqbench.blockwise.driver`),
so block ``i + 1`` is scored on the outputs of the already pruned block ``i``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from paqbench import Method, RunContext, hookimpl
from paqbench.blockwise.driver import OnloadedModules, calibrate_layers
from paqbench.blockwise.steps import calibration_targets, layer_device
from paqbench.layers import get_mask
from paqbench.layers.contract import ZERO_WEIGHTS
from paqbench.prune.masks import apply_keep_mask, current_weight, keep_lowest_dropped, pruning_facts
from paqbench.prune.nm import check_widths, nm_keep_mask
from paqbench.prune.params import SparsityParams
from paqbench.prune.wanda import InputNormAccumulator, wanda_scores
from paqbench.text import prose


class WandaParams(SparsityParams):
    compare: Literal["row", "layer"] = Field(
        "row",
        description="comparison group for unstructured pruning: row (each output row loses exactly `sparsity`, "
        "the paper's rule) or layer (the whole matrix); ignored with a pattern",
    )
    true_sequential: bool = Field(
        False,
        description="within a block, collect each group of layers' inputs (q/k/v, o, gate/up, down) through the "
        "already pruned earlier ones; false: all from the block's inputs, as the reference code",
    )


class Wanda(Method):
    name = "wanda"
    family = "prune"
    description = prose("""
        Wanda (Sun et al. 2023): zero the weights with the lowest |W| * ||X_j||_2, where ||X_j|| is the L2 norm of input
        feature j over the calibration tokens; compared within each output row (`compare: row`, the paper) or the whole
        layer; unstructured or N:M (`pattern: '2:4'`). No weight update. Layer-sequential calibration (each block scored
        on the pruned blocks' outputs). Quantized layers are scored on their dequantized weight and their codes set to
        the zero point. Cost per decoder block: one forward of the calibration windows (one per layer group with
        `true_sequential`) plus one for the next block's inputs; one float per input column of statistics. Seconds on a
        CPU for 135M parameters.
    """)
    Params = WandaParams
    accepts = frozenset({"dense", "pruned", "quantized"})
    needs_calibration = True
    supports_offload = True  # weights reached through paqbench.blockwise.driver

    def apply(self, model: torch.nn.Module, params: WandaParams, ctx: RunContext) -> dict[str, Any] | None:
        pattern = params.nm
        # zeroing single weights is asked of every target before any work (not found mid-way)
        names, batches = calibration_targets(model, params.targets, self, ctx, needs=ZERO_WEIGHTS,
                                             check=lambda targets: check_widths(targets, pattern))

        def statistic(module: torch.nn.Module) -> InputNormAccumulator:
            return InputNormAccumulator(module.in_features, layer_device(module))

        @torch.no_grad()
        def prune(name: str, module: torch.nn.Module, stats: InputNormAccumulator) -> None:
            scores = wanda_scores(current_weight(module), stats.norms)
            if pattern is not None:
                keep = nm_keep_mask(scores, pattern, get_mask(module))
            else:
                keep = keep_lowest_dropped(scores, params.sparsity, get_mask(module), per_row=params.compare == "row")
            apply_keep_mask(module, keep, name)

        calibrate_layers(
            model, names, batches, statistic=statistic, handle=prune, true_sequential=params.true_sequential,
            method=self.name, progress=lambda it, desc, total: ctx.progress(it, desc, total),
        )
        with OnloadedModules(model, names) as modules:  # weights on disk: one block at a time
            facts = pruning_facts(modules, pattern)
        return {**facts, "calibration_windows": len(batches)}


@hookimpl
def paqbench_register_methods(register):
    register(Wanda)
