"""AWQ (Lin et al., 2023): activation-aware weight quantization, one decoder block at a time.

The premise: a few input channels carry much larger activations than the rest, and the
weights that multiply them matter most. Scaling those weight columns up by ``s`` (and the
activations down by ``1/s``, folded into the op that produces them) gives them a finer
relative grid without changing the float model's function:
``W x = (W diag(s)) (diag(s)^-1 x)``. The scales are ``s = mean|x|^alpha`` per input
channel, normalised by ``sqrt(max(s) * min(s))`` as in the reference code (llm-awq's
``auto_scale``; AutoAWQ's ``_search_best_scale``), with ``alpha`` chosen on a grid of
``n_grid`` values ``0, 1/n_grid, ...`` to minimise the mean squared error of the group's
parent module output (q/k/v: the attention module; gate/up: the MLP; o and down: the layer
itself) when its layers are pseudo-quantized as ``Q(W s) / s``. ``alpha = 0`` is plain
round-to-nearest, so on the calibration data the search never does worse than RTN.

Groups of layers sharing an input, and the op that 1/s folds into (Llama, Mistral, Qwen2
naming, as AutoAWQ's Llama definition):

- q/k/v after ``input_layernorm`` (RMSNorm weight divided by s);
- o after v (v's rows divided) only when v's outputs are o's inputs one to one
  (``v.out_features == o.in_features``: no grouped-query attention), as in the reference;
- gate/up after ``post_attention_layernorm``;
- down after up (up's rows divided: down's input is ``act(gate) * up``, linear in up).

A targeted layer outside every group that applies here (another architecture, a
structured-pruning wrapper in the way, a consumer that is not a float Linear) is still
quantized, without a scale, and listed as unscaled in the facts.

Optional clipping (llm-awq's ``auto_clip``): per output row and group, the max-abs range is
shrunk on the grid ``1 - i/n_grid`` for ``i < max_shrink * n_grid`` to minimise the
group's output error on (up to) ``n_sample_token`` calibration tokens; q and k are not
clipped (the reference skips them: the q-k product makes their error hard to measure).

Then every targeted layer is quantized round-to-nearest on the shared grids of
:mod:`paqbench.quant.quantizer` (any group size, a shorter last group allowed) into a
:class:`~paqbench.quant.linear.QuantizedLinear`.

Differences from the reference, on purpose:

- Mask-aware: pruned weights (a recorded mask or exact zeros) are zero codes in every
  pseudo-quantization of the search and in the result, so they end exactly zero.
- The grid contains 0 and groups may be shorter than ``group_size`` (paqbench's grids).
- Blocks are processed by :func:`paqbench.blockwise.driver.layer_sequential`: block
  ``i + 1`` is calibrated on the outputs of the already *quantized* block ``i`` (the
  reference feeds it the float block's outputs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from paqbench.layers import capabilities, get_mask, layer_kind
from paqbench.layers.contract import FLOAT_WEIGHT
from paqbench.quant.linear import QuantizedLinear, replace_module
from paqbench.quant.quantizer import QuantConfig, keep_mask, minmax_params, quantize_codes, quantize_rtn
from paqbench.quant.sequential import BlockInputs, record_inputs


@dataclass(frozen=True)
class ScaleGroup:
    """Layers that read the output of ``prev`` and share one scale vector; ``parent`` is
    the module whose output error the alpha search minimises. Names are relative to the
    decoder block."""

    prev: str
    layers: tuple[str, ...]
    parent: str


#: Llama-family groups (also Mistral, Qwen2, SmolLM): ``(prev, layers, parent)``.
LLAMA_GROUPS: tuple[ScaleGroup, ...] = (
    ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
    ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
)

#: Layers the clip search leaves alone (the reference's ``avoid_clipping``).
NO_CLIP = ("q_proj", "k_proj", "query", "key", "Wqkv")


@dataclass(frozen=True)
class AWQConfig:
    """Search settings (the reference's defaults)."""

    n_grid: int = 20
    duo_scaling: bool = False
    clip: bool = False
    max_shrink: float = 0.5
    n_sample_token: int = 512


@dataclass
class ScaleChoice:
    """The scale vector one group got, at which alpha (AWQ and SmoothQuant alike)."""

    group: ScaleGroup
    alpha: float
    scales: torch.Tensor


@dataclass
class GroupResult(ScaleChoice):
    """With the search objective at alpha = 0 (RTN) and at the chosen alpha."""

    loss: float
    rtn_loss: float


G = TypeVar("G", bound=ScaleChoice)
Q = TypeVar("Q", bound=nn.Module)


@dataclass
class ScaledBlock(Generic[G, Q]):
    """What scaling one decoder block did, per scale group and per targeted layer."""

    groups: list[G] = field(default_factory=list)
    #: targeted layer (relative name) -> why it got no scale
    unscaled: dict[str, str] = field(default_factory=dict)
    #: relative name -> the quantized layer that replaced it
    quantized: dict[str, Q] = field(default_factory=dict)


@dataclass
class BlockResult(ScaledBlock[GroupResult, QuantizedLinear]):
    #: clipped layer (relative name) -> mean shrink of its max-abs ranges (0 = none)
    clip_shrink: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------ math


def normalized_scales(
    x_mean: torch.Tensor, alpha: float, w_mean: torch.Tensor | None = None
) -> torch.Tensor:
    """``s = mean|x|^alpha`` (``/ w_mean^(1-alpha)`` with duo scaling), clamped at 1e-4 and
    divided by ``sqrt(max(s) * min(s))``; non-finite entries become 1."""
    x_mean = x_mean.float()
    scales = x_mean.pow(alpha)
    if w_mean is not None:
        scales = scales / (w_mean.float().pow(1 - alpha) + 1e-4)
    scales = scales.clamp(min=1e-4)
    scales = scales / (scales.max() * scales.min()).sqrt()
    return torch.where(torch.isfinite(scales), scales, torch.ones_like(scales))


def weight_group_mean(weights: Sequence[torch.Tensor], config: QuantConfig) -> torch.Tensor:
    """Duo scaling's ``w_mean``: each weight's magnitude relative to its group's max-abs,
    averaged over all output rows of ``weights`` (concatenated), per input channel."""
    weight = torch.cat([w.detach().float() for w in weights], dim=0)
    g_idx = config.group_index(weight.shape[1], weight.device).long()
    index = g_idx.unsqueeze(0).expand_as(weight)
    group_max = torch.zeros(weight.shape[0], config.n_groups(weight.shape[1]), device=weight.device)
    group_max = group_max.scatter_reduce(1, index, weight.abs(), "amax", include_self=True)
    return (weight.abs() / (group_max.index_select(1, g_idx) + 1e-6)).mean(0)


def pseudo_quantize(weight: torch.Tensor, config: QuantConfig, keep: torch.Tensor | None) -> torch.Tensor:
    """The float32 weight round-to-nearest quantization gives (kept zeros exact)."""
    return quantize_rtn(weight, config, keep).dequantize()


@torch.no_grad()
def fold_scales(prev: nn.Module, layers: Sequence[nn.Module], scales: torch.Tensor) -> None:
    """Divide ``prev``'s output channels by ``scales`` (a norm's weight and bias, or a
    Linear's rows and bias) and multiply the input columns of ``layers`` by them: the
    float function is unchanged, zeros stay zeros."""
    scales = scales.float()
    if isinstance(prev, nn.Linear):
        prev.weight.copy_((prev.weight.float() / scales.view(-1, 1)).to(prev.weight.dtype))
    else:
        prev.weight.copy_((prev.weight.float() / scales).to(prev.weight.dtype))
    bias = getattr(prev, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.copy_((bias.float() / scales).to(bias.dtype))
    for layer in layers:
        layer.weight.copy_((layer.weight.float() * scales.view(1, -1)).to(layer.weight.dtype))


@torch.no_grad()
def search_clip(
    weight: torch.Tensor,
    x: torch.Tensor,
    config: QuantConfig,
    keep: torch.Tensor | None = None,
    n_grid: int = 20,
    max_shrink: float = 0.5,
    n_sample_token: int = 512,
) -> torch.Tensor:
    """Best max-abs range ``[out, G]`` per output row and group: the shrink
    ``1 - i / n_grid`` (``i < max_shrink * n_grid``) of the group's max |w| whose
    pseudo-quantized, clamped weight gives the least mean squared output error on ``x``
    ``[tokens, in]`` (every ``tokens // n_sample_token``-th token)."""
    weight = weight.detach().float()
    x = x.reshape(-1, x.shape[-1]).float()
    x = x[:: max(1, x.shape[0] // n_sample_token)].to(weight.device)
    out_features, in_features = weight.shape
    n_groups = config.n_groups(in_features)
    width = in_features if config.group_size == -1 else config.group_size
    best = torch.empty(out_features, n_groups, device=weight.device)
    for g in range(n_groups):
        cols = slice(g * width, min((g + 1) * width, in_features))
        w, xg = weight[:, cols], x[:, cols]
        kept = None if keep is None else keep[:, cols].to(weight.device)
        reference = xg @ w.T
        original = w.abs().amax(dim=1)
        best_max = original.clone()
        best_err = torch.full_like(original, math.inf)
        for i in range(int(max_shrink * n_grid)):
            max_val = original * (1 - i / n_grid)
            clamped = torch.maximum(torch.minimum(w, max_val[:, None]), -max_val[:, None])
            scale, zero = minmax_params(clamped.min(dim=1).values, clamped.max(dim=1).values,
                                        config.bits, config.symmetric)
            codes = quantize_codes(clamped, scale[:, None], zero[:, None], config.maxq)
            if kept is not None:
                codes = torch.where(kept, codes, zero[:, None])
            err = (xg @ ((codes - zero[:, None]) * scale[:, None]).T - reference).pow(2).mean(dim=0)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, max_val, best_max)
        best[:, g] = best_max
    return best


@torch.no_grad()
def apply_clip(layer: nn.Linear, max_val: torch.Tensor, config: QuantConfig) -> float:
    """Clamp ``layer``'s weight to ``[-max_val, max_val]`` of each row and group; returns
    the mean relative shrink of the ranges."""
    weight = layer.weight
    g_idx = config.group_index(weight.shape[1], weight.device).long()
    bound = max_val.to(weight.device).index_select(1, g_idx)
    original = weight.detach().float().abs()
    group_max = torch.zeros_like(max_val).scatter_reduce(
        1, g_idx.unsqueeze(0).expand_as(original), original, "amax", include_self=True
    )
    weight.copy_(torch.maximum(torch.minimum(weight.float(), bound), -bound).to(weight.dtype))
    nonzero = group_max > 0
    if not bool(nonzero.any()):
        return 0.0
    return float((1 - max_val[nonzero] / group_max[nonzero]).mean())


# ------------------------------------------------------------------------------ one block


def plan_groups(
    block: nn.Module, targets: Sequence[str], candidates: Sequence[ScaleGroup] = LLAMA_GROUPS
) -> tuple[list[ScaleGroup], dict[str, str]]:
    """The scale groups that apply to ``block`` and hold at least one of ``targets``
    (relative names), and why each other target gets no scale."""
    wanted = set(targets)
    groups: list[ScaleGroup] = []
    reasons: dict[str, str] = {}
    for group in candidates:
        members = [name for name in group.layers if name in wanted]
        if not members:
            continue
        problem = _group_problem(block, group)
        if problem is None:
            groups.append(group)
        else:
            for name in members:
                reasons.setdefault(name, problem)
    covered = {name for group in groups for name in group.layers}
    for name in targets:
        if name not in covered:
            reasons.setdefault(name, "no scale group of this architecture holds it")
    return groups, {name: reason for name, reason in reasons.items() if name not in covered}


def _group_problem(block: nn.Module, group: ScaleGroup) -> str | None:
    """Why ``group`` cannot be scaled in ``block`` (None: it can)."""
    try:
        prev = block.get_submodule(group.prev)
        layers = [block.get_submodule(name) for name in group.layers]
        block.get_submodule(group.parent)
    except AttributeError:
        return "the block lacks this scale group's modules"
    for name, layer in zip(group.layers, layers, strict=True):
        if FLOAT_WEIGHT not in capabilities(layer):
            return f"{name} is {layer_kind(layer)} ({type(layer).__name__}), not a float Linear whose columns can scale"
    width = layers[0].in_features
    if any(layer.in_features != width for layer in layers):
        return "its layers have different input widths"
    if isinstance(prev, nn.Linear):
        if FLOAT_WEIGHT not in capabilities(prev):
            return f"{group.prev} is not a float Linear whose rows can scale"
        if prev.out_features != width:
            return (f"{group.prev} has {prev.out_features} outputs and {group.layers[0]} {width} inputs "
                    "(grouped-query attention): the scale cannot fold")
        return None
    weight = getattr(prev, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or weight.numel() != width:
        return f"{group.prev} ({type(prev).__name__}) has no per-channel weight to fold the scale into"
    return None


@dataclass
class _Captured:
    """Per window: the inputs of the layers and the call arguments of the parents."""

    inputs: dict[str, list[torch.Tensor]]
    calls: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]]


@torch.no_grad()
def _capture(block: nn.Module, inputs: BlockInputs, layers: Mapping[str, nn.Module],
             parents: Mapping[str, nn.Module]) -> _Captured:
    captured = _Captured({name: [] for name in layers}, {name: [] for name in parents})
    handles = []
    for name, module in parents.items():
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], name: str = name) -> None:
            captured.calls[name].append((tuple(args), dict(kwargs)))

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with record_inputs(layers, lambda name, x: captured.inputs[name].append(x)):
            for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs, strict=True):
                block(hidden, *args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _run_parent(module: nn.Module, call: tuple[tuple[Any, ...], dict[str, Any]]) -> torch.Tensor:
    out = module(*call[0], **call[1])
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


@torch.no_grad()
def _search_group(
    block: nn.Module,
    group: ScaleGroup,
    captured: _Captured,
    quantize: set[str],
    quant: QuantConfig,
    config: AWQConfig,
    keeps: Mapping[str, torch.Tensor | None],
) -> GroupResult:
    layers = {name: block.get_submodule(name) for name in group.layers}
    parent = block.get_submodule(group.parent)
    first = group.layers[0]
    if group.parent in captured.calls:
        calls = captured.calls[group.parent]
    else:  # the parent is the single layer: its calls are its inputs
        calls = [((x,), {}) for x in captured.inputs[first]]
    xs = captured.inputs[first]
    if not xs:
        raise RuntimeError(f"awq: {first!r} received no input during calibration")
    total = sum(x.reshape(-1, x.shape[-1]).shape[0] for x in xs)
    x_mean = sum(x.reshape(-1, x.shape[-1]).float().abs().sum(0) for x in xs) / total
    w_mean = weight_group_mean([m.weight for m in layers.values()], quant) if config.duo_scaling else None
    reference = [_run_parent(parent, call).float() for call in calls]
    originals = {name: layers[name].weight.detach().clone() for name in quantize}
    losses: list[tuple[float, float, torch.Tensor]] = []
    try:
        for i in range(config.n_grid):
            alpha = i / config.n_grid
            scales = normalized_scales(x_mean, alpha, w_mean).to(xs[0].device)
            for name in quantize:
                weight = originals[name].float() * scales
                layers[name].weight.copy_((pseudo_quantize(weight, quant, keeps[name]) / scales).to(weight.dtype))
            error = sum(float((_run_parent(parent, call).float() - ref).pow(2).sum())
                        for call, ref in zip(calls, reference, strict=True))
            losses.append((error / sum(ref.numel() for ref in reference), alpha, scales))
    finally:
        for name, weight in originals.items():
            layers[name].weight.copy_(weight)
    loss, alpha, scales = min(losses, key=lambda item: item[0])
    return GroupResult(group, alpha, scales, loss, losses[0][0])


@torch.no_grad()
def awq_block(
    block: nn.Module,
    inputs: BlockInputs,
    targets: Sequence[str],
    quant: QuantConfig,
    config: AWQConfig = AWQConfig(),
    *,
    quantize: bool = True,
    install: Callable[[str, QuantizedLinear], None] | None = None,
    candidates: Sequence[ScaleGroup] = LLAMA_GROUPS,
) -> BlockResult:
    """AWQ on one decoder block: search and fold the scales of every applicable group,
    clip (``config.clip``), then (``quantize``) replace each of ``targets`` (names
    relative to ``block``) by a :class:`QuantizedLinear` through ``install(name, layer)``
    (default: set it on ``block``). With ``quantize=False`` only the scales are folded
    (and clipping applied): the block's float function is unchanged unless it clips."""
    result = BlockResult()
    groups, result.unscaled = plan_groups(block, targets, candidates)
    target_set = set(targets)
    layer_names = list(dict.fromkeys([name for g in groups for name in g.layers] + list(targets)))
    modules = {name: block.get_submodule(name) for name in layer_names}
    parents = {g.parent: block.get_submodule(g.parent) for g in groups if g.parent not in modules}
    keeps = {name: keep_mask(module) if FLOAT_WEIGHT in capabilities(module) else None
             for name, module in modules.items()}
    captured = _capture(block, inputs, modules, parents)

    for group in groups:
        quantized = {name for name in group.layers if name in target_set}
        result.groups.append(_search_group(block, group, captured, quantized, quant, config, keeps))
    del captured.calls  # free the parents' arguments before clipping
    input_scale: dict[str, torch.Tensor] = {}
    for found in result.groups:
        group = found.group
        fold_scales(block.get_submodule(group.prev), [modules[name] for name in group.layers], found.scales)
        for name in group.layers:
            input_scale[name] = found.scales

    for name in targets:
        module = modules[name]
        if config.clip and not any(word in name.rpartition(".")[2] for word in NO_CLIP):
            x = torch.cat([x.reshape(-1, x.shape[-1]) for x in captured.inputs[name]])
            if name in input_scale:
                x = x.float() / input_scale[name].to(x.device)
            max_val = search_clip(module.weight, x, quant, keeps[name], config.n_grid, config.max_shrink,
                                  config.n_sample_token)
            result.clip_shrink[name] = apply_clip(module, max_val, quant)
        if quantize:
            layer = QuantizedLinear.from_quantized(
                quantize_rtn(module.weight, quant, keeps[name]), module.bias, get_mask(module),
                dtype=module.weight.dtype,
            )
            if install is not None:
                install(name, layer)
            else:
                replace_module(block, name, layer)
            result.quantized[name] = layer
    return result
