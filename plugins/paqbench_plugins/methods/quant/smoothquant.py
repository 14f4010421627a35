"""SmoothQuant: activation outliers migrated into the weights, then W8A8 int8 dynamic.

The math is in :mod:`paqbench.quant.smoothquant`; this plugin wires it to the run
(calibration windows, targets, layer-kind checks) and records per scale group the alpha
used and how much smoothing flattened the input's channel maxima.
"""

from __future__ import annotations

import re
from statistics import mean
from typing import Any

from pydantic import Field, field_validator
from torch import nn

from paqbench import Method, Params, RunContext, hookimpl
from paqbench.blockwise.driver import each_block
from paqbench.blockwise.steps import calibration_targets
from paqbench.quant.linear import replace_module
from paqbench.quant.sequential import BlockInputs
from paqbench.quant.smoothquant import SmoothConfig, smooth_block
from paqbench.quant.summary import summarize
from paqbench.quant.w8a8 import Int8DynamicLinear
from paqbench.text import prose


class SmoothQuantParams(Params):
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="migration strength: s = max|X|^alpha / max|W|^(1-alpha)")
    layer_alphas: dict[str, float] = Field(
        default_factory=dict,
        description="per-layer alpha: regex over qualified layer names -> alpha; a scale group takes the first "
        "pattern matching one of its layers (e.g. {'mlp\\.down_proj': 0.8})",
    )
    fold_into_linear: bool = Field(
        True, description="also smooth o_proj (folded into v_proj, without grouped-query attention) and down_proj "
        "(folded into up_proj); false: only the norm-preceded q/k/v and gate/up, as the paper"
    )
    targets: str | None = Field(
        None, description="regex over module names; default: the Linear layers inside decoder blocks"
    )
    quantize: bool = Field(True, description="false: only fold the scales into the float model (no W8A8)")

    @field_validator("layer_alphas")
    @classmethod
    def _check_layer_alphas(cls, value: dict[str, float]) -> dict[str, float]:
        for pattern, alpha in value.items():
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"layer_alphas key {pattern!r} is not a valid regex: {error}") from None
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"layer_alphas[{pattern!r}] must be between 0 and 1, got {alpha}")
        return value

    def smooth_config(self) -> SmoothConfig:
        return SmoothConfig(alpha=self.alpha, layer_alphas=tuple(self.layer_alphas.items()),
                            fold_into_linear=self.fold_into_linear)


class SmoothQuant(Method):
    name = "smoothquant"
    family = "quantize"
    description = prose("""
        SmoothQuant (Xiao et al. 2023): per input channel j of each group of layers sharing an input (q/k/v after
        input_layernorm, gate/up after post_attention_layernorm; with fold_into_linear also o after v without
        grouped-query attention and down after up), s_j = max|X_j|^alpha / max|W_j|^(1-alpha) from the calibration
        activations; 1/s is folded into the preceding norm or Linear and s into the layers' columns (the float model is
        unchanged), flattening activation outliers. Then W8A8 int8 dynamic (the w8a8 method's Int8DynamicLinear).
        Layer-sequential; cost per block: one forward of the calibration tokens.
    """)
    Params = SmoothQuantParams
    accepts = frozenset({"dense", "pruned"})
    needs_calibration = True
    supports_offload = True  # weights reached through paqbench.blockwise.driver

    def apply(self, model: nn.Module, params: SmoothQuantParams, ctx: RunContext) -> dict[str, Any] | None:
        names, batches = calibration_targets(model, params.targets, self, ctx, verb="quantize", instead="w8a8")
        config = params.smooth_config()
        layers: dict[str, Int8DynamicLinear] = {}
        alphas: dict[str, float] = {}
        spreads: list[tuple[float, float]] = []
        unscaled: dict[str, str] = {}

        def process(block_name: str, block: nn.Module, local: list[str], inputs: BlockInputs) -> None:
            result = smooth_block(
                block, inputs, local, config, block_name=block_name, quantize=params.quantize,
                install=lambda name, layer: replace_module(model, f"{block_name}.{name}", layer),
            )
            for found in result.groups:
                alphas[f"{block_name}.{found.group.prev} -> {', '.join(found.group.layers)}"] = found.alpha
                spreads.append((found.spread_before, found.spread_after))
            unscaled.update({f"{block_name}.{name}": why for name, why in result.unscaled.items()})
            layers.update({f"{block_name}.{name}": layer for name, layer in result.quantized.items()})

        each_block(model, names, batches, process, method=self.name, verb="quantize", instead="w8a8",
                   progress=lambda it, desc, total: ctx.progress(it, desc, total))
        return {
            "layers": len(layers),  # first, as before: the key order of the facts is the report's
            "scaled_only": 0 if params.quantize else len(names),
            **summarize(layers, len(batches)),
            "scale_groups": len(alphas),
            "alphas": alphas,
            # largest over mean per-channel activation maximum of each group's input, averaged over groups
            "mean_channel_spread_before": mean(b for b, _ in spreads) if spreads else None,
            "mean_channel_spread_after": mean(a for _, a in spreads) if spreads else None,
            "unscaled_layers": unscaled,
        }


@hookimpl
def paqbench_register_methods(register):
    register(SmoothQuant)
