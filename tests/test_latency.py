"""The latency metric: TPOT arithmetic, fixed-length greedy generation, the sampling rule
and the paired reference mode.

Timing tests run the tiny model on a fake clock that moves only when the model runs a
forward pass (a fixed cost per prefill and per decode step), so every number is exact and
no outcome depends on how fast or loaded the machine is."""

from __future__ import annotations

import statistics

import pytest
import torch
from pydantic import ValidationError

from paqbench.measure.timing import (
    Clock,
    derive_rates,
    eval_mode,
    iteration_bounds,
    paired_loop,
    prepare_generation,
    prompt_ids,
    repeat_until,
    timed_generate,
)
from paqbench.models.embedded import tiny_random_llama
from paqbench_plugins.metrics.latency import Latency
from tests.fake_clock import FakeTime, costing

TINY = dict(prompt_tokens=16, new_tokens=8, warmup=1, min_iterations=3, min_seconds=0)
FAKE = dict(prompt_tokens=16, new_tokens=4, warmup=1, min_iterations=3, min_seconds=0)


def _measure(model, ctx, now=None, **params):
    """The metric's measurements by name (on the host clock ``now`` when given)."""
    metric = Latency() if now is None else Latency(now=now)
    return {m.name: m for m in metric.measure(model, Latency.Params(**params), ctx)}


def test_tpot_excludes_the_first_token_and_rates_follow():
    rates = derive_rates(ttft_s=0.2, e2e_s=1.0, prompt_tokens=100, new_tokens=9, batch_size=4)
    assert rates.tpot_s == pytest.approx(0.8 / 8)
    assert rates.decode_tokens_per_s == pytest.approx(4 * 8 / 0.8)  # 40 tokens/s
    assert rates.prefill_tokens_per_s == pytest.approx(4 * 100 / 0.2)  # 2000 tokens/s
    assert rates.decode_tokens_per_s * rates.tpot_s == pytest.approx(4)


@pytest.mark.parametrize(
    "ttft, e2e, new", [(0.0, 1.0, 8), (1.0, 1.0, 8), (2.0, 1.0, 8), (0.1, 1.0, 1)]
)
def test_impossible_timings_are_errors(ttft, e2e, new):
    with pytest.raises(ValueError):
        derive_rates(ttft, e2e, prompt_tokens=4, new_tokens=new, batch_size=1)


def test_iteration_bounds_apply_max_iterations_and_limit():
    assert iteration_bounds(5, None, None) == (5, None)
    assert iteration_bounds(5, None, 3) == (3, 3)
    assert iteration_bounds(5, 10, 3) == (3, 3)
    assert iteration_bounds(2, 10, None) == (2, 10)


def test_short_prompt_text_is_repeated_after_the_special_prefix(tiny_tokenizer):
    ids, uses = prompt_ids("abc", tiny_tokenizer, 10)
    a, b, c = tiny_tokenizer("abc", add_special_tokens=False).input_ids
    assert ids == [tiny_tokenizer.bos_token_id, a, b, c, a, b, c, a, b, c]
    assert uses == 3
    long_ids, uses = prompt_ids("abcdefgh", tiny_tokenizer, 4)
    assert len(long_ids) == 4 and uses == 1


def _eos_always(model: torch.nn.Module, eos: int) -> torch.nn.Module:
    """Make greedy decoding pick EOS at every step (so only a forced length continues)."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[eos] = 10.0
    model.lm_head = head
    return model


def test_generation_produces_exactly_new_tokens_even_when_eos_wins(tiny_llama, make_context):
    ctx = make_context()
    eos = ctx.tokenizer.eos_token_id
    model = _eos_always(tiny_llama, eos)
    setup = prepare_generation(model, ctx, prompt_tokens=12, new_tokens=6, batch_size=2)
    with eval_mode(model):
        free = model.generate(**setup.inputs, do_sample=False, max_new_tokens=6,
                              pad_token_id=setup.pad_token_id)
        timing = timed_generate(model, setup, Clock(setup.device))
    assert free.shape[1] == 12 + 1  # left alone, the model stops at its first EOS
    assert timing.output.shape == (2, 12 + 6)
    assert torch.equal(timing.output[:, :12], setup.inputs["input_ids"])
    assert setup.inputs["input_ids"].shape == (2, 12)
    assert bool(setup.inputs["attention_mask"].all())
    assert 0 < timing.ttft_s < timing.e2e_s


def test_latency_on_the_tiny_model_is_self_consistent(tiny_llama, make_context):
    measurements = _measure(tiny_llama, make_context(), **TINY)
    assert set(measurements) == {
        "ttft", "tpot", "e2e", "decode_tokens_per_s", "prefill_tokens_per_s", "cold_e2e"
    }
    ttft, tpot, e2e = (measurements[k].samples for k in ("ttft", "tpot", "e2e"))
    decode = measurements["decode_tokens_per_s"].samples
    prefill = measurements["prefill_tokens_per_s"].samples
    iterations = measurements["ttft"].details["iterations"]
    assert iterations == 3
    for samples in (ttft, tpot, e2e, decode, prefill):
        assert len(samples) == iterations
    for t, p, e, d, f in zip(ttft, tpot, e2e, decode, prefill, strict=True):
        assert e >= t > 0
        assert p == pytest.approx((e - t) / (8 - 1))
        assert d * p == pytest.approx(1.0)  # batch 1: tokens/s is 1 / TPOT
        assert f == pytest.approx(16 / t)
    for m in measurements.values():
        if m.samples:
            assert m.value == pytest.approx(statistics.median(m.samples))
            ordered = [m.spread[k] for k in ("min", "median", "p90", "p99", "max")]
            assert ordered == sorted(ordered)
            assert m.spread["stdev"] >= 0
    assert measurements["ttft"].better == "lower"
    assert measurements["decode_tokens_per_s"].better == "higher"
    assert measurements["tpot"].unit == "s/token"
    assert measurements["cold_e2e"].value > 0
    details = measurements["e2e"].details
    assert details["device"] == "cpu"
    assert details["timer"] == "time.perf_counter"
    assert details["torch_threads"] == torch.get_num_threads()
    assert details["prompt"]["dataset"] == "embedded"


def test_fake_clock_gives_exact_ttft_tpot_rates_percentiles_and_cold_call(make_context):
    now = FakeTime()
    ttft = [0.25, 0.5, 0.25, 1.0, 0.5]  # prefill seconds of the measured calls; 2 s for the warm-up
    model = costing(tiny_random_llama(seed=0), now, [2.0, *ttft], step_s=0.125)
    m = _measure(model, make_context(), now, **{**FAKE, "min_iterations": 5})
    assert m["ttft"].samples == ttft
    assert m["e2e"].samples == [t + 3 * 0.125 for t in ttft]  # 4 new tokens: the prefill gives the first
    assert m["tpot"].samples == [0.125] * 5
    assert m["decode_tokens_per_s"].samples == [8.0] * 5
    assert m["prefill_tokens_per_s"].samples == [64.0, 32.0, 64.0, 16.0, 32.0]
    assert m["ttft"].value == 0.5 and m["prefill_tokens_per_s"].value == 32.0  # medians
    spread = m["ttft"].spread  # sorted 0.25 0.25 0.5 0.5 1.0; p90 at rank 3.6, p99 at 3.96
    assert (spread["min"], spread["max"], spread["mean"]) == (0.25, 1.0, 0.5)
    assert spread["p90"] == pytest.approx(0.8) and spread["p99"] == pytest.approx(0.98)
    assert spread["stdev"] == pytest.approx(statistics.stdev(ttft))
    assert m["cold_e2e"].value == 2.375 and m["cold_e2e"].details["cold_ttft_s"] == 2.0
    details = m["e2e"].details
    assert details["iterations"] == 5 and details["measured_wall_s"] == sum(m["e2e"].samples)
    assert details["timer"].startswith("injected clock")


def test_batch_rows_count_in_tokens_per_second(make_context):
    now = FakeTime()
    model = costing(tiny_random_llama(seed=0), now, 0.25, step_s=0.125)
    m = _measure(model, make_context(), now, **{**FAKE, "batch_size": 2, "min_iterations": 1})
    assert m["decode_tokens_per_s"].samples == [2 * 3 / 0.375]
    assert m["prefill_tokens_per_s"].samples == [2 * 16 / 0.25]
    assert m["tpot"].samples == [0.125]  # per token of a row: batching does not divide it


@pytest.mark.parametrize("min_iterations, min_seconds, max_iterations, calls", [
    (1, 0.0, None, 1),
    (1, 1.0, None, 3),  # 0.375, 0.75 < 1 s; stops after 1.125 s
    (4, 1.0, None, 4),  # min_iterations outlasts min_seconds
    (1, 10.0, 2, 2),  # max_iterations stops the clock rule
    (3, 0.75, None, 3),  # at least min_seconds: 0.75 s reached by two calls, three asked
])
def test_repeat_until_stops_on_iterations_and_seconds(min_iterations, min_seconds, max_iterations, calls):
    now = FakeTime()
    done: list[int] = []

    def call(index: int) -> None:
        done.append(index)
        now.t += 0.375

    wall = repeat_until(call, Clock(torch.device("cpu"), now), min_iterations=min_iterations,
                        min_seconds=min_seconds, max_iterations=max_iterations)
    assert done == list(range(calls))
    assert wall == 0.375 * calls


def test_min_seconds_keeps_measuring(make_context):
    now = FakeTime()
    model = costing(tiny_random_llama(seed=0), now, 0.25, step_s=0.125)  # 0.625 s per call
    e2e = _measure(model, make_context(), now, **{**FAKE, "min_iterations": 1, "min_seconds": 1.0})["e2e"]
    assert e2e.samples == [0.625, 0.625] and e2e.details["measured_wall_s"] == 1.25


def test_limit_caps_iterations(make_context):
    now = FakeTime()
    model = costing(tiny_random_llama(seed=0), now, 0.25, step_s=0.125)
    params = {**FAKE, "min_iterations": 5, "min_seconds": 30}
    ttft = _measure(model, make_context(limit=2), now, **params)["ttft"]
    assert len(ttft.samples) == ttft.details["iterations"] == 2


def test_prompt_and_generation_must_fit_the_model(tiny_llama, make_context):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        _measure(tiny_llama, make_context(), prompt_tokens=1020, new_tokens=8)


def test_params_are_validated():
    with pytest.raises(ValidationError):
        Latency.Params(new_tokens=1)
    with pytest.raises(ValidationError):
        Latency.Params(warmup=0)
    with pytest.raises(ValidationError):
        Latency.Params(prompt_len=3)


def test_latency_is_registered():
    from paqbench.registry import get_registry

    assert get_registry().metric("latency") is Latency


@pytest.mark.realmodel
def test_real_model_generates_the_fixed_length(smollm2, make_context):
    model, tokenizer = smollm2
    ctx = make_context(tokenizer=tokenizer)
    measurements = _measure(model, ctx, prompt_tokens=32, new_tokens=4, warmup=1, min_iterations=2,
                            min_seconds=0)
    ttft, e2e = measurements["ttft"].samples, measurements["e2e"].samples
    assert len(ttft) == 2
    assert all(e > t > 0 for t, e in zip(ttft, e2e, strict=True))


# ------------------------------------------------------------- the uncompressed reference


def test_reference_speedups_are_per_pair_ratios_in_alternating_order(make_context):
    now, order = FakeTime(), []
    # warm-up first, then the measured calls; the pairs' medians (0.5 s each) would give a
    # prefill speedup of 1, the per-pair ratios 4, 0.5, 0.5 give 0.5
    mine = costing(tiny_random_llama(seed=0), now, [1.0, 0.25, 0.5, 1.0], step_s=0.25, log=order, label="A")
    ctx = make_context(teacher=lambda: costing(tiny_random_llama(seed=0), now, [1.0, 1.0, 0.25, 0.5],
                                               step_s=0.125, log=order, label="B"))
    m = _measure(mine, ctx, now, **FAKE, reference=True)
    assert "".join(order) == "AB" + "AB" + "BA" + "AB"  # warm-ups, then A B, B A, A B
    decode, prefill = m["decode_speedup"], m["prefill_speedup"]
    assert decode.unit == "×" and decode.better == "higher"
    assert decode.samples == [0.5, 0.5, 0.5]  # 0.125 s per step against this model's 0.25 s
    assert prefill.samples == [4.0, 0.5, 0.5] and prefill.value == 0.5
    assert m["ttft"].samples == [0.25, 0.5, 1.0] and m["tpot"].samples == [0.25] * 3
    assert decode.details["reference_tpot_s"] == 0.125 and decode.details["reference_ttft_s"] == 0.5
    assert ctx._teacher is None  # the reference is dropped after the metric


def test_reference_speedup_of_a_faster_model_is_above_one(make_context):
    now = FakeTime()
    fast = costing(tiny_random_llama(seed=0), now, 0.25, step_s=0.125)
    ctx = make_context(teacher=lambda: costing(tiny_random_llama(seed=0), now, 1.0, step_s=0.5))
    m = _measure(fast, ctx, now, **FAKE, reference=True)
    assert m["decode_speedup"].samples == [4.0] * 3 and m["prefill_speedup"].samples == [4.0] * 3


def test_paired_calls_alternate_their_order(make_context):
    now, order = FakeTime(), []
    model = costing(tiny_random_llama(seed=0), now, 0.25, step_s=0.125, log=order, label="A")
    reference = costing(tiny_random_llama(seed=0), now, 0.25, step_s=0.125, log=order, label="B")
    setup = prepare_generation(model, make_context(), prompt_tokens=8, new_tokens=2, batch_size=1)
    with eval_mode(model), eval_mode(reference):
        timings, reference_timings, wall = paired_loop(
            model, reference, setup, setup, Clock(setup.device, now), min_iterations=4, min_seconds=0,
            max_iterations=4,
        )
    assert len(timings) == len(reference_timings) == 4
    assert "".join(order) == "ABBAABBA"  # A B, B A, A B, B A
    assert wall == 8 * (0.25 + 0.125)
