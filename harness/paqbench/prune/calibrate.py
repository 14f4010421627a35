"""Layer-sequential calibration for layer-wise pruning (Wanda, SparseGPT).

Built on :mod:`paqbench.quant.sequential` exactly as GPTQ is: the calibration windows
reach one decoder block at a time; inside a block the targeted layers are handled group
by group (``true_sequential``: q/k/v, o, gate/up, down, each group's inputs collected
through the already pruned earlier groups) or all from the block's inputs at once (the
Wanda and SparseGPT reference code); the next block receives the outputs of the pruned
one. Memory: one block's activations for all windows plus one statistic per layer of a
group (a Hessian for SparseGPT, a vector for Wanda).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import torch
from torch import nn

from paqbench.layers import decoder_blocks
from paqbench.quant.sequential import BlockInputs, collect_inputs, layer_sequential, linear_groups


class InputStatistic(Protocol):
    rows: int

    def add(self, inputs: torch.Tensor) -> None: ...


def check_inside_blocks(model: nn.Module, names: Iterable[str], method: str) -> None:
    """Layer-sequential methods only reach layers inside the decoder blocks."""
    prefix, _ = decoder_blocks(model)
    outside = [name for name in names if not name.startswith(prefix + ".")]
    if outside:
        raise ValueError(
            f"{method} calibrates decoder blocks one by one and cannot prune {outside[0]!r}, "
            f"which is outside {prefix!r}; narrow `targets` (or use magnitude for it)"
        )


def calibrate_and_prune(
    model: nn.Module,
    names: Sequence[str],
    batches: Sequence[torch.Tensor],
    *,
    statistic: Callable[[nn.Module], InputStatistic],
    prune: Callable[[str, nn.Module, InputStatistic], None],
    true_sequential: bool,
    method: str,
    progress: Callable[[Iterable[int], str, int], Iterable[int]] | None = None,
) -> None:
    """For every targeted layer (``names``, inside decoder blocks): gather
    ``statistic(layer)`` over its calibration inputs, then call ``prune(full_name, layer,
    statistic)``, which may replace the layer in the model."""
    check_inside_blocks(model, names, method)
    done: set[str] = set()

    def process(index: int, block_name: str, block: nn.Module, inputs: BlockInputs) -> None:
        prefix = block_name + "."
        local = [name[len(prefix):] for name in names if name.startswith(prefix)]
        if not local:
            return
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
                prune(full_name, module, stats[name])
                stats[name] = None  # free the statistic before the next layer's
                done.add(full_name)

    with torch.no_grad():
        layer_sequential(model, batches, process, progress=progress, desc=f"{method} blocks")
    missed = [name for name in names if name not in done]
    if missed:
        raise RuntimeError(f"{method} did not reach {missed[0]!r}; is it inside a decoder block?")
