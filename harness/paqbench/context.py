"""The run context handed to every method and metric.

It carries what a step needs and nothing global: tokenizer, device, dtype, seed,
calibration batches (built once per run, lazily), the original model when a method
needs a teacher, progress bars, a logger and a scratch directory.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tqdm.auto import tqdm

from paqbench.data.calibration import build_calibration
from paqbench.data.resolve import open_dataset

if TYPE_CHECKING:
    import torch

    from paqbench.export.record import ExportRecord
    from paqbench.registry import Registry
    from paqbench.suite.schema import CalibrationConfig, ModelConfig

T = TypeVar("T")


def progress_enabled() -> bool:
    """Progress bars go to stderr when it is a terminal, unless PAQBENCH_PROGRESS=0;
    PAQBENCH_PROGRESS=1 forces them on (e.g. in a CI log)."""
    flag = os.environ.get("PAQBENCH_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr when progress is enabled."""
    if not progress_enabled():
        yield from iterable
        return

    yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr)


@dataclass
class RunContext:
    """Everything a compression step or metric may use during one run."""

    run_name: str
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    seed: int
    scratch_dir: Path
    registry: Registry
    model_config: ModelConfig
    calibration_config: CalibrationConfig
    #: Caps evaluation work (windows, examples) for quick runs; None means no cap.
    limit: int | None = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("paqbench"))
    #: Set by the runner while a step runs, for error messages ("step 2 (gptq)").
    current_step: str | None = None
    #: What the run's export phase wrote, by target (``gguf``, ``compressed-tensors``): the
    #: engine backends of the generation metrics time these artifacts.
    exports: dict[str, ExportRecord] = field(default_factory=dict)
    _calibration: list[torch.Tensor] | None = field(default=None, repr=False)
    _teacher: torch.nn.Module | None = field(default=None, repr=False)
    _teacher_loader: Callable[[], torch.nn.Module] | None = field(default=None, repr=False)

    def progress(self, iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        """A progress bar labelled with the run name."""
        return progress(iterable, f"{self.run_name}: {desc}", total=total)

    def calibration_batches(self) -> list[torch.Tensor]:
        """Token windows for calibration, as the papers draw them: ``n_samples`` random
        windows of ``seqlen`` tokens, seeded. Built on first use, then cached."""
        if self._calibration is None:
            self._calibration = build_calibration(self.calibration_config, self)
        return self._calibration

    def teacher(self) -> torch.nn.Module:
        """The uncompressed model, loaded again from the same source on first use (for
        distillation or methods that compare against the original)."""
        if self._teacher is None:
            if self._teacher_loader is None:
                raise RuntimeError("this run context has no way to load the original model")
            self._teacher = self._teacher_loader()
        return self._teacher

    def release_teacher(self) -> None:
        """Drop the loaded original model, so that later steps and metrics (peak memory
        above all) do not pay for it."""
        self._teacher = None

    def dataset(self, name: str, split: str):
        """Load a registered dataset's split (see ``paqbench list datasets``)."""
        return open_dataset(self.registry, name).load(split, self)
