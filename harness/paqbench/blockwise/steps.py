"""The common front of every method step: which layers, checked, then replaced or calibrated.

Each method plugin starts the same way: select the targeted layers, refuse a layer kind it
does not accept, refuse a layer lacking a capability it needs, all before any work. That
is :func:`checked_targets`. A method without calibration that turns each target into a new
layer runs all of its loop through :func:`replace_targets` (or :func:`replace_each` when
it does work between the checks and the loop); a layer-sequential method gets its checked
names and calibration windows from :func:`calibration_targets`. A plugin then only says
what to do with one layer, which is what keeps plugins thin adapters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

import torch
from torch import nn

from paqbench.blockwise.driver import check_inside_blocks, each_target
from paqbench.layers import check_supported, require, select_targets
from paqbench.quant.linear import replace_module

L = TypeVar("L", bound=nn.Module)


class StepMethod(Protocol):
    """What the checks read of a method: its name and the layer kinds it accepts."""

    name: str
    accepts: frozenset[str]


class StepContext(Protocol):
    """What the checks and loops read of the run (:class:`paqbench.context.RunContext`)."""

    current_step: str | None

    def progress(self, iterable: Iterable, desc: str, total: int | None = None) -> Iterable: ...

    def calibration_batches(self) -> list[torch.Tensor]: ...


def layer_device(module: nn.Module) -> torch.device:
    """Where a layer computes: its first parameter's device, or its first buffer's for a
    packed format that holds no parameter (a calibration statistic is accumulated there)."""
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()))
    return tensor.device


def checked_targets(
    model: nn.Module, pattern: str | None, method: StepMethod, ctx: StepContext,
    needs: str | Iterable[str] | None = None,
) -> dict[str, nn.Module]:
    """The targeted layers (``pattern`` as in :func:`paqbench.layers.select_targets`),
    refused up front if one is a kind ``method`` does not accept or lacks ``needs`` (a
    capability, or alternatives any one of which suffices)."""
    targets = select_targets(model, pattern)
    check_supported(targets, method.accepts, method.name, ctx.current_step)
    if needs is not None:
        require(targets, needs, method.name, ctx.current_step)
    return targets


def replace_each(
    model: nn.Module, names: Sequence[str], ctx: StepContext, desc: str,
    convert: Callable[[str, nn.Module], L],
) -> dict[str, L]:
    """Put ``convert(name, layer)`` in the model in place of every layer ``names``, in
    model order (one block onloaded at a time on a model left on disk); the new layers by
    name. The caller holds no reference to the old layers, so each one's memory is freed
    as soon as it is replaced."""
    layers: dict[str, L] = {}
    for name, module in each_target(model, names, ctx.progress, desc):
        layer = convert(name, module)
        replace_module(model, name, layer)
        layers[name] = layer
    return layers


def replace_targets(
    model: nn.Module, pattern: str | None, method: StepMethod, ctx: StepContext,
    convert: Callable[[str, nn.Module], L],
) -> dict[str, L]:
    """:func:`checked_targets`, then :func:`replace_each` over them: the whole apply of a
    method that converts each target on its own."""
    names = list(checked_targets(model, pattern, method, ctx))
    return replace_each(model, names, ctx, method.name, convert)


def calibration_targets(
    model: nn.Module, pattern: str | None, method: StepMethod, ctx: StepContext, *,
    needs: str | Iterable[str] | None = None, verb: str = "prune", instead: str = "magnitude",
    check: Callable[[Mapping[str, nn.Module]], None] | None = None,
) -> tuple[list[str], list[torch.Tensor]]:
    """The names of the checked targets of a layer-sequential method, all inside the
    decoder blocks (``verb``/``instead`` word the refusal), after ``check(targets)`` (the
    method's own up-front checks); and the run's calibration windows."""
    targets = checked_targets(model, pattern, method, ctx, needs)
    check_inside_blocks(model, targets, method.name, verb, instead)
    if check is not None:
        check(targets)
    return list(targets), ctx.calibration_batches()
