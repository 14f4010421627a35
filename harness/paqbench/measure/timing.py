"""Timed greedy generation: the loop the latency, energy and memory metrics measure.

The protocol follows optimum-benchmark's latency tracker and MLPerf's TPOT definition:
greedy generation of a fixed number of tokens (``min_new_tokens = max_new_tokens``, so EOS
never ends a row early), warm-up calls at the same shapes as the measured ones, CUDA events
on a GPU and ``time.perf_counter`` on a CPU, and at least N iterations and T seconds. The
first token's time is taken when ``generate`` hands the prefill's logits to a logits
processor, i.e. after the prefill forward and before any decode step. It lives in the
library so that every metric that times generation measures the same work without one
plugin importing another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from paqbench.models.device import input_device

if TYPE_CHECKING:
    from paqbench.context import RunContext

DECODING = (
    "greedy (do_sample=False, num_beams=1); min_new_tokens = max_new_tokens = new_tokens, "
    "so EOS is suppressed and every row generates exactly new_tokens tokens"
)
PADDING = (
    "none: every row of the batch is the same prompt of exactly prompt_tokens tokens, "
    "attention_mask all ones"
)


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
