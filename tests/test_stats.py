"""Summary statistics: hand-computed values and numpy's default percentile convention."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from paqbench.measure.stats import percentile, summarize


def test_percentile_interpolates_linearly_between_closest_ranks():
    values = [15, 20, 35, 40, 50]
    # rank = (n - 1) * q / 100 over the sorted values
    assert percentile(values, 0) == 15
    assert percentile(values, 50) == 35
    assert percentile(values, 100) == 50
    assert percentile(values, 40) == pytest.approx(20 + 0.6 * (35 - 20))  # rank 1.6 -> 29
    assert percentile(values, 90) == pytest.approx(40 + 0.6 * (50 - 40))  # rank 3.6 -> 46
    assert percentile(values, 25) == 20  # rank exactly 1


def test_percentile_sorts_and_averages_the_middle_pair_for_the_median():
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101])
def test_percentile_matches_numpy_default(n):
    rng = random.Random(n)
    values = [rng.uniform(-5, 5) for _ in range(n)]
    for q in (0, 1, 10, 33.3, 50, 90, 95, 99, 99.9, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-12)


def test_summarize_hand_computed():
    summary = summarize([1, 2, 3, 4, 10])
    assert summary.count == 5
    assert summary.median == 3
    assert summary.mean == 4
    # sample stdev: squared deviations 9, 4, 1, 0, 36 over n - 1 = 4
    assert summary.stdev == pytest.approx(math.sqrt(12.5))
    assert summary.p90 == pytest.approx(4 + 0.6 * 6)  # rank 3.6
    assert summary.p99 == pytest.approx(4 + 0.96 * 6)  # rank 3.96
    assert (summary.min, summary.max) == (1, 10)
    assert summary.spread() == {
        "median": 3, "p90": pytest.approx(7.6), "p99": pytest.approx(9.76), "mean": 4,
        "stdev": pytest.approx(math.sqrt(12.5)), "min": 1, "max": 10,
    }


def test_one_sample_has_no_stdev_rather_than_zero():
    summary = summarize([0.25])
    assert summary.stdev is None
    assert "stdev" not in summary.spread()
    assert summary.median == summary.p99 == summary.mean == 0.25


@pytest.mark.parametrize("call", [
    lambda: percentile([], 50),
    lambda: percentile([1, 2], 101),
    lambda: percentile([1, 2], -1),
    lambda: summarize([]),
    lambda: summarize([1.0, float("nan")]),
])
def test_bad_input_is_an_error(call):
    with pytest.raises(ValueError):
        call()
