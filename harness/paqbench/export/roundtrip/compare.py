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
    ``ppl_rel`` of paqbench's, the same top-1 token at ``top1`` of all positions and at
    ``top1_decisive`` of the decisive ones — where paqbench's top-1 logit leads the
    runner-up by at least ``decisive_margin``. An engine that rounds activations flips
    near-ties (margins of a few hundredths of a logit) but never a clear choice."""

    ppl_rel: float = 0.005
    top1: float = 0.99
    top1_decisive: float = 0.99
    decisive_margin: float = 0.5


@dataclass(frozen=True)
class Agreement:
    """The round-trip numbers; ``passed`` applies a :class:`Tolerance`."""

    max_abs_logit: float
    mean_kl: float
    top1: float
    top1_decisive: float
    decisive_positions: int
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
    same = reference.argmax(dim=-1) == engine.argmax(dim=-1)
    top1 = float(same.float().mean())
    leaders = reference.topk(2, dim=-1).values
    decisive = (leaders[..., 0] - leaders[..., 1]) >= tolerance.decisive_margin
    top1_decisive = float(same[decisive].float().mean()) if bool(decisive.any()) else 1.0
    ppl_ref, ppl_engine = perplexity(reference, ids), perplexity(engine, ids)
    passed = (abs(ppl_engine / ppl_ref - 1.0) <= tolerance.ppl_rel and top1 >= tolerance.top1
              and top1_decisive >= tolerance.top1_decisive)
    return Agreement(
        max_abs_logit=float((reference - engine).abs().max()), mean_kl=float(kl.mean()), top1=top1,
        top1_decisive=top1_decisive, decisive_positions=int(decisive.sum()),
        ppl_reference=ppl_ref, ppl_engine=ppl_engine, positions=int(ids.numel()), passed=passed,
    )


@torch.inference_mode()
def model_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits of each window through a transformers-style model, one window at a time."""
    device = next(model.parameters(), torch.empty(0)).device
    return torch.stack([model(row[None].to(device), use_cache=False).logits[0].float().cpu() for row in ids])
