"""GPTQ: weight quantization with second-order error compensation, layer by layer.

Calibration windows run through the model one decoder block at a time
(:mod:`paqbench.blockwise.driver`); each targeted Linear gets the Hessian of its inputs,
``H = 2 X X^T / n``, and is quantized by :func:`paqbench.quant.gptq.gptq_quantize`. The
next block is calibrated on the outputs of the already quantized one.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import nn

from paqbench import Method, RunContext, hookimpl
from paqbench.blockwise.driver import calibrate_layers
from paqbench.blockwise.steps import calibration_targets
from paqbench.layers import get_mask
from paqbench.layers.contract import FLOAT_WEIGHT
from paqbench.quant.gptq import HessianAccumulator, gptq_quantize
from paqbench.quant.linear import QuantizedLinear, replace_module
from paqbench.quant.params import WeightQuantParams
from paqbench.quant.quantizer import keep_mask
from paqbench.quant.summary import summarize
from paqbench.text import prose


class GPTQParams(WeightQuantParams):
    damp: float = Field(0.01, ge=0.0, description="dampening added to diag(H), as a fraction of its mean (percdamp)")
    block_size: int = Field(128, gt=0, description="columns per lazy-update block (speed only)")
    act_order: bool = Field(
        True, description="quantize columns in order of decreasing diag(H) (desc_act); on SmolLM2-135M 4-bit "
        "g128 it is what makes GPTQ beat RTN (WikiText-2 ppl 39.5 with static groups, 37.0 without, "
        "against RTN 41.0; 43.1 with no act order)"
    )
    static_groups: bool = Field(
        True, description="with act_order: fix each group's grid from the unquantized weight first, so the "
        "groups stay contiguous (llm-compressor's default 'static' act order; the CPU int4 kernel needs it)"
    )
    true_sequential: bool = Field(
        True, description="within a block, collect each group of layers' inputs (q/k/v, o, gate/up, down) "
        "through the already quantized earlier ones"
    )


class GPTQ(Method):
    name = "gptq"
    family = "quantize"
    description = prose("""
        GPTQ (Frantar et al. 2022): quantize weights column by column, compensating each column's rounding error on the
        remaining columns through the inverse Hessian of the layer's calibration inputs. Layer-sequential (one decoder
        block's activations in memory; each block sees the outputs of the quantized ones before it), `true_sequential`
        within blocks, `act_order` with the group index recorded, `static_groups`, any `group_size` (shorter last group
        allowed), mask-aware: pruned weights end exactly zero. Parameters: bits, group_size, symmetric, damp,
        block_size, act_order, static_groups, true_sequential, targets (decoder-block Linears only). Cost per decoder
        block: one forward of the calibration windows per group of layers (q/k/v, o, gate/up, down with true_sequential;
        each stopped once its layers have run) and one more for the next block's inputs, a Hessian update O(tokens*in^2)
        and O(in^3 + out*in^2) per layer; tens of minutes for 135M parameters with 32x512 tokens on a 2-core CPU, about
        a minute on a GPU.
    """)
    Params = GPTQParams
    accepts = frozenset({"dense", "pruned"})
    needs_calibration = True
    supports_offload = True  # weights reached through paqbench.blockwise.driver

    def apply(self, model: nn.Module, params: GPTQParams, ctx: RunContext) -> dict[str, Any] | None:
        names, batches = calibration_targets(model, params.targets, self, ctx, needs=FLOAT_WEIGHT, verb="quantize",
                                             instead="rtn")
        config = params.quant_config()
        layers: dict[str, QuantizedLinear] = {}
        stats = {"loss": 0.0, "dead_columns": 0, "max_damp": params.damp}

        def statistic(module: nn.Module) -> HessianAccumulator:
            return HessianAccumulator(module.in_features, module.weight.device)

        def quantize(name: str, module: nn.Module, hessian: HessianAccumulator) -> None:
            result = gptq_quantize(
                module.weight, hessian.hessian, config,
                damp=params.damp, block_size=params.block_size, act_order=params.act_order,
                static_groups=params.static_groups, keep=keep_mask(module),
            )
            layer = QuantizedLinear.from_quantized(
                result.quantized, module.bias, get_mask(module), dtype=module.weight.dtype
            )
            replace_module(model, name, layer)
            layers[name] = layer
            stats["loss"] += result.loss
            stats["dead_columns"] += result.dead_columns
            stats["max_damp"] = max(stats["max_damp"], result.damp)

        calibrate_layers(
            model, names, batches, statistic=statistic, handle=quantize, true_sequential=params.true_sequential,
            method=self.name, verb="quantize", instead="rtn",
            progress=lambda it, desc, total: ctx.progress(it, desc, total),
        )
        return {**summarize(layers, len(batches)), **stats}


@hookimpl
def paqbench_register_methods(register):
    register(GPTQ)
