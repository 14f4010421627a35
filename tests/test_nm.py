"""N:M patterns: the convention (N zeros in every M), masks against brute force, the
validator, and the shared parameter schema's errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from pydantic import ValidationError

from paqbench.prune.nm import NMPattern, is_nm_sparse, nm_keep_mask, parse_nm
from paqbench.prune.params import SparsityParams


def test_parse_and_convention():
    assert parse_nm("2:4") == NMPattern(2, 4) and parse_nm(" 4 : 8 ") == NMPattern(4, 8)
    assert NMPattern(2, 4).sparsity == 0.5 and NMPattern(1, 4).sparsity == 0.25  # N zeros of M
    for bad in ("2-4", "2:", "4:2", "0:4", "4:4", "a:b"):
        with pytest.raises(ValueError):
            parse_nm(bad)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 4)])
def test_mask_zeroes_exactly_the_n_lowest_of_every_group(n, m):
    scores = torch.randn(6, 4 * m, generator=torch.Generator().manual_seed(n * 10 + m))
    keep = nm_keep_mask(scores, NMPattern(n, m))
    groups_keep = keep.view(6, 4, m)
    groups_score = scores.view(6, 4, m)
    assert torch.all((~groups_keep).sum(-1) == n)
    for r, g in itertools.product(range(6), range(4)):
        dropped = groups_score[r, g][~groups_keep[r, g]]
        kept = groups_score[r, g][groups_keep[r, g]]
        assert dropped.max() <= kept.min()
    assert is_nm_sparse(scores * keep, n, m)


def test_validator_catches_a_single_bad_group_and_bad_widths():
    weight = torch.randn(4, 16)
    weight = weight * nm_keep_mask(weight.abs(), NMPattern(2, 4))
    assert is_nm_sparse(weight, 2, 4)
    assert not is_nm_sparse(weight, 3, 4)
    broken = weight.clone()
    row = 3
    group = broken[row, 12:16]
    broken[row, 12 + int(torch.nonzero(group == 0)[0])] = 1.0  # one group with only one zero
    assert not is_nm_sparse(broken, 2, 4)
    assert not is_nm_sparse(torch.zeros(4, 18), 2, 4)  # 18 columns: no whole groups of 4
    assert not is_nm_sparse(torch.randn(4, 16), 2, 4)  # dense


def test_earlier_zeros_go_first_and_stay():
    scores = torch.arange(16, dtype=torch.float32).view(1, 16)
    earlier = torch.ones(1, 16, dtype=torch.bool)
    earlier[0, [3, 6, 7]] = False  # the largest of group 0, two of group 1
    keep = nm_keep_mask(scores, NMPattern(1, 4), earlier)
    assert not keep[0, [3, 6, 7]].any()
    assert (~keep).view(4, 4).sum(-1).tolist() == [1, 2, 1, 1]
    assert not keep[0, 8] and not keep[0, 12]  # the lowest of the untouched groups


def test_width_not_divisible_is_refused_clearly():
    with pytest.raises(ValueError, match=r"multiple of 8.*12 input columns"):
        nm_keep_mask(torch.randn(2, 12), NMPattern(4, 8))


def test_params_fill_sparsity_from_the_pattern_and_refuse_contradictions():
    params = SparsityParams(pattern="1:4")
    assert params.sparsity == 0.25 and params.nm == NMPattern(1, 4)
    again = SparsityParams.model_validate(params.model_dump(mode="json"))  # as the runner revalidates
    assert again == params
    assert SparsityParams(pattern=" 2:4", sparsity=0.5).pattern == "2:4"
    assert SparsityParams().sparsity == 0.5 and SparsityParams().nm is None
    with pytest.raises(ValidationError, match=r"contradicts pattern '2:4'.*leave sparsity unset"):
        SparsityParams(pattern="2:4", sparsity=0.3)
    with pytest.raises(ValidationError, match="N:M"):
        SparsityParams(pattern="2/4")
    with pytest.raises(ValidationError, match="0 < N < M"):
        SparsityParams(pattern="4:2")
