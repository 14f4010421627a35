"""The round-trip agreement numbers on hand-made logits: top-1 over all positions and
over the decisive ones (paqbench's top-1 leads the runner-up by the margin)."""

from __future__ import annotations

import torch

from paqbench.export.roundtrip.compare import Tolerance, compare


def _logits(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows)[None]  # [1 window, positions, vocab]


def test_near_tie_flip_counts_against_top1_but_not_decisive_top1():
    reference = _logits([[2.0, 1.9, 0.0], [3.0, 0.0, 0.0], [0.0, 4.0, 1.0]])
    engine = _logits([[1.9, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 4.0, 1.0]])  # flips the 0.1-margin tie
    ids = torch.tensor([[0, 0, 1]])
    agreement = compare(reference, engine, ids, Tolerance(ppl_rel=1.0, top1=0.5, decisive_margin=0.5))
    assert abs(agreement.top1 - 2 / 3) < 1e-6
    assert agreement.decisive_positions == 2 and agreement.top1_decisive == 1.0
    assert agreement.passed


def test_flip_of_a_decisive_position_fails_the_check():
    reference = _logits([[2.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    engine = _logits([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])  # a 1-logit lead lost
    ids = torch.tensor([[0, 0]])
    agreement = compare(reference, engine, ids, Tolerance(ppl_rel=1.0, top1=0.5, decisive_margin=0.5))
    assert agreement.top1 == 0.5 and agreement.top1_decisive == 0.5
    assert not agreement.passed


def test_no_decisive_position_is_full_agreement_on_none():
    reference = _logits([[1.0, 1.0]])
    agreement = compare(reference, reference.clone(), torch.tensor([[0]]), Tolerance(decisive_margin=0.5))
    assert agreement.decisive_positions == 0 and agreement.top1_decisive == 1.0
