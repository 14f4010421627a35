"""Logit agreement between paqbench's in-memory model and an engine, on the same ids.

Both sides give ``[windows, seqlen, vocab]`` logits for the same token windows; the
perplexity on each side follows :mod:`paqbench.measure.perplexity` (mean next-token NLL per
window, ``exp`` of the mean over windows).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Tolerance:
    """When an engine counts as computing the same model: its perplexity within
    ``ppl_rel`` of paqbench's and the same top-1 token at ``top1`` of the positions."""

    ppl_rel: float = 0.005
    top1: float = 0.99


@dataclass(frozen=True)
class Agreement:
    """The round-trip numbers; ``passed`` applies a :class:`Tolerance`."""

    max_abs_logit: float
    mean_kl: float
    top1: float
    ppl_reference: float
    ppl_engine: float
    positions: int
    passed: bool

    @property
    def ppl_rel(self) -> float:
        return abs(self.ppl_engine / self.ppl_reference - 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ppl_rel": self.ppl_rel}


def perplexity(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """The papers' protocol on ``[n, seqlen, vocab]`` logits of ``[n, seqlen]`` windows."""
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="none"
    ).view(ids.shape[0], -1)
    return math.exp(float(nll.mean(dim=1).mean()))


def compare(reference: torch.Tensor, engine: torch.Tensor, ids: torch.Tensor,
            tolerance: Tolerance | None = None) -> Agreement:
    """Compare two ``[n, seqlen, vocab]`` logit tensors computed on ``ids``."""
    tolerance = tolerance or Tolerance()
    reference, engine = reference.float(), engine.float()
    log_p = F.log_softmax(reference, dim=-1)
    log_q = F.log_softmax(engine, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    top1 = (reference.argmax(dim=-1) == engine.argmax(dim=-1)).float().mean()
    ppl_ref, ppl_engine = perplexity(reference, ids), perplexity(engine, ids)
    passed = abs(ppl_engine / ppl_ref - 1.0) <= tolerance.ppl_rel and float(top1) >= tolerance.top1
    return Agreement(
        max_abs_logit=float((reference - engine).abs().max()), mean_kl=float(kl.mean()), top1=float(top1),
        ppl_reference=ppl_ref, ppl_engine=ppl_engine, positions=int(ids.numel()), passed=passed,
    )


@torch.inference_mode()
def model_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits of each window through a transformers-style model, one window at a time."""
    device = next(model.parameters(), torch.empty(0)).device
    return torch.stack([model(row[None].to(device), use_cache=False).logits[0].float().cpu() for row in ids])
