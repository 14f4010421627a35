"""What actually ran, read from the run records rather than from the suite's prose: the
suite file's description may name another model or device than ``--model`` /
``--device`` put in its place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Run = Mapping[str, Any]


@dataclass(frozen=True)
class Setup:
    """One model/dtype/device combination and the runs that used it."""

    model: str
    source: str  # the model source plugin that read it (embedded, hub, local, gguf)
    dtype: str
    device: str
    runs: int


def effective_setups(runs: Sequence[Run], suite: Mapping[str, Any] | None = None) -> list[Setup]:
    """The distinct (model, dtype, device) the recorded runs loaded, most used first.

    The model is the run's resolved model config (overrides applied); dtype and device are
    what the load phase recorded (``auto`` resolved). Runs without a load record fall back
    to the resolved suite's model config.
    """
    counts: dict[tuple[str, str, str, str], int] = {}
    fallback = (suite or {}).get("model") or {}
    for run in runs:
        model = run.get("model") or fallback
        info = ((run.get("load") or {}).get("info")) or {}
        key = (str(model.get("source", "?")), str(info.get("source", model.get("kind") or "")),
               str(info.get("dtype", model.get("dtype", "?"))), str(info.get("device", model.get("device", "?"))))
        counts[key] = counts.get(key, 0) + 1
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    return [Setup(model, source, dtype.removeprefix("torch."), device, n)
            for (model, source, dtype, device), n in ordered]


def describe(setup: Setup, total: int) -> str:
    """``smollm2-135m (embedded), float32 on cpu`` plus ``(2 of 5 runs)`` when runs differ."""
    source = f" ({setup.source})" if setup.source and setup.source != setup.model else ""
    share = f" ({setup.runs} of {total} runs)" if setup.runs != total else ""
    return f"{setup.model}{source}, {setup.dtype} on {setup.device}{share}"


def count_runs(n: int) -> str:
    """``1 run``, ``5 runs``."""
    return f"{n} run" if n == 1 else f"{n} runs"
