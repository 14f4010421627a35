"""Perplexity follows the papers' protocol and equals an independent computation."""

from __future__ import annotations

import math

import pytest
import torch

from paqbench.testing import make_run_context
from paqbench_plugins.metrics.perplexity import Perplexity


def independent_perplexity(model, tokenizer, text: str, seqlen: int, n_windows: int) -> float:
    """The GPTQ repository's loop, written out plainly with transformers' own loss."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    nlls = []
    with torch.no_grad():
        for i in range(n_windows):
            batch = ids[:, i * seqlen : (i + 1) * seqlen]
            loss = model(batch, labels=batch).loss.float()
            nlls.append(loss * seqlen)
    return torch.exp(torch.stack(nlls).sum() / (n_windows * seqlen)).item()


def test_tiny_model_perplexity_matches_independent_loop(tiny_llama, make_context):
    ctx = make_context()
    (m,) = Perplexity().measure(tiny_llama, Perplexity.Params(dataset="embedded", seqlen=128, max_windows=5), ctx)
    text = ctx.dataset("embedded", "test").text
    assert m.value == pytest.approx(independent_perplexity(tiny_llama, ctx.tokenizer, text, 128, 5), rel=1e-5)
    assert m.details["windows"] == 5 and len(m.samples) == 5
    assert m.details["total_windows"] == m.details["tokens"] // 128
    assert m.better == "lower" and m.spread["stderr"] > 0


def test_limit_caps_windows_and_remainder_is_dropped(tiny_llama, make_context):
    ctx = make_context(limit=3)
    (m,) = Perplexity().measure(tiny_llama, Perplexity.Params(dataset="embedded", seqlen=256), ctx)
    assert m.details["windows"] == 3


def test_batched_equals_unbatched(tiny_llama, make_context):
    ctx = make_context()
    params = dict(dataset="embedded", seqlen=64, max_windows=6)
    (a,) = Perplexity().measure(tiny_llama, Perplexity.Params(**params, batch_size=1), ctx)
    (b,) = Perplexity().measure(tiny_llama, Perplexity.Params(**params, batch_size=4), ctx)
    assert a.value == pytest.approx(b.value, rel=1e-5)


@pytest.mark.realmodel
def test_smollm2_wikitext2_matches_independent_computation(smollm2, data_dir, tmp_path):
    model, tokenizer = smollm2
    ctx = make_run_context(tokenizer, tmp_path)
    (m,) = Perplexity().measure(model, Perplexity.Params(dataset="wikitext2", seqlen=2048, max_windows=3), ctx)
    text = ctx.dataset("wikitext2", "test").text
    expected = independent_perplexity(model, tokenizer, text, 2048, 3)
    assert m.value == pytest.approx(expected, rel=1e-4)
    assert 5 < m.value < 60 and math.isfinite(m.value)  # a real pretrained model, not noise
    assert m.details["dataset_fingerprint"] and m.details["tokens"] > 280_000
