"""Energy of generation: joules per generated token and average power over a window of
greedy generate calls (the latency metric's calls).

The energy comes from a hardware counter read before and after the window: on an NVIDIA
GPU the driver's total energy counter (NVML, millijoules), for a model on the CPU the RAPL
package counters (``/sys/class/powercap/intel-rapl:N/energy_uj``, microjoules). Both
count the whole device (a GPU's idle power and every process on it; a CPU socket's cores
and uncore, not DRAM), so a long enough window on an otherwise quiet machine is what makes
the number mean something. Where neither counter can be read the measurements are
unavailable with the reason, never zero.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field, model_validator

from paqbench import Measurement, Metric, Params, RunContext, Unavailable, hookimpl
from paqbench.engines import Backend, EngineUnavailable, open_engine
from paqbench.measure import nvml
from paqbench.measure.timing import (
    Clock,
    Now,
    eval_mode,
    generation_loop,
    iteration_bounds,
    prepare_generation,
    repeat_until,
    timed_generate,
)
from paqbench.models.device import input_device

#: Where Linux exposes RAPL; a module attribute so tests can point it at a fake tree.
POWERCAP_ROOT = Path("/sys/class/powercap")
_PACKAGE_ZONE = re.compile(r"intel-rapl:\d+")


class EnergyParams(Params):
    prompt_tokens: int = Field(128, gt=0, description="prompt length in tokens")
    new_tokens: int = Field(128, ge=1, description="tokens generated per call")
    batch_size: int = Field(1, gt=0, description="rows per generate call")
    warmup: int = Field(1, ge=0, description="untimed generate calls before the window")
    min_iterations: int = Field(3, ge=1, description="at least this many calls in the window")
    min_seconds: float = Field(
        5.0, ge=0, description="window of at least this many seconds (counters tick every 1-100 ms)"
    )
    max_iterations: int | None = Field(
        None, gt=0, description="never more calls than this (--limit also caps)"
    )
    dataset: str = Field("embedded", description="dataset the prompt text is taken from")
    split: str = Field("test", description="split of that dataset")
    backend: Backend = Field(
        "torch", description="torch: paqbench's model in memory; llama.cpp: the run's GGUF export (RAPL); "
        "vllm: its compressed-tensors export (NVML of cuda:0)"
    )
    threads: int | None = Field(
        None, gt=0, description="llama.cpp threads (prompt and decode); default: torch's thread count"
    )

    @model_validator(mode="after")
    def _engine_batch(self) -> EnergyParams:
        if self.backend == "llama.cpp" and self.batch_size != 1:
            raise ValueError("the llama.cpp backend generates one row: batch_size must be 1")
        return self


#: The device whose counter sees each engine backend's work.
ENGINE_DEVICE = {"llama.cpp": torch.device("cpu"), "vllm": torch.device("cuda", 0)}


@dataclass
class EnergyCounter:
    """A cumulative energy counter: ``read()`` gives raw values, ``joules(before, after)``
    the energy between two reads (handling wrap-around where the counter has one)."""

    source: str
    scope: str
    read: Callable[[], list[int]]
    joules: Callable[[list[int], list[int]], float]


def nvml_counter(cuda_index: int) -> EnergyCounter | str:
    """The GPU's NVML total energy counter, or why it cannot be read."""
    first = nvml.energy_mj(cuda_index)
    if not first.ok:
        return f"NVML not available: {first.reason}"

    def read() -> list[int]:
        reading = nvml.energy_mj(cuda_index)
        if not reading.ok:
            raise Unavailable(f"NVML energy counter failed mid-window: {reading.reason}")
        return [int(reading.value)]

    name = nvml.device_name(cuda_index)
    return EnergyCounter(
        source=f"NVML total energy counter of cuda:{cuda_index}"
        + (f" ({name.value})" if name.ok else ""),
        scope="the whole GPU: its idle power and every process on it",
        read=read,
        joules=lambda before, after: (after[0] - before[0]) / 1000.0,
    )


def rapl_counter(root: Path | None = None) -> EnergyCounter | str:
    """The sum of the RAPL package zones (``intel-rapl:N``) under ``root``, or why they
    cannot be read. Each zone's counter wraps at ``max_energy_range_uj``."""
    root = POWERCAP_ROOT if root is None else root
    try:
        zones = sorted(p for p in root.iterdir() if _PACKAGE_ZONE.fullmatch(p.name))
    except OSError as exc:
        return f"RAPL not readable: {root} ({exc.strerror or exc})"
    if not zones:
        return f"RAPL not readable: no intel-rapl:N package zone under {root}"
    ranges = []
    for zone in zones:
        try:
            int((zone / "energy_uj").read_text())
            ranges.append(int((zone / "max_energy_range_uj").read_text()))
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or exc
            return f"RAPL not readable: {zone / 'energy_uj'} ({why})"

    def read() -> list[int]:
        return [int((zone / "energy_uj").read_text()) for zone in zones]

    def joules(before: list[int], after: list[int]) -> float:
        return sum((a - b) % (r + 1) for a, b, r in zip(after, before, ranges, strict=True)) / 1e6

    return EnergyCounter(
        source=f"RAPL {', '.join(z.name for z in zones)} ({root})",
        scope="the CPU package(s): all cores and uncore, every process; not DRAM",
        read=read,
        joules=joules,
    )


def energy_counter(device: torch.device) -> EnergyCounter | str:
    """The counter that sees the device the model runs on: NVML for a CUDA device, RAPL
    for a CPU. A string is the reason there is none."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return nvml_counter(index)
    if device.type == "cpu":
        counter = rapl_counter()
        if isinstance(counter, str):
            return f"{counter}; NVML measures GPUs only and the model runs on cpu"
        return counter
    return f"no energy counter for device type {device.type!r} (NVML: cuda, RAPL: cpu)"


class Energy(Metric):
    name = "energy"
    description = (
        "Energy of greedy generation: joules per generated token and average watts over a window "
        "of generate calls (at least min_iterations calls and min_seconds), from the GPU's NVML "
        "energy counter or, for a CPU model, the RAPL package counters; unavailable with the "
        "reason where neither is readable. The counters see the whole device. Params: "
        "prompt_tokens, new_tokens, batch_size, warmup, min_iterations, min_seconds, "
        "max_iterations, dataset, split, backend (torch | llama.cpp | vllm: the run's GGUF / "
        "compressed-tensors export, same prompt and token counts), threads. Cost: warmup + window "
        "generate calls."
    )
    Params = EnergyParams

    def __init__(self, now: Now = time.perf_counter) -> None:
        self.now = now  # the host clock of the window; tests inject a fake one

    def measure(self, model: torch.nn.Module, params: EnergyParams, ctx: RunContext) -> Iterator[Measurement]:
        device = ENGINE_DEVICE[params.backend] if params.backend != "torch" else input_device(model)
        counter = energy_counter(device)
        if isinstance(counter, str):
            yield from self._unavailable(counter)
            return
        setup = prepare_generation(
            model, ctx, prompt_tokens=params.prompt_tokens, new_tokens=params.new_tokens,
            batch_size=params.batch_size, dataset=params.dataset, split=params.split,
        )
        min_iterations, cap = iteration_bounds(
            params.min_iterations, params.max_iterations, ctx.limit
        )
        if params.backend == "torch":
            window = self._torch_window(model, setup, counter, params, min_iterations, cap)
        else:
            try:
                window = self._engine_window(setup, counter, params, ctx, min_iterations, cap)
            except EngineUnavailable as exc:
                yield from self._unavailable(str(exc))
                return
        iterations, joules, wall_s, engine_details = window
        if joules <= 0:
            yield from self._unavailable(
                f"the energy counter ({counter.source}) did not advance over a {wall_s:.3f} s "
                "window; use a longer window (min_seconds)"
            )
            return
        tokens = iterations * params.batch_size * params.new_tokens
        details = setup.describe(model) | engine_details | {
            "counter": counter.source, "counts": counter.scope, "window_s": wall_s,
            "window_joules": joules, "iterations": iterations, "generated_tokens": tokens,
            "warmup": params.warmup,
            "per_token": "energy of whole generate calls (prefill and decode) / generated tokens",
        }
        yield self.make("joules_per_token", joules / tokens, "J/token", "lower", details=details)
        yield self.make("average_watts", joules / wall_s, "W", None, details=details)

    def _torch_window(self, model, setup, counter: EnergyCounter, params: EnergyParams, min_iterations: int,
                      cap: int | None) -> tuple[int, float, float, dict]:
        """Warm-up, then (calls, joules, seconds) of the window of paqbench's own generate calls."""
        clock = Clock(setup.device, self.now)
        with eval_mode(model):
            for _ in range(params.warmup):
                timed_generate(model, setup, clock)
            clock.sync()
            before, began = counter.read(), clock.now()
            timings, _ = generation_loop(model, setup, clock, min_iterations=min_iterations,
                                         min_seconds=params.min_seconds, max_iterations=cap)
            after, wall_s = counter.read(), clock.now() - began
        return len(timings), counter.joules(before, after), wall_s, {}

    def _engine_window(self, setup, counter: EnergyCounter, params: EnergyParams, ctx, min_iterations: int,
                       cap: int | None) -> tuple[int, float, float, dict]:
        """The same window over the run's export in ``params.backend``, with the torch path's
        prompt ids and token counts. Raises :class:`EngineUnavailable`."""
        ids = setup.inputs["input_ids"][0].tolist()
        engine = open_engine(params.backend, ctx, n_ctx=params.prompt_tokens + params.new_tokens,
                             threads=params.threads)
        clock = Clock(torch.device("cpu"), self.now)
        try:
            for _ in range(params.warmup):
                engine.generate(ids, params.new_tokens, params.batch_size, clock.now)
            calls: list[int] = []

            def call(index: int) -> None:
                engine.generate(ids, params.new_tokens, params.batch_size, clock.now)
                calls.append(index)

            before, began = counter.read(), clock.now()
            repeat_until(call, clock, min_iterations=min_iterations, min_seconds=params.min_seconds,
                         max_iterations=cap)
            after, wall_s = counter.read(), clock.now() - began
            details = engine.describe()
        finally:
            engine.close()
        return len(calls), counter.joules(before, after), wall_s, details

    def _unavailable(self, reason: str):
        # unit and direction kept, so a report can still label the column
        yield self.make("joules_per_token", None, "J/token", "lower", unavailable=reason)
        yield self.make("average_watts", None, "W", None, unavailable=reason)


@hookimpl
def paqbench_register_metrics(register):
    register(Energy)
