"""AWQ: activation-aware weight quantization, layer-sequential over decoder blocks.

The math is in :mod:`paqbench.quant.awq`; this plugin wires it to the run: calibration
windows, targets, layer-kind checks, and the facts recorded in the report (the alpha
chosen for every scale group, how much the search reduced its objective below plain
round-to-nearest, which layers got no scale and why, clipping).
"""

from __future__ import annotations

from statistics import mean
from typing import Any

from pydantic import Field
from torch import nn

from paqbench import Method, RunContext, hookimpl
from paqbench.blockwise.driver import each_block
from paqbench.blockwise.steps import calibration_targets
from paqbench.layers.contract import FLOAT_WEIGHT
from paqbench.quant.awq import AWQConfig, awq_block
from paqbench.quant.linear import QuantizedLinear, replace_module
from paqbench.quant.params import WeightQuantParams
from paqbench.quant.sequential import BlockInputs
from paqbench.quant.summary import summarize
from paqbench.text import prose


class AWQParams(WeightQuantParams):
    n_grid: int = Field(20, ge=1, le=100, description="alphas searched: 0, 1/n_grid, ..., (n_grid-1)/n_grid")
    duo_scaling: bool = Field(
        False, description="AutoAWQ's variant: s = mean|x|^alpha / mean|w/groupmax|^(1-alpha) instead of llm-awq's "
        "mean|x|^alpha"
    )
    clip: bool = Field(False, description="also search each row and group's max-abs clipping range (auto_clip)")
    max_shrink: float = Field(0.5, gt=0.0, lt=1.0, description="clip search: largest shrink of the max-abs range")
    n_sample_token: int = Field(512, gt=0, description="clip search: calibration tokens used (evenly strided)")
    quantize: bool = Field(
        True, description="false: only fold the scales (and clip) into the float model, leaving Linear layers for a "
        "later quantization step (AutoAWQ's export_compatible)"
    )

    def awq_config(self) -> AWQConfig:
        return AWQConfig(n_grid=self.n_grid, duo_scaling=self.duo_scaling, clip=self.clip,
                         max_shrink=self.max_shrink, n_sample_token=self.n_sample_token)


class AWQ(Method):
    name = "awq"
    family = "quantize"
    description = prose("""
        AWQ (Lin et al. 2023): activation-aware weight quantization. Per decoder block, each group of layers sharing an
        input (q/k/v after input_layernorm, gate/up after post_attention_layernorm, down after up, o after v when there
        is no grouped-query attention) gets per-input-channel scales s = mean|x|^alpha, alpha searched on a grid of
        `n_grid` to minimise the group's output error after quantization; 1/s is folded into the preceding norm or
        Linear, s into the layers' columns, so the float model is unchanged. Optional max-abs clipping search (`clip`).
        Then round-to-nearest into QuantizedLinear (bits, group_size with a shorter last group allowed, asymmetric by
        default). Mask-aware: pruned weights stay exactly zero. Layer-sequential. Cost per block: n_grid forwards of the
        attention and MLP modules over the calibration tokens, plus 10 matmuls per clipped layer over <= 512 tokens.
    """)
    Params = AWQParams
    accepts = frozenset({"dense", "pruned"})
    needs_calibration = True
    supports_offload = True  # weights reached through paqbench.blockwise.driver

    def apply(self, model: nn.Module, params: AWQParams, ctx: RunContext) -> dict[str, Any] | None:
        quant = params.quant_config()
        config = params.awq_config()
        names, batches = calibration_targets(model, params.targets, self, ctx, needs=FLOAT_WEIGHT, verb="quantize",
                                             instead="rtn")
        layers: dict[str, QuantizedLinear] = {}
        alphas: dict[str, float] = {}
        reductions: list[float] = []
        unscaled: dict[str, str] = {}
        clipped: dict[str, float] = {}

        def process(block_name: str, block: nn.Module, local: list[str], inputs: BlockInputs) -> None:
            result = awq_block(
                block, inputs, local, quant, config, quantize=params.quantize,
                install=lambda name, layer: replace_module(model, f"{block_name}.{name}", layer),
            )
            for found in result.groups:
                key = f"{block_name}.{found.group.prev} -> {', '.join(found.group.layers)}"
                alphas[key] = found.alpha
                if found.rtn_loss > 0:
                    reductions.append(found.loss / found.rtn_loss)
            unscaled.update({f"{block_name}.{name}": why for name, why in result.unscaled.items()})
            clipped.update({f"{block_name}.{name}": shrink for name, shrink in result.clip_shrink.items()})
            layers.update({f"{block_name}.{name}": layer for name, layer in result.quantized.items()})

        each_block(model, names, batches, process, method=self.name, verb="quantize", instead="rtn",
                   progress=lambda it, desc, total: ctx.progress(it, desc, total))
        facts: dict[str, object] = summarize(layers) if params.quantize else {"layers": 0, "scaled_only": len(names)}
        facts.update({
            "calibration_windows": len(batches),
            "scale_groups": len(alphas),
            "mean_alpha": mean(alphas.values()) if alphas else None,
            "alphas": alphas,
            # the search objective at the chosen alpha over that at alpha = 0 (plain RTN), averaged over groups
            "mean_loss_vs_rtn": mean(reductions) if reductions else None,
            "unscaled_layers": unscaled,
        })
        if params.clip:
            facts["clipped_layers"] = len(clipped)
            facts["mean_clip_shrink"] = mean(clipped.values()) if clipped else 0.0
        return facts


@hookimpl
def paqbench_register_methods(register):
    register(AWQ)
