"""Execute one run in this process: load, compress step by step, measure.

A step that raises ends the run (metrics on a half-compressed model would mislead);
a metric that raises is recorded and the other metrics still run. Everything measured
before a failure is kept in the result.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from paqbench.blockwise.offload import offload_of
from paqbench.context import RunContext
from paqbench.environment import capture_environment
from paqbench.export.phase import export_phase
from paqbench.interfaces import Measurement, Unavailable
from paqbench.measure.memory import PeakMemory
from paqbench.models.device import resolve_device, resolve_dtype
from paqbench.planner import RunSpec
from paqbench.registry import Registry, get_registry
from paqbench.runner.result import PhaseRecord, RunResult
from paqbench.suite.schema import CalibrationConfig, ModelConfig

logger = logging.getLogger("paqbench")

Progress = Callable[[str], None]


class RunTimedOut(BaseException):
    """Raised in an in-process run when its ``--timeout`` passes (see ``isolation.deadline``).

    A BaseException, like KeyboardInterrupt, so that the step's and metrics' ``except
    Exception`` do not swallow it and let the next metric start.
    """


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _error(exc: BaseException) -> dict[str, str]:
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


def execute_run(
    spec: RunSpec,
    suite_name: str,
    scratch_root: Path | None = None,
    registry: Registry | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run ``spec`` here and return its result; never raises for a failing run.

    ``progress`` gets one line as each phase (load, each step, each metric) starts, with
    the seconds since the run started, so a long run shows where it is without ``-v``.
    The scratch folder's name carries this process's id, so the session can tell the
    folders of dead runs from live ones.
    """
    registry = registry or get_registry()
    started = time.perf_counter()
    result = RunResult(
        id=spec.config_hash, name=spec.name, pipeline=spec.pipeline, status="ok",
        spec=spec.to_dict(), suite=suite_name, sweep=spec.sweep, started_at=_now(),
        environment=capture_environment(),
    )
    scratch_root = Path(scratch_root or tempfile.gettempdir())
    scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"paqbench-{spec.config_hash}-{os.getpid()}-", dir=scratch_root))

    def phase(what: str) -> None:
        if progress is not None:
            progress(f"{what} (at {time.perf_counter() - started:.1f} s)")

    try:
        _execute(spec, registry, result, scratch, phase)
    except Exception as exc:  # load failures and bugs: recorded, never lost
        result.status = "failed"
        result.error = result.error or _error(exc)
    except RunTimedOut as exc:  # what was measured before the limit is kept
        result.status = "failed"
        result.error = {**_error(exc), "type": "TimeoutError"}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        result.finished_at = _now()
        result.wall_s = time.perf_counter() - started
    return result


def _execute(spec: RunSpec, registry: Registry, result: RunResult, scratch: Path, phase: Progress) -> None:
    seed_everything(spec.seed)
    model_config = ModelConfig.model_validate(spec.model)
    device = resolve_device(model_config.device)
    dtype = resolve_dtype(model_config.dtype, device)
    source = registry.model_source(spec.model_source)()

    ctx = RunContext(
        run_name=spec.name, tokenizer=None, device=device, dtype=dtype, seed=spec.seed,
        scratch_dir=scratch, registry=registry, model_config=model_config,
        calibration_config=CalibrationConfig.model_validate(spec.calibration), limit=spec.limit,
    )

    logger.info("%s: loading %s (%s, %s on %s)", spec.name, model_config.source, spec.model_source, dtype, device)
    phase(f"load {model_config.source}")
    began = time.perf_counter()
    with PeakMemory(device) as peak:
        model, tokenizer = source.load(model_config, ctx)
    result.load = PhaseRecord("load", time.perf_counter() - began, peak.peak.to_dict(),
                              info={"source": spec.model_source, "dtype": str(dtype), "device": str(device)})
    ctx.tokenizer = tokenizer
    ctx._teacher_loader = lambda: source.load(model_config, ctx)[0]

    for index, step in enumerate(spec.steps, start=1):
        cls = registry.method(step.method)
        ctx.current_step = f"{index} ({step.method})"
        logger.info("%s: step %s", spec.name, ctx.current_step)
        phase(f"step {index}/{len(spec.steps)} {step.method}")
        began = time.perf_counter()
        record = PhaseRecord(step.method, 0.0, params=step.params)
        result.steps.append(record)
        try:
            if offload_of(model) is not None and not cls.supports_offload:
                raise ValueError(f"method {step.method!r} needs the whole model in memory and cannot run with "
                                 "model.offload: disk")
            with PeakMemory(device) as peak:
                info = cls().apply(model, cls.Params.model_validate(step.params), ctx)
        except Exception as exc:
            record.wall_s = time.perf_counter() - began
            record.error = f"{type(exc).__name__}: {exc}"
            result.status = "failed"
            result.error = _error(exc)
            result.error["message"] = f"step {ctx.current_step} failed: {exc}"
            if isinstance(exc, Unavailable):  # a missing peer: every metric says why, not only the error
                record.info = {"unavailable": str(exc)}
                result.measurements.extend(
                    Measurement.unavailable_because(m.name, "*", "", f"step {ctx.current_step}: {exc}").to_dict()
                    for m in spec.metrics
                )
            return
        record.wall_s = time.perf_counter() - began
        record.memory = peak.peak.to_dict()
        record.info = info or None
    ctx.current_step = None

    if spec.export:
        _export(spec, model, ctx, result, scratch, phase)

    failures = []
    for metric in spec.metrics:
        cls = registry.metric(metric.name)
        logger.info("%s: measuring %s", spec.name, metric.name)
        phase(f"metric {metric.name}")
        began = time.perf_counter()
        record = PhaseRecord(metric.name, 0.0, params=metric.params)
        result.metrics.append(record)
        if offload_of(model) is not None and not cls.supports_offload:
            reason = (f"the model's weights are left on disk (model.offload: disk) and {metric.name} needs the "
                      "whole model in memory; perplexity runs block by block")
            result.measurements.append(Measurement.unavailable_because(metric.name, "*", "", reason).to_dict())
            record.info = {"unavailable": reason}
            continue
        try:
            with PeakMemory(device) as peak:
                for measurement in cls().measure(model, cls.Params.model_validate(metric.params), ctx):
                    result.measurements.append(_checked(measurement, metric.name))
        except Unavailable as exc:
            result.measurements.append(
                Measurement.unavailable_because(metric.name, "*", "", str(exc)).to_dict()
            )
            record.info = {"unavailable": str(exc)}
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            failures.append((metric.name, exc))
        else:
            record.memory = peak.peak.to_dict()
        record.wall_s = time.perf_counter() - began
    if failures:
        result.status = "failed"
        _, exc = failures[0]
        result.error = _error(exc)
        result.error["message"] = "; ".join(f"metric {n} failed: {e}" for n, e in failures)


def _export(spec: RunSpec, model: Any, ctx: RunContext, result: RunResult, scratch: Path, phase: Progress) -> None:
    """Export after the steps and before the metrics (docs/export.md). Artifacts go under
    the suite's output folder (the parent of its ``.scratch``); an error here is recorded
    on the phase and the metrics still run."""
    phase(f"export {', '.join(spec.export)}")
    began = time.perf_counter()
    record = PhaseRecord("export", 0.0, params={"targets": spec.export, "check": spec.export_check})
    result.metrics.append(record)
    root = scratch.parent
    output = root.parent if root.name == ".scratch" else root
    try:
        outcome = export_phase(model, ctx, spec.export, spec.export_check, output, spec.name, spec.model_source)
    except Exception as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        result.measurements.append(
            Measurement.unavailable_because("export", "*", "", f"export failed: {record.error}").to_dict()
        )
    else:
        result.measurements.extend(m.to_dict() for m in outcome.measurements)
        record.info = {"records": [r.to_dict() for r in outcome.records]}
    record.wall_s = time.perf_counter() - began


def _checked(measurement: Any, metric: str) -> dict[str, Any]:
    if not isinstance(measurement, Measurement):
        raise TypeError(f"metric {metric!r} yielded {type(measurement).__name__}, not paqbench.Measurement")
    return measurement.to_dict()
