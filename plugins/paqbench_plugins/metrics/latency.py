"""Generation latency: time to first token (prefill), time per output token (decode),
end-to-end time and tokens per second, each with its spread and raw samples.

The protocol follows optimum-benchmark's latency tracker and MLPerf's TPOT definition:
greedy generation of a fixed number of tokens (``min_new_tokens = max_new_tokens``, so EOS
never ends a row early), warm-up calls at the same shapes as the measured ones, CUDA events
on a GPU and ``time.perf_counter`` on a CPU, and at least N iterations and T seconds. The
first token's time is taken when ``generate`` hands the prefill's logits to a logits
processor, i.e. after the prefill forward and before any decode step.

The generation helpers here (:func:`prepare_generation`, :func:`timed_generate`,
:func:`generation_loop`) are shared by the ``memory`` and ``energy`` metrics, so that all
three measure the same work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from transformers import LogitsProcessor, LogitsProcessorList

from paqbench import Metric, Params, RunContext, hookimpl
from paqbench.engines import Backend, EngineTiming, EngineUnavailable, open_engine
from paqbench.layers import kernels_in_use
from paqbench.measure.stats import summarize
from paqbench.models.device import input_device

DECODING = (
    "greedy (do_sample=False, num_beams=1); min_new_tokens = max_new_tokens = new_tokens, "
    "so EOS is suppressed and every row generates exactly new_tokens tokens"
)
PADDING = (
    "none: every row of the batch is the same prompt of exactly prompt_tokens tokens, "
    "attention_mask all ones"
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


@dataclass(frozen=True)
class Rates:
    """What one timed generate call implies, derived from its TTFT and end-to-end time."""

    tpot_s: float
    decode_tokens_per_s: float
    prefill_tokens_per_s: float


def derive_rates(
    ttft_s: float, e2e_s: float, prompt_tokens: int, new_tokens: int, batch_size: int
) -> Rates:
    """TPOT = (e2e - TTFT) / (new_tokens - 1), as MLPerf defines it: the first token is
    paid for by the prefill, each later one by one decode step. Decode throughput counts
    the tokens of all rows, ``batch * (new_tokens - 1) / (e2e - TTFT)``, and prefill
    throughput ``batch * prompt_tokens / TTFT``."""
    if new_tokens < 2:
        raise ValueError("TPOT needs at least 2 new tokens")
    if not 0 < ttft_s < e2e_s:
        raise ValueError(f"need 0 < ttft < e2e, got ttft={ttft_s} e2e={e2e_s}")
    decode_s = e2e_s - ttft_s
    return Rates(
        tpot_s=decode_s / (new_tokens - 1),
        decode_tokens_per_s=batch_size * (new_tokens - 1) / decode_s,
        prefill_tokens_per_s=batch_size * prompt_tokens / ttft_s,
    )


# -- timing one generate call ------------------------------------------------------------


Now = Callable[[], float]


class Clock:
    """Timestamps that mean the same on CPU and GPU: CUDA events recorded on the current
    stream (read after a synchronize), or ``now()`` on a CPU. ``now`` (``time.perf_counter``)
    also times the measuring loop; tests pass a fake one, so that what they check is the
    arithmetic and the sampling, never the speed of the machine."""

    def __init__(self, device: torch.device, now: Now = time.perf_counter) -> None:
        self.device = device
        self.now = now
        self.cuda = device.type == "cuda"
        host = "time.perf_counter" if now is time.perf_counter else f"injected clock {getattr(now, '__name__', now)!r}"
        self.kind = "cuda events" if self.cuda else host

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return self.now()

    def seconds(self, start: Any, end: Any) -> float:
        """Seconds between two marks (synchronizes first on a GPU)."""
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        return end - start


class FirstTokenTimer(LogitsProcessor):
    """Marks the moment ``generate`` first hands logits to the processors (the end of the
    prefill) and counts the calls (one per generated token). It leaves the scores as
    they are, so decoding is unchanged."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.first: Any = None
        self.calls = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.calls == 0:
            self.first = self.clock.mark()
        self.calls += 1
        return scores


@dataclass(frozen=True)
class GenerationTiming:
    """One timed generate call."""

    ttft_s: float
    e2e_s: float
    output: torch.Tensor = field(repr=False, compare=False)


@dataclass
class GenerationSetup:
    """The inputs of the measured generate calls and how they were built."""

    inputs: dict[str, torch.Tensor]
    prompt_tokens: int
    new_tokens: int
    batch_size: int
    pad_token_id: int | None
    device: torch.device
    prompt: dict[str, Any]

    def describe(self, model: torch.nn.Module) -> dict[str, Any]:
        """The generation protocol, for a measurement's details."""
        config = getattr(model, "config", None)
        generation_config = getattr(model, "generation_config", None)
        return {
            "device": str(self.device),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(),
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "batch_size": self.batch_size,
            "decoding": DECODING,
            "padding": PADDING,
            "attn_implementation": getattr(config, "_attn_implementation", None),
            "kv_cache": getattr(generation_config, "cache_implementation", None)
            or "transformers default (dynamic cache), use_cache=True",
            "tokenization": "done once before timing; not included in any time",
            "prompt": self.prompt,
        }


def prompt_ids(text: str, tokenizer: Any, prompt_tokens: int) -> tuple[list[int], int]:
    """The first ``prompt_tokens`` token ids of ``text`` (with the tokenizer's special
    prefix, e.g. BOS); a text too short is continued by itself. Returns the ids and how
    many times the text's tokens were used."""
    ids = list(tokenizer(text).input_ids)
    body = list(tokenizer(text, add_special_tokens=False).input_ids)
    if not body:
        raise ValueError("the prompt text tokenizes to nothing")
    uses = 1
    while len(ids) < prompt_tokens:
        ids.extend(body)
        uses += 1
    return ids[:prompt_tokens], uses


def prepare_generation(
    model: torch.nn.Module,
    ctx: RunContext,
    *,
    prompt_tokens: int,
    new_tokens: int,
    batch_size: int,
    dataset: str = "embedded",
    split: str = "test",
) -> GenerationSetup:
    """Tokenize the prompt once and build the batch every measured call uses."""
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_positions is not None and prompt_tokens + new_tokens > max_positions:
        raise ValueError(
            f"prompt_tokens + new_tokens = {prompt_tokens + new_tokens} exceeds the model's "
            f"max_position_embeddings ({max_positions}); lower prompt_tokens or new_tokens"
        )
    corpus = ctx.dataset(dataset, split)
    ids, uses = prompt_ids(corpus.text, ctx.tokenizer, prompt_tokens)
    device = input_device(model)
    input_ids = torch.tensor([ids] * batch_size, dtype=torch.long, device=device)
    pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if pad is None:
        pad = ctx.tokenizer.pad_token_id
    if pad is None:
        pad = ctx.tokenizer.eos_token_id
    if isinstance(pad, list):
        pad = pad[0]
    return GenerationSetup(
        inputs={"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)},
        prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch_size=batch_size,
        pad_token_id=pad, device=device,
        prompt={"dataset": corpus.dataset, "split": split, "origin": corpus.origin,
                "fingerprint": corpus.fingerprint, "text_repeated": uses > 1},
    )


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Evaluation mode and no autograd for the window, restoring the model's mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def timed_generate(
    model: torch.nn.Module, setup: GenerationSetup, clock: Clock
) -> GenerationTiming:
    """One greedy generate call of exactly ``setup.new_tokens`` tokens per row, timed from
    the call to the prefill's logits (TTFT) and to the end (e2e)."""
    timer = FirstTokenTimer(clock)
    clock.sync()
    start = clock.mark()
    output = model.generate(
        **setup.inputs,
        do_sample=False,
        num_beams=1,
        min_new_tokens=setup.new_tokens,
        max_new_tokens=setup.new_tokens,
        pad_token_id=setup.pad_token_id,
        use_cache=True,
        logits_processor=LogitsProcessorList([timer]),
    )
    end = clock.mark()
    e2e = clock.seconds(start, end)
    generated = output.shape[1] - setup.inputs["input_ids"].shape[1]
    if generated != setup.new_tokens or timer.calls != setup.new_tokens:
        raise RuntimeError(
            f"generate produced {generated} tokens in {timer.calls} steps, expected exactly "
            f"{setup.new_tokens}: the model's generation config overrides the fixed length"
        )
    return GenerationTiming(ttft_s=clock.seconds(start, timer.first), e2e_s=e2e, output=output)


def repeat_until(
    call: Callable[[int], None],
    clock: Clock,
    *,
    min_iterations: int,
    min_seconds: float,
    max_iterations: int | None = None,
) -> float:
    """``call(i)`` for i = 0, 1, ... until at least ``min_iterations`` calls and
    ``min_seconds`` seconds (wall clock, ``clock.now``) have passed, never more than
    ``max_iterations``. Returns the wall seconds of the loop, after the device has finished."""
    done = 0
    began = clock.now()
    while max_iterations is None or done < max_iterations:
        if done >= min_iterations and clock.now() - began >= min_seconds:
            break
        call(done)
        done += 1
    clock.sync()
    return clock.now() - began


def generation_loop(
    model: torch.nn.Module,
    setup: GenerationSetup,
    clock: Clock,
    *,
    min_iterations: int,
    min_seconds: float,
    max_iterations: int | None = None,
    on_call: Callable[[GenerationTiming], None] | None = None,
) -> tuple[list[GenerationTiming], float]:
    """Timed generate calls under :func:`repeat_until`'s rule. Returns the timings and
    the wall seconds of the loop."""
    timings: list[GenerationTiming] = []

    def one(_: int) -> None:
        timings.append(timed_generate(model, setup, clock))
        if on_call is not None:
            on_call(timings[-1])

    wall_s = repeat_until(one, clock, min_iterations=min_iterations, min_seconds=min_seconds,
                          max_iterations=max_iterations)
    return timings, wall_s


def paired_loop(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    setup: GenerationSetup,
    reference_setup: GenerationSetup,
    clock: Clock,
    *,
    min_iterations: int,
    min_seconds: float,
    max_iterations: int | None = None,
) -> tuple[list[GenerationTiming], list[GenerationTiming], float]:
    """Timed calls of ``model`` and ``reference`` back to back, the order alternating
    (A B, B A, ...) so that a steady drift of the machine's speed favours neither; the
    rule of :func:`repeat_until`, counted in pairs."""
    timings: list[GenerationTiming] = []
    reference_timings: list[GenerationTiming] = []

    def pair(index: int) -> None:
        if index % 2 == 0:
            timings.append(timed_generate(model, setup, clock))
            reference_timings.append(timed_generate(reference, reference_setup, clock))
        else:
            reference_timings.append(timed_generate(reference, reference_setup, clock))
            timings.append(timed_generate(model, setup, clock))

    wall_s = repeat_until(pair, clock, min_iterations=min_iterations, min_seconds=min_seconds,
                          max_iterations=max_iterations)
    return timings, reference_timings, wall_s


def iteration_bounds(
    min_iterations: int, max_iterations: int | None, limit: int | None
) -> tuple[int, int | None]:
    """(min, max) measured iterations after ``max_iterations`` and ``--limit`` caps."""
    caps = [c for c in (max_iterations, limit) if c is not None]
    cap = max(1, min(caps)) if caps else None
    return (min(min_iterations, cap) if cap is not None else min_iterations), cap


def _torch_reference(model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """The model itself, or a copy cast to ``dtype`` (codes and scales kept, as ``cast`` does)."""
    if dtype == "model":
        return model
    import copy

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

    def measure(self, model, params: LatencyParams, ctx):
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
