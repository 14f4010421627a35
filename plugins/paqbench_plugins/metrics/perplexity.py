"""Perplexity on WikiText-2, PTB, C4, the embedded sample or a local text file, by the
papers' protocol (non-overlapping windows of ``seqlen`` tokens, remainder dropped)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator

from pydantic import Field
from torch import nn

from paqbench import Measurement, Metric, Params, RunContext, hookimpl
from paqbench.measure.perplexity import window_nlls, windows


class PerplexityParams(Params):
    dataset: str = Field("wikitext2", description="dataset name (paqbench list datasets) or a text file path")
    split: str = Field("test", description="dataset split")
    seqlen: int = Field(2048, gt=1, description="tokens per window (2048 in the papers)")
    batch_size: int = Field(1, gt=0, description="windows per forward pass")
    max_windows: int | None = Field(None, gt=0, description="evaluate only the first N windows (--limit also caps)")


class Perplexity(Metric):
    name = "perplexity"
    description = (
        "Perplexity by the GPTQ/SparseGPT protocol: tokenize the joined split once, "
        "non-overlapping windows of seqlen tokens, exp(mean window NLL)."
    )
    Params = PerplexityParams
    supports_offload = True  # window_nlls runs block by block on weights left on disk

    def measure(self, model: nn.Module, params: PerplexityParams, ctx: RunContext) -> Iterator[Measurement]:
        corpus = ctx.dataset(params.dataset, params.split)
        ids = ctx.tokenizer(corpus.text, return_tensors="pt").input_ids
        caps = [c for c in (params.max_windows, ctx.limit) if c is not None]
        batches = windows(ids, params.seqlen, min(caps) if caps else None)
        nlls = window_nlls(
            model, batches, params.batch_size, device=None,
            wrap=lambda it, total: ctx.progress(it, f"perplexity {params.dataset}", total=total),
        )
        mean_nll = statistics.fmean(nlls)
        spread = {}
        if len(nlls) > 1:
            # delta method: stderr of exp(mean) from the windows' spread
            spread["stderr"] = math.exp(mean_nll) * statistics.stdev(nlls) / math.sqrt(len(nlls))
        yield self.make(
            corpus.dataset if params.dataset != corpus.dataset else params.dataset,
            math.exp(mean_nll), "ppl", "lower", spread=spread or None, samples=nlls,
            details={
                "split": params.split, "seqlen": params.seqlen, "windows": len(nlls),
                "total_windows": ids.shape[1] // params.seqlen, "tokens": int(ids.shape[1]),
                "dataset_fingerprint": corpus.fingerprint, "origin": corpus.origin,
                "mean_nll": mean_nll, "samples_are": "mean NLL (nats) per window",
            },
        )


@hookimpl
def paqbench_register_metrics(register):
    register(Perplexity)
