"""The pieces of layer-sequential calibration: capturing, running and probing one block.

The driver that loops over the blocks (and onloads offloaded ones) is
:func:`paqbench.blockwise.driver.layer_sequential`; every layer-wise method runs on it.

The calibration windows are run through the model once, up to the first decoder block,
where a pre-hook records what the block receives (hidden states and the keyword
arguments the model computed for it: attention mask, position ids, rotary position
embeddings in transformers 5.x) and stops the forward. From then on only one block runs
at a time: the method compresses block ``i`` from the inputs it receives, and block
``i + 1`` receives the outputs of the *already compressed* block ``i``, so every block is
calibrated on the activations it will really see. Memory: one block's activations for
all windows, plus the model itself.

Per-Linear statistics (Hessians, input norms) are collected with :func:`collect_inputs`
(which stops each forward once the layers of interest have run) or, for any forward,
:func:`record_inputs`, a context manager that installs forward hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from paqbench.models.device import input_device


class _StopForward(Exception):
    """Raised by the capture hook once block 0's inputs are recorded."""


@dataclass
class BlockInputs:
    """What a decoder block receives for each calibration window."""

    hidden: list[torch.Tensor]
    #: positional arguments after the hidden states, per window
    args: list[tuple[Any, ...]]
    #: keyword arguments, per window (windows of one length share one dict)
    kwargs: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.hidden)

    def with_hidden(self, hidden: list[torch.Tensor]) -> BlockInputs:
        return BlockInputs(hidden, self.args, self.kwargs)


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, batches: Sequence[torch.Tensor], block: nn.Module
) -> BlockInputs:
    """Run each batch of token ids through ``model`` until ``block`` and record its inputs."""
    device = input_device(model)
    captured = BlockInputs([], [], [])

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kwargs = dict(kwargs)
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        if captured.kwargs and _same(captured.kwargs[-1], kwargs) and _same(captured.args[-1], rest):
            kwargs, rest = captured.kwargs[-1], captured.args[-1]
        captured.hidden.append(hidden)
        captured.args.append(rest)
        captured.kwargs.append(kwargs)
        raise _StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            with suppress(_StopForward):
                model(batch.to(device), use_cache=False)
    finally:
        handle.remove()
    if len(captured) != len(batches):
        raise RuntimeError(f"{type(model).__name__}'s forward did not reach its first decoder block")
    return captured


@torch.no_grad()
def forward_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    """The block's output hidden states for every window."""
    outputs = []
    for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs, strict=True):
        out = block(hidden, *args, **kwargs)
        if isinstance(out, (tuple, list)):  # transformers < 5 returns (hidden, ...)
            out = out[0]
        outputs.append(out)
    return outputs


@contextmanager
def record_inputs(
    modules: Mapping[str, nn.Module], record: Callable[[str, torch.Tensor], None]
) -> Iterator[None]:
    """While active, every forward of ``modules[name]`` calls ``record(name, input)``."""
    handles = []
    for name, module in modules.items():
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any, name: str = name) -> None:
            record(name, args[0].detach())

        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def collect_inputs(
    block: nn.Module,
    inputs: BlockInputs,
    modules: Mapping[str, nn.Module],
    record: Callable[[str, torch.Tensor], None],
) -> None:
    """Run every window through ``block`` calling ``record(name, input)`` for each of
    ``modules``; each window's forward stops as soon as all of them have run, since the
    rest of the block cannot change their inputs (with true-sequential GPTQ on Llama this
    skips the MLP for q/k/v and o, about half the block's compute). A module the block
    calls twice in one forward would be recorded only up to that point."""
    pending: set[str] = set()

    def on_input(name: str, tensor: torch.Tensor) -> None:
        record(name, tensor)
        pending.discard(name)
        if not pending:
            raise _StopForward

    with record_inputs(modules, on_input):
        for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs, strict=True):
            pending.update(modules)
            with suppress(_StopForward):
                block(hidden, *args, **kwargs)


@torch.no_grad()
def linear_groups(block: nn.Module, modules: Mapping[str, nn.Module], inputs: BlockInputs) -> list[list[str]]:
    """``modules`` grouped by the input they share, in the order the block calls them
    (Llama: q/k/v, o, gate/up, down). "True sequential" calibration quantizes one group,
    then collects the next group's inputs through the already quantized ones."""
    seen: list[tuple[torch.Tensor, list[str]]] = []

    def record(name: str, tensor: torch.Tensor) -> None:
        for other, names in seen:
            if other is tensor or (other.data_ptr() == tensor.data_ptr() and other.shape == tensor.shape):
                if name not in names:
                    names.append(name)
                return
        seen.append((tensor, [name]))

    one = BlockInputs(inputs.hidden[:1], inputs.args[:1], inputs.kwargs[:1])
    with record_inputs(modules, record):
        forward_block(block, one)
    groups = [names for _, names in seen]
    called = {name for names in groups for name in names}
    uncalled = [name for name in modules if name not in called]
    if uncalled:
        groups.append(uncalled)
    return groups


def _same(a: Any, b: Any) -> bool:
    """Whether two captured arguments are equal (tensors by value)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            and bool(torch.equal(a, b))
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and type(a) is type(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # objects without a usable equality (caches): never shared
        return False
