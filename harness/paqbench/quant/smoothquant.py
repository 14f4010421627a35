"""SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights, then W8A8.

Per-token int8 activations lose precision when a few input channels are far larger than
the rest (LLM norms produce such outlier channels): the row's scale is set by the outlier
and every other channel is rounded coarsely. SmoothQuant divides input channel ``j`` by

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

(``max|X_j|`` over the calibration tokens, ``max|W_j|`` over the column ``j`` of every
layer reading that input) and multiplies the weight columns by ``s_j``:
``W x = (W diag(s)) (diag(s)^-1 x)``, so the float model is unchanged while the
activations' per-channel ranges flatten (alpha = 0.5 balances the two maxima) and the
weights absorb the difference, which per-channel int8 weights tolerate well. ``1/s`` is
folded into the op that produces the input, with the scale groups of AWQ
(:data:`paqbench.quant.awq.LLAMA_GROUPS`):

- q/k/v after ``input_layernorm``; gate/up after ``post_attention_layernorm`` (the
  paper's and llm-compressor's mappings);
- o after v (v's rows divided) when v's outputs are o's inputs one to one (no grouped-query
  attention), and down after up (down's input is ``act(gate) * up``, linear in up): the
  ``fold_into_linear`` groups, on by default.

A channel whose activation or weight maximum is 0 keeps ``s = 1``. Then every targeted
layer becomes an :class:`~paqbench.quant.w8a8.Int8DynamicLinear` (int8 weights per output
channel, int8 activations per token), the format of the ``w8a8`` method.

Statistics come from :func:`paqbench.blockwise.driver.each_block`: block ``i + 1`` sees
the outputs of the already quantized block ``i`` (the reference collects all maxima on
the float model in one pass). Within a block all groups' maxima are gathered in one pass
before any fold: folding leaves the float function unchanged, so no group's inputs depend
on another group's fold.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from paqbench.quant.awq import LLAMA_GROUPS, ScaleChoice, ScaledBlock, ScaleGroup, fold_scales, plan_groups
from paqbench.quant.sequential import BlockInputs, collect_inputs
from paqbench.quant.w8a8 import Int8DynamicLinear

#: Groups whose ``1/s`` folds into a norm (the paper's); the others fold into a Linear.
NORM_GROUPS: tuple[ScaleGroup, ...] = tuple(g for g in LLAMA_GROUPS if g.prev.endswith("layernorm"))


@dataclass(frozen=True)
class SmoothConfig:
    """Migration strength: ``alpha`` everywhere except groups one of ``layer_alphas``'
    patterns (regexes over the qualified names of a group's layers, first match wins)
    matches."""

    alpha: float = 0.5
    layer_alphas: tuple[tuple[str, float], ...] = ()
    fold_into_linear: bool = True

    def alpha_for(self, layer_names: Sequence[str]) -> float:
        for pattern, alpha in self.layer_alphas:
            if any(re.search(pattern, name) for name in layer_names):
                return alpha
        return self.alpha

    @property
    def groups(self) -> tuple[ScaleGroup, ...]:
        return LLAMA_GROUPS if self.fold_into_linear else NORM_GROUPS


@dataclass
class SmoothedGroup(ScaleChoice):
    """With the spread of its input's channel maxima (largest over mean) before and
    after smoothing."""

    spread_before: float
    spread_after: float


#: The groups of one block; ``quantized``: relative name -> the W8A8 layer that replaced it.
SmoothResult = ScaledBlock[SmoothedGroup, Int8DynamicLinear]


def smoothing_scales(act_max: torch.Tensor, weights: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """``s_j = act_max_j^alpha / max|W_j|^(1-alpha)``, ``max|W_j|`` over column ``j`` of
    all ``weights`` ``[out_k, in]``; 1 where either maximum is 0 (nothing to migrate)."""
    act_max = act_max.detach().float()
    w_max = torch.cat([w.detach().float().abs() for w in weights], dim=0).amax(dim=0).to(act_max.device)
    scales = act_max.pow(alpha) / w_max.pow(1 - alpha)
    usable = (act_max > 0) & (w_max > 0) & torch.isfinite(scales) & (scales > 0)
    return torch.where(usable, scales, torch.ones_like(scales))


def channel_spread(act_max: torch.Tensor) -> float:
    """Largest channel maximum over the mean one: 1 for flat channels, large with outliers."""
    mean = float(act_max.float().mean())
    return float(act_max.float().max()) / mean if mean > 0 else 1.0


@torch.no_grad()
def activation_maxima(
    block: nn.Module, inputs: BlockInputs, layers: Mapping[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """``max|x_j|`` per input channel of each of ``layers`` over every calibration token."""
    maxima: dict[str, torch.Tensor] = {}

    def record(name: str, x: torch.Tensor) -> None:
        current = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
        maxima[name] = current if name not in maxima else torch.maximum(maxima[name], current)

    collect_inputs(block, inputs, layers, record)
    return maxima


@torch.no_grad()
def smooth_block(
    block: nn.Module,
    inputs: BlockInputs,
    targets: Sequence[str],
    config: SmoothConfig,
    *,
    block_name: str = "",
    quantize: bool = True,
    install: Callable[[str, nn.Module], None] | None = None,
) -> SmoothResult:
    """Smooth the scale groups of ``block`` holding some of ``targets`` (names relative to
    the block), then (``quantize``) replace every target by an Int8DynamicLinear through
    ``install(name, layer)``. ``block_name`` prefixes the names ``layer_alphas`` match."""
    groups, unscaled = plan_groups(block, targets, config.groups)
    result = SmoothResult(unscaled=dict(unscaled))
    readers = {group.layers[0]: block.get_submodule(group.layers[0]) for group in groups}
    maxima = activation_maxima(block, inputs, readers) if readers else {}
    prefix = f"{block_name}." if block_name else ""
    for group in groups:
        act_max = maxima.get(group.layers[0])
        if act_max is None:
            for name in group.layers:
                if name in targets:
                    result.unscaled[name] = "received no calibration input"
            continue
        layers = [block.get_submodule(name) for name in group.layers]
        alpha = config.alpha_for([prefix + name for name in group.layers])
        scales = smoothing_scales(act_max, [layer.weight for layer in layers], alpha)
        fold_scales(block.get_submodule(group.prev), layers, scales.to(layers[0].weight.device))
        result.groups.append(SmoothedGroup(group, alpha, scales.cpu(), channel_spread(act_max),
                                           channel_spread(act_max / scales)))
    if quantize:
        for name in targets:
            source = block.get_submodule(name)
            layer = Int8DynamicLinear.from_linear(source)
            layer.select_kernel(source.weight.device, source.weight.dtype)
            if install is not None:
                install(name, layer)
            result.quantized[name] = layer
    return result
