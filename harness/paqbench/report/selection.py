"""What the plots show, decided without matplotlib: which measurement is the quality axis
and which ones are size, memory and latency; which runs have a usable value (and why the
others are left out); the Pareto front of a trade-off; and which runs form a sweep.

Everything here works on the report's plain dicts (``report.json``'s ``runs``), so it is
tested on hand-made data and reused by any reporter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from paqbench.report.noise import Band, noise_band

Better = Literal["lower", "higher"]
Run = Mapping[str, Any]

#: Axis roles of the trade-off figure, each with the measurements that can fill it, in
#: order of preference. The one with a value in the most runs wins (ties: the earlier),
#: so a CPU run falls back from CUDA peaks to peak RSS without any configuration.
ROLE_CANDIDATES: dict[str, tuple[str, ...]] = {
    "storage": ("storage/checkpoint", "storage/bits_per_weight"),
    "nonzero params": ("params/nonzero",),
    "memory": ("memory/peak_allocated", "memory/process_vram", "memory/peak_rss", "memory/weights"),
    "latency": ("latency/tpot", "latency/e2e", "latency/ttft", "latency/decode_tokens_per_s"),
}
#: The size axis of the bubble chart: the first of these that differs between runs (a
#: dense checkpoint of a pruned model is as big as the baseline's; its nonzero count is not).
SIZE_CANDIDATES: tuple[str, ...] = ("storage/checkpoint", "params/nonzero", "storage/bits_per_weight")
#: Bubble area of the bubble chart.
BUBBLE_CANDIDATES: tuple[str, ...] = ("latency/tpot", "latency/e2e", "latency/ttft")


@dataclass(frozen=True)
class Axis:
    """One measurement used as a plot axis."""

    key: str  # "metric/name", e.g. "perplexity/wikitext2" or "race/high/acc"
    unit: str
    better: Better | None

    @property
    def metric(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split("/", 1)[1]

    @property
    def label(self) -> str:
        """Axis label with its unit, e.g. ``perplexity (embedded)`` or ``latency tpot [s/token]``."""
        title = self.metric if self.name == self.metric else f"{self.metric} {self.name}"
        if self.metric == "perplexity":
            title = f"perplexity ({self.name})"
        unit = {"fraction": "%", "ppl": "", "": ""}.get(self.unit, self.unit)
        return f"{title} [{unit}]" if unit else title


@dataclass(frozen=True)
class Point:
    run: str
    x: float
    y: float
    baseline: bool = False
    size: float | None = None  # a third value (bubble area), when used
    yerr: float | None = None  # the y measurement's standard error, when it has one
    xband: Band | None = None  # the noise band of a noisy x (a timing), None when deterministic
    yband: Band | None = None


@dataclass
class Selection:
    """The measurements chosen for the figures of one report."""

    quality: Axis | None
    secondary: Axis | None  # accuracy when the primary quality is perplexity
    roles: dict[str, Axis] = field(default_factory=dict)
    size: Axis | None = None
    bubble: Axis | None = None


def key_of(measurement: Mapping[str, Any]) -> str:
    return f"{measurement['metric']}/{measurement['name']}"


def find(run: Run, key: str) -> Mapping[str, Any] | None:
    """The run's measurement ``key`` ("metric/name"), or None."""
    return next((m for m in run.get("measurements") or () if key_of(m) == key), None)


def value_or_reason(run: Run, key: str) -> tuple[float | None, str | None]:
    """A plottable value, or why there is none: the run failed before measuring, the metric
    raised, it is unavailable here (with the metric's reason), or it was not measured. A
    missing value is never a zero."""
    metric = key.split("/", 1)[0]
    phase = next((p for p in run.get("metrics") or () if p.get("name") == metric), None)
    if phase is not None and phase.get("error"):
        return None, f"{metric} failed ({phase['error']})"
    measurement = find(run, key)
    if measurement is None:
        whole = find(run, f"{metric}/*")
        if whole is not None and whole.get("unavailable"):
            return None, f"{metric} unavailable ({whole['unavailable']})"
        if run.get("status") != "ok":
            message = (run.get("error") or {}).get("message")
            return None, f"run {run.get('status')}" + (f": {message}" if message else "")
        return None, f"no {key} measurement"
    value = measurement.get("value")
    if value is None:
        return None, f"{key} unavailable ({measurement.get('unavailable') or 'no value'})"
    value = float(value)
    if not math.isfinite(value):
        return None, f"{key} is {value}"
    return value, None


def stderr_of(run: Run, key: str) -> float | None:
    """The standard error the measurement recorded in its spread, if any."""
    measurement = find(run, key)
    spread = (measurement or {}).get("spread") or {}
    value = spread.get("stderr")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def axis_for(runs: Sequence[Run], key: str) -> Axis | None:
    """The axis of measurement ``key``: unit and direction from its first recorded value."""
    for run in runs:
        m = find(run, key)
        if m is not None and m.get("value") is not None:
            return Axis(key, m.get("unit", ""), m.get("better"))
    return None


def available_count(runs: Sequence[Run], key: str) -> int:
    return sum(1 for run in runs if value_or_reason(run, key)[0] is not None)


def _keys(runs: Sequence[Run]) -> list[str]:
    keys: list[str] = []
    for run in runs:
        for m in run.get("measurements") or ():
            key = key_of(m)
            if m["name"] != "*" and key not in keys:
                keys.append(key)
    return keys


def choose(runs: Sequence[Run], candidates: Sequence[str]) -> Axis | None:
    """The candidate with a value in the most runs (ties: the earlier); None if none has any."""
    best, best_count = None, 0
    for key in candidates:
        count = available_count(runs, key)
        if count > best_count:
            best, best_count = key, count
    return axis_for(runs, best) if best else None


def choose_varying(runs: Sequence[Run], candidates: Sequence[str]) -> Axis | None:
    """The first candidate whose values differ between runs, else the first with any value."""
    present = [k for k in candidates if available_count(runs, k)]
    for key in present:
        values = {value_or_reason(r, key)[0] for r in runs} - {None}
        if len(values) > 1:
            return axis_for(runs, key)
    return axis_for(runs, present[0]) if present else None


def quality_axes(runs: Sequence[Run]) -> tuple[Axis | None, Axis | None]:
    """(primary, secondary) quality: the first perplexity measurement, else the first
    accuracy (a higher-is-better fraction); the secondary is that accuracy when a
    perplexity is primary."""
    keys = _keys(runs)
    perplexity = next((k for k in keys if k.startswith("perplexity/") and available_count(runs, k)), None)
    accuracy = None
    for key in keys:
        axis = axis_for(runs, key)
        if axis and axis.unit == "fraction" and axis.better == "higher":
            accuracy = axis
            break
    if perplexity:
        return axis_for(runs, perplexity), accuracy
    return accuracy, None


def select(runs: Sequence[Run], overrides: Mapping[str, str] | None = None) -> Selection:
    """Pick every axis of the figures. ``overrides`` maps a role (``quality``,
    ``secondary``, ``storage``, ``nonzero params``, ``memory``, ``latency``, ``size``,
    ``bubble``) to a measurement key ("metric/name"), or to "" to leave the role out."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - {"quality", "secondary", "size", "bubble", *ROLE_CANDIDATES}
    if unknown:
        raise ValueError(f"unknown plot roles {sorted(unknown)}")

    def pick(role: str, default: Axis | None) -> Axis | None:
        if role not in overrides:
            return default
        key = overrides[role]
        if not key:
            return None
        axis = axis_for(runs, key)
        if axis is None:
            raise ValueError(f"plot role {role!r}: no run has a value for {key!r}")
        return axis

    quality, secondary = quality_axes(runs)
    roles = {}
    for role, candidates in ROLE_CANDIDATES.items():
        axis = pick(role, choose(runs, candidates))
        if axis is not None:
            roles[role] = axis
    return Selection(
        quality=pick("quality", quality),
        secondary=pick("secondary", secondary),
        roles=roles,
        size=pick("size", choose_varying(runs, SIZE_CANDIDATES)),
        bubble=pick("bubble", choose(runs, BUBBLE_CANDIDATES)),
    )


def collect(runs: Sequence[Run], x: Axis, y: Axis, size: Axis | None = None) -> tuple[list[Point], list[str]]:
    """The points of a scatter of ``y`` against ``x`` (one per run with both values) and a
    note for each run left out, naming the run and the reason."""
    points, skipped = [], []
    for run in runs:
        values = []
        for axis in (x, y, size):
            if axis is None:
                values.append(None)
                continue
            value, reason = value_or_reason(run, axis.key)
            if reason:
                skipped.append(f"{run['name']}: {reason}")
                break
            values.append(value)
        else:
            points.append(Point(run["name"], values[0], values[1], run.get("pipeline") == "baseline", values[2],
                                stderr_of(run, y.key), band_of(run, x.key), band_of(run, y.key)))
    return points, skipped


def band_of(run: Run, key: str) -> Band | None:
    """The noise band of the run's measurement ``key`` (None when deterministic)."""
    measurement = find(run, key)
    return noise_band(measurement) if measurement is not None else None


def _order(a: float, b: float, band_a: Band | None, band_b: Band | None, better: Better) -> int:
    """-1 when ``a`` is better than ``b``, 1 when worse, 0 when equal or when their noise
    bands overlap (indistinguishable: not ranked against each other)."""
    noisy = band_a is not None or band_b is not None
    if noisy and (band_a or Band(a, a, 1)).overlaps(band_b or Band(b, b, 1)):
        return 0
    if a == b:
        return 0
    return -1 if (a < b) == (better == "lower") else 1


def dominates(a: tuple[float, float], b: tuple[float, float], x_better: Better, y_better: Better,
              bands: tuple[Band | None, Band | None, Band | None, Band | None] = (None, None, None, None)) -> bool:
    """Whether ``a`` is at least as good as ``b`` on both axes and better on one; with
    ``bands`` (a's x, a's y, b's x, b's y), a difference inside the noise is no difference."""
    ox = _order(a[0], b[0], bands[0], bands[2], x_better)
    oy = _order(a[1], b[1], bands[1], bands[3], y_better)
    return ox <= 0 and oy <= 0 and (ox < 0 or oy < 0)


def pareto_front(
    points: Sequence[tuple[float, float]], x_better: Better | None, y_better: Better | None,
    bands: Sequence[tuple[Band | None, Band | None]] | None = None,
) -> list[int]:
    """Indices of the points no other point dominates, ordered by x. Empty when an axis
    has no direction (an informational measurement has no "better"). ``bands`` (x, y) per
    point: differences inside the noise do not rank points."""
    if x_better is None or y_better is None:
        return []
    bands = list(bands) if bands is not None else [(None, None)] * len(points)
    front = [i for i, p in enumerate(points)
             if not any(dominates(q, p, x_better, y_better, (*bands[j], *bands[i]))
                        for j, q in enumerate(points) if j != i)]
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def noisy_axis_all_within_noise(points: Sequence[Point], axis: Literal["x", "y"]) -> bool:
    """Whether, on a noisy axis, every non-baseline point is within noise of the baseline:
    then the axis separates nothing and no front is drawn through it."""
    base = next((p for p in points if p.baseline), None)
    others = [p for p in points if not p.baseline]
    if base is None or not others:
        return False

    def band(p: Point) -> Band | None:
        return p.xband if axis == "x" else p.yband

    def value(p: Point) -> float:
        return p.x if axis == "x" else p.y

    if all(band(p) is None for p in points):
        return False
    reference = band(base) or Band(value(base), value(base), 1)
    return all((band(p) or Band(value(p), value(p), 1)).overlaps(reference) for p in others)


def front_of(points: Sequence[Point], x_better: Better | None, y_better: Better | None) -> list[int]:
    """The Pareto front of plotted points under the noise rule: ties inside noise bands do
    not rank, and a noisy axis on which every run is within noise of the baseline gives no
    front at all."""
    if noisy_axis_all_within_noise(points, "x") or noisy_axis_all_within_noise(points, "y"):
        return []
    return pareto_front([(p.x, p.y) for p in points], x_better, y_better, [(p.xband, p.yband) for p in points])


def log_scale(values: Sequence[float], ratio: float = 10.0) -> bool:
    """Whether positive values span more than ``ratio`` times (perplexity after heavy
    pruning does), so a log axis keeps the good runs apart."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and len(positive) > 1 and max(positive) > ratio * min(positive)


@dataclass(frozen=True)
class Sweep:
    """Runs of one pipeline that differ in one swept parameter only (a line in a plot)."""

    pipeline: str
    parameter: str
    fixed: tuple[tuple[str, Any], ...]  # the other swept parameters, held at these values
    runs: tuple[str, ...]  # run names, ordered by the parameter's value
    values: tuple[Any, ...]

    @property
    def numeric(self) -> bool:
        return all(_is_number(v) for v in self.values)

    @property
    def label(self) -> str:
        held = ", ".join(f"{k}={v}" for k, v in self.fixed)
        return f"{self.pipeline} ({held})" if held else self.pipeline


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def detect_sweeps(runs: Sequence[Run]) -> list[Sweep]:
    """Every line a report's sweeps make: for each pipeline and swept parameter, the runs
    that share the pipeline's other swept values, when they hold at least two different
    values of the parameter. A two-parameter grid gives one line per value of the other."""
    by_pipeline: dict[str, list[Run]] = {}
    for run in runs:
        if run.get("sweep"):
            by_pipeline.setdefault(run["pipeline"], []).append(run)
    sweeps = []
    for pipeline, members in by_pipeline.items():
        parameters = list(dict.fromkeys(k for run in members for k in run["sweep"]))
        for parameter in parameters:
            groups: dict[tuple, list[Run]] = {}
            for run in members:
                if parameter not in run["sweep"]:
                    continue
                fixed = tuple((k, _hashable(v)) for k, v in run["sweep"].items() if k != parameter)
                groups.setdefault(fixed, []).append(run)
            for fixed, group in groups.items():
                distinct = {_hashable(r["sweep"][parameter]) for r in group}
                if len(distinct) < 2:
                    continue
                if all(_is_number(r["sweep"][parameter]) for r in group):
                    group = sorted(group, key=lambda r: r["sweep"][parameter])
                sweeps.append(Sweep(pipeline, parameter, fixed, tuple(r["name"] for r in group),
                                    tuple(r["sweep"][parameter] for r in group)))
    return sweeps
