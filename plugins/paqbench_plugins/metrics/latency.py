"""Generation latency: time to first token (prefill), time per output token (decode),
end-to-end time and tokens per second, each with its spread and raw samples.

The protocol (greedy, fixed length, warm-up, CUDA events or perf_counter, at least N
iterations and T seconds) and the timed generation loop live in
:mod:`paqbench.measure.timing`, which the ``memory`` and ``energy`` metrics share; this
module turns its timings into measurements and adds the engine backends.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from paqbench import Measurement, Metric, Params, RunContext, hookimpl
from paqbench.engines import Backend, EngineTiming, EngineUnavailable, open_engine
from paqbench.layers import kernels_in_use
from paqbench.measure.stats import summarize
from paqbench.measure.timing import (
    Clock,
    GenerationSetup,
    GenerationTiming,
    Now,
    Rates,
    derive_rates,
    eval_mode,
    generation_loop,
    iteration_bounds,
    paired_loop,
    prepare_generation,
    repeat_until,
    timed_generate,
)


class LatencyParams(Params):
    prompt_tokens: int = Field(
        128, gt=0, description="prompt length in tokens (the text is cut, or repeated, to fit)"
    )
    new_tokens: int = Field(
        128, ge=2, description="tokens generated per call (at least 2, so TPOT is defined)"
    )
    batch_size: int = Field(1, gt=0, description="rows per generate call (copies of the prompt)")
    warmup: int = Field(
        2, ge=1, description="untimed generate calls first; the first is reported as cold_e2e"
    )
    min_iterations: int = Field(5, ge=1, description="measure at least this many generate calls")
    min_seconds: float = Field(
        5.0, ge=0, description="and keep measuring for at least this many seconds"
    )
    max_iterations: int | None = Field(
        None, gt=0, description="never measure more calls than this (--limit also caps)"
    )
    dataset: str = Field("embedded", description="dataset the prompt text is taken from")
    split: str = Field("test", description="split of that dataset")
    reference: bool = Field(
        False,
        description="also time the uncompressed model (loaded again) in alternation with this one and "
        "report speedups from calls measured back to back, which a machine whose speed drifts during a "
        "suite cannot bias; costs a second model in memory and twice the calls. With an engine backend the "
        "reference is this run's model in paqbench's torch path (the same codes)",
    )
    backend: Backend = Field(
        "torch", description="torch: paqbench's model in memory; llama.cpp: the run's GGUF export; vllm: its "
        "compressed-tensors export (CUDA)"
    )
    threads: int | None = Field(
        None, gt=0, description="llama.cpp threads (prompt and decode); default: torch's thread count"
    )

    reference_dtype: Literal["model", "bfloat16", "float16"] = Field(
        "model", description="engine backends: run the torch reference on a copy of the model cast to this dtype "
        "(bfloat16: the CPU int4/int8 kernels), leaving the run's model and its export as they are"
    )

    @model_validator(mode="after")
    def _engine_batch(self) -> LatencyParams:
        if self.backend == "llama.cpp" and self.batch_size != 1:
            raise ValueError("the llama.cpp backend generates one row: batch_size must be 1")
        if self.reference_dtype != "model" and (self.backend == "torch" or not self.reference):
            raise ValueError("reference_dtype applies to the torch reference of an engine backend "
                             "(backend llama.cpp or vllm with reference: true)")
        return self


# -- pure arithmetic ---------------------------------------------------------------------


def _torch_reference(model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """The model itself, or a copy cast to ``dtype`` (codes and scales kept, as ``cast`` does)."""
    if dtype == "model":
        return model

    reference = copy.deepcopy(model).to(dtype=getattr(torch, dtype))
    config = getattr(reference, "config", None)
    if config is not None:
        config.dtype = getattr(torch, dtype)
    return reference


def _engine_loop(engine, model: torch.nn.Module, setup: GenerationSetup, ids: list[int], clock: Clock,
                 params: LatencyParams, min_iterations: int, cap: int | None):
    """Warm-up and timed engine calls under :func:`repeat_until`; with ``params.reference``,
    each iteration is a pair (engine, torch) whose order flips every pair."""
    timings: list[EngineTiming] = []
    reference_timings: list[GenerationTiming] = []

    def engine_call() -> None:
        timings.append(engine.generate(ids, params.new_tokens, params.batch_size, clock.now))

    def torch_call() -> None:
        reference_timings.append(timed_generate(model, setup, clock))

    warmups = [engine.generate(ids, params.new_tokens, params.batch_size, clock.now) for _ in range(params.warmup)]
    if not params.reference:
        wall_s = repeat_until(lambda _: engine_call(), clock, min_iterations=min_iterations,
                              min_seconds=params.min_seconds, max_iterations=cap)
        return timings, warmups, reference_timings, wall_s
    with eval_mode(model):
        for _ in range(params.warmup):
            timed_generate(model, setup, clock)

        def pair(index: int) -> None:
            for call in ((engine_call, torch_call) if index % 2 == 0 else (torch_call, engine_call)):
                call()

        wall_s = repeat_until(pair, clock, min_iterations=min_iterations, min_seconds=params.min_seconds,
                              max_iterations=cap)
    return timings, warmups, reference_timings, wall_s


# -- the metric ---------------------------------------------------------------------------


class Latency(Metric):
    name = "latency"
    description = (
        "Generation latency: TTFT (prefill), TPOT (decode per token), end-to-end time, decode and "
        "prefill tokens/s, each as the median with p90/p99/mean/stdev and raw samples, plus the "
        "cold first call. Greedy generation of exactly new_tokens tokens from a prompt of "
        "prompt_tokens tokens (embedded text), warm-up at the same shapes, CUDA events on GPU, "
        "perf_counter on CPU. With `reference: true`, also decode_speedup and prefill_speedup "
        "against the uncompressed model timed in alternation with this one (drift-proof A/B). "
        "Params: prompt_tokens, new_tokens, batch_size, warmup, min_iterations, min_seconds, "
        "max_iterations, dataset, split, reference, backend (torch | llama.cpp | vllm: the run's GGUF / "
        "compressed-tensors export in that engine), threads. Cost: warmup + max(min_iterations, as many as "
        "fit in min_seconds) generate calls (twice with reference)."
    )
    Params = LatencyParams

    def __init__(self, now: Now = time.perf_counter) -> None:
        self.now = now  # the host clock; tests inject a fake one

    def measure(self, model: torch.nn.Module, params: LatencyParams, ctx: RunContext) -> Iterator[Measurement]:
        if params.backend != "torch":
            yield from self._engine(model, params, ctx)
            return
        setup = prepare_generation(
            model, ctx, prompt_tokens=params.prompt_tokens, new_tokens=params.new_tokens,
            batch_size=params.batch_size, dataset=params.dataset, split=params.split,
        )
        clock = Clock(setup.device, self.now)
        min_iterations, cap = iteration_bounds(
            params.min_iterations, params.max_iterations, ctx.limit
        )
        reference_timings: list[GenerationTiming] = []
        if params.reference:
            reference = ctx.teacher()
            reference_setup = prepare_generation(
                reference, ctx, prompt_tokens=params.prompt_tokens, new_tokens=params.new_tokens,
                batch_size=params.batch_size, dataset=params.dataset, split=params.split,
            )
            try:
                with eval_mode(model), eval_mode(reference):
                    warmups = [timed_generate(model, setup, clock) for _ in range(params.warmup)]
                    for _ in range(params.warmup):
                        timed_generate(reference, reference_setup, clock)
                    timings, reference_timings, wall_s = paired_loop(
                        model, reference, setup, reference_setup, clock, min_iterations=min_iterations,
                        min_seconds=params.min_seconds, max_iterations=cap,
                    )
            finally:
                del reference
                ctx.release_teacher()
        else:
            with eval_mode(model):
                warmups = [timed_generate(model, setup, clock) for _ in range(params.warmup)]
                timings, wall_s = generation_loop(
                    model, setup, clock, min_iterations=min_iterations,
                    min_seconds=params.min_seconds, max_iterations=cap,
                )

        details = setup.describe(model) | {
            "timer": clock.kind,
            "iterations": len(timings),
            "measured_wall_s": wall_s,
            "warmup": params.warmup,
            "min_iterations": min_iterations,
            "min_seconds": params.min_seconds,
            "max_iterations": cap,
            "ttft": "from the generate() call to the prefill's logits (first logits processor)",
        }
        kernels = kernels_in_use(model)
        if kernels:
            details["kernels"] = kernels  # the forward paths the timed calls ran on
        yield from self._report(timings, warmups, reference_timings, params, details)

    def _report(self, timings, warmups, reference_timings, params: LatencyParams, details: dict[str, Any]):
        """The measurements of the timed calls (any backend: each has ``ttft_s`` and ``e2e_s``)."""
        rates = [derive_rates(t.ttft_s, t.e2e_s, params.prompt_tokens, params.new_tokens,
                              params.batch_size) for t in timings]
        series: list[tuple[str, list[float], str, str]] = [
            ("ttft", [t.ttft_s for t in timings], "s", "lower"),
            ("tpot", [r.tpot_s for r in rates], "s/token", "lower"),
            ("e2e", [t.e2e_s for t in timings], "s", "lower"),
            ("decode_tokens_per_s", [r.decode_tokens_per_s for r in rates], "tokens/s", "higher"),
            ("prefill_tokens_per_s", [r.prefill_tokens_per_s for r in rates], "tokens/s", "higher"),
        ]
        for name, samples, unit, better in series:
            summary = summarize(samples)
            yield self.make(name, summary.median, unit, better, spread=summary.spread(),
                            samples=samples, details=details)
        if reference_timings:
            yield from self._speedups(timings, rates, reference_timings, params, details)
        cold = warmups[0]
        shared = ("device", "prompt_tokens", "new_tokens", "batch_size", "timer")
        yield self.make(
            "cold_e2e", cold.e2e_s, "s", "lower",
            details={
                "cold_ttft_s": cold.ttft_s,
                "what": "first generate call of this metric (lazy initialisation, allocator "
                        "growth, kernel selection); cold only if nothing ran the model before",
                **{k: details[k] for k in shared},
            },
        )

    def _engine(self, model, params: LatencyParams, ctx):
        """The run's export timed in ``params.backend`` with the torch path's prompt ids, token
        counts, warm-up and stopping rule; with ``reference``, alternating with paqbench's
        torch forward of the same model."""
        setup = prepare_generation(
            model, ctx, prompt_tokens=params.prompt_tokens, new_tokens=params.new_tokens,
            batch_size=params.batch_size, dataset=params.dataset, split=params.split,
        )
        ids = setup.inputs["input_ids"][0].tolist()
        try:
            engine = open_engine(params.backend, ctx, n_ctx=params.prompt_tokens + params.new_tokens,
                                 threads=params.threads)
        except EngineUnavailable as exc:
            yield from self._all_unavailable(str(exc), params)
            return
        clock = Clock(torch.device("cpu"), self.now)
        min_iterations, cap = iteration_bounds(params.min_iterations, params.max_iterations, ctx.limit)
        reference = _torch_reference(model, params.reference_dtype) if params.reference else model
        try:
            timings, warmups, reference_timings, wall_s = _engine_loop(
                engine, reference, setup, ids, clock, params, min_iterations, cap)
            details = setup.describe(model) | engine.describe() | {
                "timer": clock.kind, "iterations": len(timings), "measured_wall_s": wall_s,
                "warmup": params.warmup, "min_iterations": min_iterations, "min_seconds": params.min_seconds,
                "max_iterations": cap, "ttft": "from the call to the first token's argmax (prefill)",
            }
        finally:
            engine.close()
        for key in ("dtype", "torch_threads", "attn_implementation", "kv_cache"):
            details.pop(key, None)  # the torch model's, not the engine's
        yield from self._report(timings, warmups, [], params, details)
        if reference_timings:
            torch_details = details | {
                "reference": "paqbench's torch forward of this run's model (the same codes), timed in alternation "
                             "with the engine (A B, B A, ...); speedup = torch time / engine time per pair",
                "reference_dtype": str(next(reference.parameters()).dtype).removeprefix("torch."),
                "reference_kernels": kernels_in_use(reference) or None,
                "torch_threads": torch.get_num_threads(),
            }
            for name in ("decode_tokens_per_s", "prefill_tokens_per_s"):
                rates = [getattr(derive_rates(t.ttft_s, t.e2e_s, params.prompt_tokens, params.new_tokens,
                                              params.batch_size), name) for t in reference_timings]
                summary = summarize(rates)
                yield self.make(f"torch_{name}", summary.median, "tokens/s", "higher", spread=summary.spread(),
                                samples=rates, details=torch_details)
            mine = [derive_rates(t.ttft_s, t.e2e_s, params.prompt_tokens, params.new_tokens, params.batch_size)
                    for t in timings]
            yield from self._speedups(timings, mine, reference_timings, params, torch_details)

    def _all_unavailable(self, reason: str, params: LatencyParams):
        names = [("ttft", "s", "lower"), ("tpot", "s/token", "lower"), ("e2e", "s", "lower"),
                 ("decode_tokens_per_s", "tokens/s", "higher"), ("prefill_tokens_per_s", "tokens/s", "higher"),
                 ("cold_e2e", "s", "lower")]
        if params.reference:
            names += [("decode_speedup", "×", "higher"), ("prefill_speedup", "×", "higher")]
        for name, unit, better in names:
            yield self.make(name, None, unit, better, unavailable=reason)

    def _speedups(self, timings, mine: list[Rates], reference_timings, params: LatencyParams,
                  details: dict[str, Any]):
        """Per pair of back-to-back calls, the uncompressed model's time over this one's;
        the median over pairs. 1.0 on the baseline run up to the machine's noise."""
        theirs = [derive_rates(t.ttft_s, t.e2e_s, params.prompt_tokens, params.new_tokens, params.batch_size)
                  for t in reference_timings]
        pairs = {
            "decode_speedup": [r.tpot_s / m.tpot_s for m, r in zip(mine, theirs, strict=True)],
            "prefill_speedup": [r.ttft_s / m.ttft_s for m, r in
                                zip(timings, reference_timings, strict=True)],
        }
        what = {
            "reference": "the uncompressed model, loaded again from the suite's source, timed in "
                         "alternation with this one (A B, B A, ...); speedup = its time / this time per pair",
            **details,
            "reference_tpot_s": summarize([r.tpot_s for r in theirs]).median,
            "reference_ttft_s": summarize([t.ttft_s for t in reference_timings]).median,
        }
        for name, samples in pairs.items():
            summary = summarize(samples)
            yield self.make(name, summary.median, "×", "higher", spread=summary.spread(),
                            samples=samples, details=what)


@hookimpl
def paqbench_register_metrics(register):
    register(Latency)
