"""When is a difference a change? One rule for every report (tables, HTML, plots).

A measurement is either *deterministic* or *noisy*:

- **Noisy**: a timing, rate or energy (its spread summarises repeated samples, as
  :func:`paqbench.measure.stats.summarize` writes it, or its unit is one of :data:`NOISY_UNITS`).
  Its noise band is the p10..p90 interval of its raw samples (from the spread's
  ``p10``/``p90`` or ``min``/``max`` when the samples were not kept). Two values differ
  only when their bands do not overlap. A paired speedup against the reference model
  (``latency/decode_speedup``, ``latency/prefill_speedup``) is compared with 1.0: it is a
  change only when 1.0 lies outside the band of its per-pair ratios. A noisy measurement
  with fewer than two samples has no band, so no change is claimed for it.
- **Deterministic**: everything else (parameter counts, storage, memory of the weights,
  perplexity on fixed windows, accuracy on fixed documents). The same model gives the
  same number, so any difference is a change. A recorded ``stderr`` there is the
  uncertainty about the whole population of texts or questions, not noise between runs;
  it is shown next to the value, never used to hide a difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from paqbench.measure.stats import percentile

#: Units of measurements that vary from one repetition to the next on the same model.
NOISY_UNITS = frozenset({"s", "s/token", "ms", "tokens/s", "×", "J/token", "J", "W"})
#: Spread keys that only a summary of repeated samples has (paqbench.measure.stats.Summary.spread).
_SUMMARY_KEYS = frozenset({"median", "p10", "p90", "p99", "stdev", "min", "max"})

Verdict = Literal["baseline", "change", "same", "unknown", "missing"]


@dataclass(frozen=True)
class Band:
    """The interval a noisy measurement's repetitions mostly fall in."""

    low: float
    high: float
    samples: int

    def overlaps(self, other: Band) -> bool:
        return self.low <= other.high and other.low <= self.high

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Change:
    """A value's change against its reference, and whether it exceeds the noise.

    ``verdict``: ``change`` (outside noise, or deterministic and different), ``same``
    (within the noise band, or deterministic and equal), ``unknown`` (noisy with no
    band), ``missing`` (no value on one side), ``baseline`` (the value is the reference).
    ``relative`` is (value − reference) / |reference|; ``points`` the difference in
    percentage points for fractions.
    """

    verdict: Verdict
    relative: float | None = None
    points: float | None = None
    noisy: bool = False  # judged against a noise band (else deterministic: equal or not)


def is_noisy(measurement: Mapping[str, Any]) -> bool:
    """Whether repeating the measurement on the same model gives a different number."""
    spread = measurement.get("spread") or {}
    return bool(_SUMMARY_KEYS & set(spread)) or measurement.get("unit") in NOISY_UNITS


def is_paired_speedup(measurement: Mapping[str, Any]) -> bool:
    """A ratio against the reference model timed in alternation (latency ``reference: true``)."""
    details = measurement.get("details") or {}
    return measurement.get("unit") == "×" and "reference" in details


def noise_band(measurement: Mapping[str, Any]) -> Band | None:
    """p10..p90 of the raw samples (or of the spread when samples were not kept); None
    for a deterministic measurement or a noisy one with fewer than two samples."""
    if not is_noisy(measurement):
        return None
    samples = [float(v) for v in measurement.get("samples") or () if _finite(v)]
    if len(samples) >= 2:
        return Band(percentile(samples, 10), percentile(samples, 90), len(samples))
    spread = measurement.get("spread") or {}
    low = spread.get("p10", spread.get("min"))
    high = spread.get("p90", spread.get("max"))
    count = int(spread.get("count") or 0)
    if _finite(low) and _finite(high) and (count >= 2 or "stdev" in spread) and low < high:
        return Band(float(low), float(high), count or 2)
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _difference(value: float, reference: float, unit: str) -> tuple[float | None, float | None]:
    relative = None if reference == 0 or not math.isfinite(reference) else (value - reference) / abs(reference)
    points = (value - reference) * 100 if unit == "fraction" else None
    return relative, points


def compare(measurement: Mapping[str, Any] | None, reference: Mapping[str, Any] | None) -> Change:
    """The change of ``measurement`` against the baseline's ``reference`` under the rule of
    this module (a paired speedup is compared with 1.0 and needs no reference)."""
    value = (measurement or {}).get("value")
    if not _finite(value):
        return Change("missing")
    if is_paired_speedup(measurement):
        return _speedup_change(measurement)
    base = (reference or {}).get("value")
    if not _finite(base):
        return Change("missing")
    relative, points = _difference(float(value), float(base), measurement.get("unit", ""))
    if not (is_noisy(measurement) or is_noisy(reference)):
        return Change("same" if value == base else "change", relative, points)
    mine, theirs = noise_band(measurement), noise_band(reference)
    if mine is None and theirs is None:
        return Change("unknown", relative, points, noisy=True)
    mine = mine or Band(float(value), float(value), 1)
    theirs = theirs or Band(float(base), float(base), 1)
    return Change("same" if mine.overlaps(theirs) else "change", relative, points, noisy=True)


def _speedup_change(measurement: Mapping[str, Any]) -> Change:
    value = float(measurement["value"])
    band = noise_band(measurement)
    relative = value - 1.0
    if band is None:
        return Change("unknown", relative, noisy=True)
    return Change("same" if band.contains(1.0) else "change", relative, noisy=True)
