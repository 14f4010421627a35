"""Summary statistics of raw samples (latencies, throughputs), computed one documented way.

Percentiles use linear interpolation between closest ranks, the convention of
``numpy.percentile``'s default (``method="linear"``, Hyndman & Fan type 7): for sorted
samples ``x[0..n-1]`` the ``q``-th percentile sits at rank ``r = (n - 1) * q / 100`` and is
``x[floor(r)] + (x[ceil(r)] - x[floor(r)]) * (r - floor(r))``. So p50 is the ordinary median
and p100 the maximum. ``stdev`` is the sample standard deviation (``n - 1`` in the
denominator); it is left out for a single sample rather than reported as 0, which would
claim a certainty one sample cannot give.

Kept free of numpy so that a number in a report can be traced to twenty lines of Python.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 <= q <= 100) of ``values`` by linear interpolation,
    equal to ``numpy.percentile(values, q)``."""
    if not values:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must lie in [0, 100], got {q}")
    ordered = sorted(float(v) for v in values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Summary statistics of one list of samples."""

    count: int
    median: float
    p90: float
    p99: float
    mean: float
    stdev: float | None
    min: float
    max: float

    def spread(self) -> dict[str, float]:
        """The statistics as a :class:`paqbench.Measurement` ``spread`` dict (``stdev``
        only when there are at least two samples)."""
        out = {
            "median": self.median, "p90": self.p90, "p99": self.p99, "mean": self.mean,
            "min": self.min, "max": self.max,
        }
        if self.stdev is not None:
            out["stdev"] = self.stdev
        return out


def summarize(values: Sequence[float]) -> Summary:
    """Median, p90, p99, mean, sample stdev, min and max of ``values`` (at least one)."""
    if not values:
        raise ValueError("cannot summarize no samples")
    data = [float(v) for v in values]
    if any(math.isnan(v) for v in data):
        raise ValueError("samples contain NaN")
    return Summary(
        count=len(data),
        median=percentile(data, 50),
        p90=percentile(data, 90),
        p99=percentile(data, 99),
        mean=statistics.fmean(data),
        stdev=statistics.stdev(data) if len(data) > 1 else None,
        min=min(data),
        max=max(data),
    )


def recovery(value: float | None, base: float | None, better: str | None) -> float | None:
    """The run's quality as a fraction of the baseline's, 1.0 = fully recovered.

    Direction-aware, so more is always better: ``value / base`` when higher is better
    (accuracy), ``base / value`` when lower is better (perplexity). None without both
    values, a direction, or with a zero denominator.
    """
    finite = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (value, base))
    if not finite or better not in ("higher", "lower"):
        return None
    numerator, denominator = (value, base) if better == "higher" else (base, value)
    return None if denominator == 0 else float(numerator) / float(denominator)
