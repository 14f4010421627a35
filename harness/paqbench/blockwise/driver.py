"""The one layer-sequential driver: every method that works block by block runs on it.

Calibrated methods (GPTQ, AWQ, SparseGPT, Wanda) use :func:`layer_sequential` through
:func:`each_block` (a method that handles a whole block, AWQ) or :func:`calibrate_layers`
(a statistic per Linear, then a callback per Linear: GPTQ, SparseGPT, Wanda). The
calibration windows run through the model once up to the first decoder block (their
inputs are captured there, :func:`paqbench.quant.sequential.capture_block_inputs`); from
then on one block runs at a time, the method compresses it, and the next block receives
the outputs of the already compressed one. Weight-only methods without calibration (RTN,
NF4, HQQ, k-means, FP8, W8A8) walk their layers with :func:`each_target`.

On a model whose weights are left on disk (``model.offload: disk``,
:mod:`paqbench.blockwise.offload`) the same loops onload each block before it is
handled and offload it after: peak memory is the resident part of the model (embeddings,
head, compressed layers so far) plus one float block and one block's activations for all
windows. On a model in memory nothing is onloaded and the computation is unchanged.

While a block is handled (the method's calibration forwards and the forward that gives
the next block its inputs), its already quantized layers dequantize their weight once
and reuse it for every window (:func:`paqbench.quant.linear.dequantize_once`, bitwise
the same outputs); those float weights are dropped before the next block, and before an
offloaded block is written back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol, TypeVar

import torch
from torch import nn

from paqbench.blockwise.offload import DiskOffload, offload_of
from paqbench.layers import decoder_blocks
from paqbench.quant.linear import dequantize_once
from paqbench.quant.sequential import (
    BlockInputs,
    capture_block_inputs,
    collect_inputs,
    forward_block,
    linear_groups,
)

Progress = Callable[[Iterable[int], str, int], Iterable[int]]
T = TypeVar("T")


class InputStatistic(Protocol):
    """What :func:`calibrate_layers` accumulates per layer (a Hessian, input norms)."""

    rows: int

    def add(self, inputs: torch.Tensor) -> None: ...


def check_inside_blocks(model: nn.Module, names: Iterable[str], method: str, verb: str = "prune",
                        instead: str = "magnitude") -> None:
    """Layer-sequential methods only reach layers inside the decoder blocks."""
    prefix, _ = decoder_blocks(model)
    outside = [name for name in names if not name.startswith(prefix + ".")]
    if outside:
        raise ValueError(
            f"{method} calibrates decoder blocks one by one and cannot {verb} {outside[0]!r}, "
            f"which is outside {prefix!r}; narrow `targets` (or use {instead} for it)"
        )


def layer_sequential(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    process_block: Callable[[int, str, nn.Module, BlockInputs], None],
    progress: Progress | None = None,
    desc: str = "blocks",
) -> None:
    """Call ``process_block(index, name, block, inputs)`` on every decoder block in order;
    it compresses the block in place, whose outputs then feed the next block. An
    offloaded block is onloaded first and offloaded once its outputs are computed."""
    prefix, blocks = decoder_blocks(model)
    offload = offload_of(model)
    was_training = model.training
    model.eval()
    try:
        inputs = capture_block_inputs(model, batches, blocks[0])
        indices: Iterable[int] = range(len(blocks))
        if progress is not None:
            indices = progress(indices, desc, len(blocks))
        for index in indices:
            block, name = blocks[index], f"{prefix}.{index}"
            if offload is not None:
                offload.onload(block, name)
            with dequantize_once():  # one float weight per quantized layer of this block, not one per window
                process_block(index, name, block, inputs)
                if index + 1 < len(blocks):
                    inputs = inputs.with_hidden(forward_block(block, inputs))
            if offload is not None:
                offload.offload(block, name)
    finally:
        model.train(was_training)


def each_block(
    model: nn.Module,
    names: Sequence[str],
    batches: Sequence[torch.Tensor],
    process: Callable[[str, nn.Module, list[str], BlockInputs], None],
    *,
    method: str,
    verb: str,
    instead: str,
    progress: Progress | None = None,
) -> None:
    """Layer-sequential calibration of the targeted layers ``names`` (qualified, inside
    decoder blocks): ``process(block_name, block, local_names, inputs)`` for every block
    that holds some of them. Raises if a name was never reached."""
    check_inside_blocks(model, names, method, verb, instead)
    reached: set[str] = set()

    def visit(index: int, block_name: str, block: nn.Module, inputs: BlockInputs) -> None:
        prefix = block_name + "."
        local = [name[len(prefix):] for name in names if name.startswith(prefix)]
        if not local:
            return
        process(block_name, block, local, inputs)
        reached.update(prefix + name for name in local)

    with torch.no_grad():
        layer_sequential(model, batches, visit, progress=progress, desc=f"{method} blocks")
    missed = [name for name in names if name not in reached]
    if missed:
        raise RuntimeError(f"{method} did not reach {missed[0]!r}; is it inside a decoder block?")


def calibrate_layers(
    model: nn.Module,
    names: Sequence[str],
    batches: Sequence[torch.Tensor],
    *,
    statistic: Callable[[nn.Module], InputStatistic],
    handle: Callable[[str, nn.Module, InputStatistic], None],
    true_sequential: bool,
    method: str,
    verb: str = "prune",
    instead: str = "magnitude",
    progress: Progress | None = None,
) -> None:
    """For every targeted layer: gather ``statistic(layer)`` over its calibration inputs,
    then ``handle(full_name, layer, statistic)``, which may replace the layer in the model.
    Within a block the layers go group by group (``true_sequential``: q/k/v, o, gate/up,
    down, each group's inputs collected through the already handled earlier groups) or
    all from the block's inputs at once."""

    def process(block_name: str, block: nn.Module, local: list[str], inputs: BlockInputs) -> None:
        prefix = block_name + "."
        modules = {name: block.get_submodule(name) for name in local}
        groups = linear_groups(block, modules, inputs) if true_sequential else [local]
        del modules
        for group in groups:
            current = {name: block.get_submodule(name) for name in group}
            stats = {name: statistic(module) for name, module in current.items()}
            collect_inputs(block, inputs, current, lambda name, x, stats=stats: stats[name].add(x))
            for name, module in current.items():
                full_name = prefix + name
                if stats[name].rows == 0:
                    raise RuntimeError(f"{method}: layer {full_name!r} received no input during calibration")
                handle(full_name, module, stats[name])
                stats[name] = None  # free the statistic before the next layer's
            del current

    each_block(model, names, batches, process, method=method, verb=verb, instead=instead, progress=progress)


def each_target(
    model: nn.Module, names: Sequence[str], progress: Callable[[Iterable[str], str, int], Iterable[str]],
    desc: str,
) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` for every targeted layer in model order, for methods without
    calibration. With weights on disk, a block is onloaded when its first layer comes up
    and offloaded after its last, so the caller may replace each layer in the model."""
    with OnloadedModules(model, names) as modules:
        for name in progress(names, desc, len(names)):
            yield name, modules[name]


class OnloadedModules(Mapping[str, nn.Module]):
    """The modules ``names`` of ``model`` by name; on an offloaded model, looking one up
    onloads its block (and offloads the block looked up before), so a pass in model order
    over all of them holds one float block at a time. A context manager: leaving it
    offloads the last block. On a model in memory it is a plain view."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self._model = model
        self._names = list(names)
        self._offload: DiskOffload | None = offload_of(model)
        self._prefix = decoder_blocks(model)[0] if self._offload is not None else ""
        self._current: str | None = None

    def __getitem__(self, name: str) -> nn.Module:
        if self._offload is not None:
            self._switch(_block_of(name, self._prefix))
        return self._model.get_submodule(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def _switch(self, block: str | None) -> None:
        if block == self._current:
            return
        assert self._offload is not None
        if self._current is not None:
            self._offload.offload(self._model.get_submodule(self._current), self._current)
        if block is not None:
            self._offload.onload(self._model.get_submodule(block), block)
        self._current = block

    def close(self) -> None:
        if self._offload is not None:
            self._switch(None)

    def __enter__(self) -> OnloadedModules:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _block_of(name: str, prefix: str) -> str | None:
    """``model.layers.3`` for ``model.layers.3.mlp.up_proj``; None outside the blocks."""
    if not name.startswith(prefix + "."):
        return None
    index = name[len(prefix) + 1:].split(".", 1)[0]
    return f"{prefix}.{index}"
