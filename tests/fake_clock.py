"""A fake host clock for timing tests: it moves only when a model runs a forward pass, by
fixed amounts, so timed metrics give exact numbers whatever the machine's speed or load."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch


class FakeTime:
    """A host clock that stands still unless something advances it."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def costing(model: torch.nn.Module, now: FakeTime, prefill_s: float | Iterable[float], step_s: float,
            log: list[str] | None = None, label: str = "") -> torch.nn.Module:
    """``model`` whose forward passes advance ``now``: each prefill (the whole prompt, one per
    generate call) by the next of ``prefill_s`` (or always by it), each decode step by
    ``step_s``; ``log`` gets ``label`` at each prefill. Powers of two keep the sums exact."""
    prefills = itertools.repeat(prefill_s) if isinstance(prefill_s, float) else iter(prefill_s)

    def advance(module, args, kwargs):
        if kwargs["input_ids"].shape[1] > 1:
            now.t += next(prefills)
            if log is not None:
                log.append(label)
        else:
            now.t += step_s

    model.register_forward_pre_hook(advance, with_kwargs=True)
    return model
