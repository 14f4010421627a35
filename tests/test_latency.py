"""The latency metric: TPOT arithmetic, fixed-length greedy generation, and a run on the
tiny model whose numbers must agree with each other."""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from pydantic import ValidationError

from paqbench.plugins.metrics.latency import (
    Clock,
    Latency,
    derive_rates,
    eval_mode,
    iteration_bounds,
    prepare_generation,
    prompt_ids,
    timed_generate,
)

TINY = dict(prompt_tokens=16, new_tokens=8, warmup=1, min_iterations=3, min_seconds=0)


def _measure(model, ctx, **params):
    """The metric's measurements by name."""
    return {m.name: m for m in Latency().measure(model, Latency.Params(**params), ctx)}


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


def test_batch_rows_count_in_tokens_per_second(tiny_llama, make_context):
    params = {**TINY, "batch_size": 2, "min_iterations": 1}
    measurements = _measure(tiny_llama, make_context(), **params)
    (t,), (e,), (d,) = (measurements[k].samples for k in ("ttft", "e2e", "decode_tokens_per_s"))
    assert d == pytest.approx(2 * 7 / (e - t))
    assert measurements["prefill_tokens_per_s"].samples[0] == pytest.approx(2 * 16 / t)


def test_min_seconds_keeps_measuring(tiny_llama, make_context):
    params = {**TINY, "min_iterations": 1, "min_seconds": 0.3}
    e2e = _measure(tiny_llama, make_context(), **params)["e2e"]
    assert e2e.details["measured_wall_s"] >= 0.3
    assert sum(e2e.samples) <= e2e.details["measured_wall_s"]


def test_limit_caps_iterations(tiny_llama, make_context):
    params = {**TINY, "min_iterations": 5, "min_seconds": 30}
    ttft = _measure(tiny_llama, make_context(limit=2), **params)["ttft"]
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


def slowed(model: torch.nn.Module, seconds: float) -> torch.nn.Module:
    """``model`` with a sleep before every forward (each prefill and decode step)."""
    model.register_forward_pre_hook(lambda module, args: time.sleep(seconds))
    return model


def test_reference_speedups_are_per_pair_ratios_and_see_a_slower_model(make_context):
    from paqbench.models.embedded import tiny_random_llama

    ctx = make_context(teacher=lambda: tiny_random_llama(seed=0))
    slow = slowed(tiny_random_llama(seed=0), 0.1)
    measurements = _measure(slow, ctx, **{**TINY, "new_tokens": 4}, reference=True)
    decode, prefill = measurements["decode_speedup"], measurements["prefill_speedup"]
    assert decode.unit == "×" and decode.better == "higher"
    tpot = measurements["tpot"].samples
    assert len(decode.samples) == len(tpot) == 3
    reference_tpot = [t * s for t, s in zip(tpot, decode.samples, strict=True)]  # speedup = ref / this
    assert decode.details["reference_tpot_s"] == pytest.approx(statistics.median(reference_tpot))
    # 100 ms more per forward than the reference's 1-50 ms (a loaded 2-core machine): every
    # decode step pays it, the prefill once
    assert decode.value < 0.75 and prefill.value < 0.9
    assert ctx._teacher is None  # the reference is dropped after the metric

    # the other way round: this model is the fast one
    ctx = make_context(teacher=lambda: slowed(tiny_random_llama(seed=0), 0.1))
    fast = _measure(tiny_random_llama(seed=0), ctx, **{**TINY, "new_tokens": 4}, reference=True)
    assert fast["decode_speedup"].value > 1 / 0.75


def test_paired_calls_alternate_their_order(make_context):
    from paqbench.models.embedded import tiny_random_llama
    from paqbench.plugins.metrics.latency import paired_loop

    order: list[str] = []

    def on_prefill(label):  # one prefill (the whole prompt) per generate call
        return lambda module, args, kwargs: order.append(label) if kwargs["input_ids"].shape[1] > 1 else None

    model, reference = tiny_random_llama(seed=0), tiny_random_llama(seed=0)
    model.register_forward_pre_hook(on_prefill("A"), with_kwargs=True)
    reference.register_forward_pre_hook(on_prefill("B"), with_kwargs=True)
    ctx = make_context()
    setup = prepare_generation(model, ctx, prompt_tokens=8, new_tokens=2, batch_size=1)
    with eval_mode(model), eval_mode(reference):
        timings, reference_timings, _ = paired_loop(
            model, reference, setup, setup, Clock(setup.device), min_iterations=4, min_seconds=0, max_iterations=4
        )
    assert len(timings) == len(reference_timings) == 4
    assert "".join(order) == "ABBAABBA"  # A B, B A, A B, B A
