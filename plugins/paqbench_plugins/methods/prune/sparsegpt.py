"""SparseGPT: one-shot pruning with OBS weight updates (Frantar & Alistarh, 2023).

Layer-sequential like GPTQ: each targeted Linear gets the Hessian of its inputs
(``H = 2 X X^T / n``, the accumulator GPTQ uses), is pruned by
:func:`paqbench.prune.sparsegpt.sparsegpt_prune` (kept weights updated to compensate),
and the next block is calibrated on the outputs of the pruned one. With ``bits`` the
kept weights are quantized in the same pass and the layer becomes a QuantizedLinear
whose pruned codes are the zero point. An already quantized layer is pruned and
requantized onto its own grid (scales, zero points and groups kept, codes rewritten).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from paqbench import Method, RunContext, hookimpl
from paqbench.blockwise.driver import OnloadedModules, calibrate_layers
from paqbench.blockwise.steps import calibration_targets, layer_device
from paqbench.layers import capabilities, get_mask
from paqbench.layers.contract import EXACT_GRID, FLOAT_WEIGHT
from paqbench.layers.sparsity import MASK_BUFFER
from paqbench.prune.masks import pruning_facts
from paqbench.prune.nm import check_widths
from paqbench.prune.params import SparsityParams
from paqbench.prune.sparsegpt import FixedGrid, sparsegpt_prune
from paqbench.quant.gptq import HessianAccumulator
from paqbench.quant.linear import QuantizedLinear, replace_module
from paqbench.quant.quantizer import QuantConfig
from paqbench.quant.summary import summarize
from paqbench.text import prose


class SparseGPTParams(SparsityParams):
    block_size: int = Field(128, gt=0, description="columns per block: the mask is re-selected for each block")
    damp: float = Field(0.01, ge=0.0, description="dampening added to diag(H), as a fraction of its mean (percdamp)")
    true_sequential: bool = Field(
        False,
        description="within a block, collect each group of layers' inputs (q/k/v, o, gate/up, down) through the "
        "already pruned earlier ones; false (the reference code's schedule, and better on SmolLM2: "
        "docs/methods.md): all from the block's inputs",
    )
    bits: Literal[2, 3, 4, 8] | None = Field(
        None, description="also quantize the kept weights to this many bits in the same pass (joint "
        "SparseGPT + quantization; the layer becomes a QuantizedLinear); null: float weights"
    )
    group_size: int = Field(
        128, ge=-1, description="with bits: input columns sharing one scale and zero point; -1: one per output "
        "channel; a width it does not divide gets a shorter last group"
    )
    symmetric: bool = Field(False, description="with bits: symmetric grid instead of min-max")

    @model_validator(mode="after")
    def _consistent(self) -> SparseGPTParams:
        if self.group_size == 0:
            raise ValueError("group_size must be positive, or -1 for one group per output channel")
        pattern = self.nm
        if pattern is not None and self.block_size % pattern.m:
            raise ValueError(f"block_size {self.block_size} must be a multiple of the pattern's M={pattern.m}")
        return self

    def quant_config(self) -> QuantConfig | None:
        if self.bits is None:
            return None
        return QuantConfig(bits=self.bits, group_size=self.group_size, symmetric=self.symmetric)


class SparseGPT(Method):
    name = "sparsegpt"
    family = "prune"
    description = prose("""
        SparseGPT (Frantar & Alistarh 2023): prune columns left to right and update the remaining weights through the
        inverse Hessian of the layer's calibration inputs, so ||WX - W'X|| stays small; the mask is chosen per block of
        `block_size` columns by w^2/[H^-1]_jj^2 (exact count per layer), or N:M (`pattern: '2:4'`). Optional joint
        quantization (`bits`, `group_size`, `symmetric`) yields a QuantizedLinear with pruned codes at the zero point.
        Quantized layers are pruned and requantized onto their own grid. Layer-sequential (one block's activations in
        memory). Cost per layer: Hessian O(tokens*in^2), O(in^3 + out*in^2) for the update; like GPTQ.
    """)
    Params = SparseGPTParams
    accepts = frozenset({"dense", "pruned", "quantized"})
    needs_calibration = True
    supports_offload = True  # weights reached through paqbench.blockwise.driver

    def apply(self, model: torch.nn.Module, params: SparseGPTParams, ctx: RunContext) -> dict[str, Any] | None:
        config = params.quant_config()
        pattern = params.nm

        def check(targets: Mapping[str, torch.nn.Module]) -> None:  # fail before changing anything
            for name, module in targets.items():
                check_widths({name: module}, pattern)
                if config is not None and FLOAT_WEIGHT not in capabilities(module):
                    raise ValueError(
                        f"step {ctx.current_step}: layer {name!r} is already quantized; sparsegpt prunes it on its "
                        "own grid, so leave `bits` unset (or quantize after pruning)"
                    )

        # a float weight to update, or an exact grid to requantize onto (asked, not a class)
        names, batches = calibration_targets(model, params.targets, self, ctx, needs=(FLOAT_WEIGHT, EXACT_GRID),
                                             check=check)
        stats = {"loss": 0.0, "dead_columns": 0, "max_damp": params.damp}

        def statistic(module: torch.nn.Module) -> HessianAccumulator:
            return HessianAccumulator(module.in_features, layer_device(module))

        @torch.no_grad()
        def prune(name: str, module: torch.nn.Module, hessian: HessianAccumulator) -> None:
            grid = None
            if FLOAT_WEIGHT not in capabilities(module):  # requantized onto its own exact grid
                q = module.quantized_weight()
                grid = FixedGrid(q.scales, q.zeros, q.g_idx, q.config)
                weight = q.dequantize()
            else:
                weight = module.weight
            result = sparsegpt_prune(
                weight, hessian.hessian, sparsity=params.sparsity, pattern=pattern, block_size=params.block_size,
                damp=params.damp, keep=get_mask(module), quant=config, grid=grid,
            )
            keep = result.keep
            previous = get_mask(module)
            if previous is not None:
                keep = keep & previous.to(keep.device)
            if result.quantized is not None:
                dtype = module.bias.dtype if module.bias is not None else _float_dtype(module, model)
                layer = QuantizedLinear.from_quantized(result.quantized, module.bias, keep, dtype=dtype)
                replace_module(model, name, layer)
            else:
                module.weight.copy_(result.weight.to(module.weight.dtype))
                if previous is None:
                    module.register_buffer(MASK_BUFFER, keep.to(module.weight.device), persistent=False)
                else:
                    setattr(module, MASK_BUFFER, keep.to(module.weight.device))
            stats["loss"] += result.loss
            stats["dead_columns"] += result.dead_columns
            stats["max_damp"] = max(stats["max_damp"], result.damp)

        calibrate_layers(
            model, names, batches, statistic=statistic, handle=prune, true_sequential=params.true_sequential,
            method=self.name, progress=lambda it, desc, total: ctx.progress(it, desc, total),
        )
        with OnloadedModules(model, names) as modules:  # weights on disk: one block at a time
            facts = {**pruning_facts(modules, pattern), "calibration_windows": len(batches), **stats}
        quantized = {n: m for n in names if isinstance(m := model.get_submodule(n), QuantizedLinear)}
        if config is not None or any(EXACT_GRID in capabilities(m) for m in map(model.get_submodule, names)):
            facts.update({k: v for k, v in summarize(quantized).items() if k != "layers"})
        return facts


def _float_dtype(module: torch.nn.Module, model: torch.nn.Module) -> torch.dtype:
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.dtype
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


@hookimpl
def paqbench_register_methods(register):
    register(SparseGPT)
