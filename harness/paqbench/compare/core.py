"""Compare two reports run by run and metric by metric; decide what regressed.

Pure functions over ``report.json`` dicts: pairing runs, computing changes, the noise
band of repeated measurements, ratios to each report's own dense baseline run, and the
verdict against the thresholds. Loading and printing live elsewhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from paqbench.compare.settings import (
    ParamDefaults,
    differences,
    metric_settings,
    registered_defaults,
    run_metric_changes,
    setting_changes,
)
from paqbench.compare.thresholds import CompareOptions, RecoveryFloor, Threshold
from paqbench.measure.stats import recovery
from paqbench.report.records import planned_steps
from paqbench.report.tables import QUALITY_METRICS
from paqbench.runner.result import measurement_key

Verdict = Literal["better", "worse", "same", "within noise", "changed", "n/a", "missing", "new", "not comparable"]
Mode = Literal["value", "ratio"]
BASELINE = "baseline"

_EPS = 1e-12  # float slack when a change is compared with a limit


@dataclass(frozen=True)
class MetricDelta:
    """One measurement of one paired run, in BASE and in NEW, and the verdict."""

    run: str
    key: str  # metric/name
    unit: str
    better: str | None
    mode: Mode  # value, or ratio to the report's own dense baseline run
    base: float | None
    new: float | None
    abs_change: float | None
    rel_change: float | None
    noise: float | None  # half-width of the band a change must leave to count, in the compared unit
    verdict: Verdict
    threshold: Threshold | None
    regressed: bool
    reason: str = ""
    #: quality metrics: the value as a percentage of its own report's dense baseline run
    base_recovery: float | None = None
    new_recovery: float | None = None
    min_recovery: RecoveryFloor | None = None


@dataclass(frozen=True)
class RunPair:
    """A run of BASE and the run of NEW it is compared with."""

    base_name: str
    new_name: str
    pipeline: str
    matched_by: Literal["parameters", "name"]
    base_status: str
    new_status: str
    parameter_changes: tuple[str, ...] = ()  # step parameters, when matched by name
    metric_changes: tuple[str, ...] = ()  # metric parameters that make measurements not comparable


@dataclass
class Comparison:
    """Everything ``paqbench compare`` found: the run pairs, each measurement's verdict, what did not pair."""

    base_label: str
    new_label: str
    options: CompareOptions
    pairs: list[RunPair] = field(default_factory=list)
    deltas: list[MetricDelta] = field(default_factory=list)
    unmatched_base: list[str] = field(default_factory=list)
    unmatched_new: list[str] = field(default_factory=list)
    run_regressions: list[str] = field(default_factory=list)  # e.g. a run ok in BASE that failed in NEW
    setting_changes: tuple[str, ...] = ()  # model, calibration or seed differ between the reports

    @property
    def not_comparable(self) -> list[MetricDelta]:
        """Measurements whose metric ran with different parameters: shown, never judged."""
        return [d for d in self.deltas if d.verdict == "not comparable"]

    @property
    def regressions(self) -> list[MetricDelta]:
        return [d for d in self.deltas if d.regressed]

    @property
    def failed(self) -> bool:
        return bool(self.regressions or self.run_regressions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base_label,
            "new": self.new_label,
            "failed": self.failed,
            "not_comparable": len(self.not_comparable),
            "setting_changes": list(self.setting_changes),
            "regressions": [f"{d.run}: {d.key}" for d in self.regressions] + list(self.run_regressions),
            "options": _jsonable(asdict(self.options)),
            "pairs": [asdict(p) for p in self.pairs],
            "unmatched_base": self.unmatched_base,
            "unmatched_new": self.unmatched_new,
            "run_regressions": self.run_regressions,
            "deltas": [_jsonable(asdict(d)) for d in self.deltas],
        }


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str, allow_nan=True))


# -- pairing runs -----------------------------------------------------------------------


def run_signature(run: dict[str, Any]) -> str:
    """Pipeline and resolved step parameters: what makes two runs the same experiment."""
    steps = [asdict(step) for step in planned_steps(run)]
    return json.dumps({"pipeline": run.get("pipeline"), "steps": steps}, sort_keys=True, default=str)


def _step_params(run: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for index, step in enumerate(planned_steps(run), start=1):
        for key, value in (step.params or {}).items():
            flat[f"step {index} {step.method}.{key}"] = value
    return flat


def _parameter_changes(base: dict[str, Any], new: dict[str, Any]) -> tuple[str, ...]:
    a, b = _step_params(base), _step_params(new)
    return tuple(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def pair_runs(
    base_runs: list[dict[str, Any]], new_runs: list[dict[str, Any]], strict: bool = False
) -> tuple[list[tuple[dict[str, Any], dict[str, Any], str]], list[str], list[str]]:
    """Pair runs by pipeline and parameters; then (unless ``strict``) the rest by run name,
    so a changed fixed parameter shows its effect instead of two unmatched runs."""
    pairs: list[tuple[dict[str, Any], dict[str, Any], str]] = []
    new_left = list(new_runs)
    base_left = []
    for run in base_runs:
        signature = run_signature(run)
        match = next((n for n in new_left if run_signature(n) == signature), None)
        if match is None:
            base_left.append(run)
        else:
            new_left.remove(match)
            pairs.append((run, match, "parameters"))
    if not strict:
        for run in list(base_left):
            match = next((n for n in new_left if n.get("name") == run.get("name")), None)
            if match is not None:
                new_left.remove(match)
                base_left.remove(run)
                pairs.append((run, match, "name"))
    order = {r.get("name"): i for i, r in enumerate(base_runs)}
    pairs.sort(key=lambda p: order.get(p[0].get("name"), 0))
    return pairs, [r["name"] for r in base_left], [r["name"] for r in new_left]


# -- one measurement ------------------------------------------------------------------


def _index(run: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not run:
        return {}
    return {measurement_key(m): m for m in run.get("measurements") or [] if m.get("name") != "*"}


def spread_width(m: dict[str, Any] | None, stderr_is_noise: bool = False) -> float | None:
    """Half-width of a measurement's recorded spread: half the p10-p90 range, else the
    sample stdev, else p90 - median; the stderr only when asked (a perplexity or an
    accuracy is a deterministic function of the model and the data, so its stderr over
    windows or questions says nothing about run-to-run noise)."""
    spread = (m or {}).get("spread") or {}
    if "p10" in spread and "p90" in spread:
        return abs(spread["p90"] - spread["p10"]) / 2
    if "stdev" in spread:
        return abs(spread["stdev"])
    if "p90" in spread and "median" in spread:
        return abs(spread["p90"] - spread["median"])
    if stderr_is_noise and "stderr" in spread:
        return abs(spread["stderr"])
    return None


def combined_noise(width_a: float | None, width_b: float | None, sigmas: float) -> float | None:
    """Half-width of the band of a difference of two noisy values (widths add in quadrature;
    a side without a spread is assumed as noisy as the other)."""
    if width_a is None and width_b is None:
        return None
    a = width_a if width_a is not None else width_b
    b = width_b if width_b is not None else width_a
    return sigmas * math.hypot(a or 0.0, b or 0.0)


def _value(m: dict[str, Any] | None) -> float | None:
    value = (m or {}).get("value")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _ratio(
    m: dict[str, Any] | None, dense: dict[str, Any] | None, stderr_is_noise: bool
) -> tuple[float | None, float | None, str]:
    """Value / dense-baseline value, and the ratio's noise (relative widths in quadrature)."""
    value, reference = _value(m), _value(dense)
    if value is None:
        return None, None, ""
    if reference is None or reference == 0:
        return None, None, "no dense baseline value to divide by"
    ratio = value / reference
    wm, wd = spread_width(m, stderr_is_noise), spread_width(dense, stderr_is_noise)
    if wm is None and wd is None:
        return ratio, None, ""
    rel = math.hypot((wm or 0.0) / value if value else 0.0, (wd or 0.0) / reference)
    return ratio, abs(ratio) * rel, ""


def worse_by(better: str | None, delta: float) -> float:
    """How much worse a change of ``delta`` is (negative: better); any change for metrics without a direction."""
    if better == "lower":
        return delta
    if better == "higher":
        return -delta
    return abs(delta)


@dataclass(frozen=True)
class _Sides:
    """The two compared numbers (values or ratios to dense), their noise band and unit."""

    base: float | None
    new: float | None
    noise: float | None
    unit: str
    reason: str = ""


def _value_sides(base_m: dict[str, Any] | None, new_m: dict[str, Any] | None, options: CompareOptions,
                 unit: str) -> _Sides:
    base, new = _value(base_m), _value(new_m)
    noise = None
    if base is not None and new is not None:
        noise = combined_noise(spread_width(base_m, options.stderr_is_noise),
                               spread_width(new_m, options.stderr_is_noise), options.noise_sigmas)
    return _Sides(base, new, noise, unit)


def _ratio_sides(base_m: dict[str, Any] | None, new_m: dict[str, Any] | None, options: CompareOptions,
                 base_dense: dict[str, Any] | None, new_dense: dict[str, Any] | None) -> _Sides:
    base, base_noise, why_b = _ratio(base_m, base_dense, options.stderr_is_noise)
    new, new_noise, why_n = _ratio(new_m, new_dense, options.stderr_is_noise)
    noise = None
    if base_noise is not None or new_noise is not None:
        noise = combined_noise(base_noise, new_noise, options.noise_sigmas)
    return _Sides(base, new, noise, "x dense", why_b or why_n)


def _absent(sides: _Sides, ref: dict[str, Any], new_m: dict[str, Any] | None,
            threshold: Threshold | None) -> tuple[Verdict, bool, str] | None:
    """The verdict when a side has no number (``missing`` in NEW fails when gated); None when both have one."""
    if sides.base is None and sides.new is None:
        return "n/a", False, sides.reason or ref.get("unavailable") or "no value on either side"
    if sides.new is None:
        unavailable = (new_m or {}).get("unavailable")
        why = sides.reason or ("unavailable in NEW: " + unavailable if unavailable else "missing in NEW")
        return "missing", threshold is not None and threshold.gated, why
    if sides.base is None:
        return "new", False, sides.reason or "not in BASE"
    return None


def exceeds(threshold: Threshold | None, amount: float, base: float) -> bool:
    """Whether getting worse by ``amount`` (from ``base``) breaks a gated threshold."""
    if threshold is None or not threshold.gated or amount <= 0:
        return False
    if threshold.kind == "absolute":
        return amount > threshold.limit + _EPS
    return base == 0 or amount / abs(base) > threshold.limit + _EPS


def _judge(better: str | None, base: float, new: float, noise: float | None,
           threshold: Threshold | None) -> tuple[Verdict, bool]:
    """Verdict and regression of a change from ``base`` to ``new``: inside the noise band it never counts."""
    delta = new - base
    if delta == 0:
        return "same", False
    if noise is not None and abs(delta) <= noise:
        return "within noise", False
    amount = worse_by(better, delta)
    if better not in ("lower", "higher"):
        return "changed", exceeds(threshold, amount, base)
    return ("worse" if amount > 0 else "better"), exceeds(threshold, amount, base)


def compare_measurement(
    run: str,
    key: str,
    base_m: dict[str, Any] | None,
    new_m: dict[str, Any] | None,
    options: CompareOptions,
    base_dense: dict[str, Any] | None = None,
    new_dense: dict[str, Any] | None = None,
) -> MetricDelta:
    """The verdict on one measurement. ``*_dense`` are the same measurement in each
    report's dense baseline run, needed when ``key`` is compared as a ratio."""
    ref = base_m or new_m or {}
    threshold = options.threshold_for(key)
    mode: Mode = "ratio" if options.is_baseline_relative(key) else "value"
    if mode == "ratio":
        sides = _ratio_sides(base_m, new_m, options, base_dense, new_dense)
    else:
        sides = _value_sides(base_m, new_m, options, ref.get("unit", ""))
    better = ref.get("better")
    absent = _absent(sides, ref, new_m, threshold)
    if absent is not None:
        verdict, regressed, why = absent
        return MetricDelta(run, key, sides.unit, better, mode, sides.base, sides.new, None, None, sides.noise,
                           verdict, threshold, regressed, why)
    base, new = sides.base, sides.new
    assert base is not None and new is not None  # _absent handled the others
    delta = new - base
    verdict, regressed = _judge(better, base, new, sides.noise, threshold)
    return MetricDelta(run, key, sides.unit, better, mode, base, new, delta, delta / abs(base) if base else None,
                       sides.noise, verdict, threshold, regressed, sides.reason)


def not_comparable(
    run: str, key: str, base_m: dict[str, Any] | None, new_m: dict[str, Any] | None, options: CompareOptions,
    why: list[str],
) -> MetricDelta:
    """A measurement whose metric ran with different parameters on the two sides: both
    values shown, no change computed, never a regression (also when one side lacks it)."""
    ref = base_m or new_m or {}
    return MetricDelta(run, key, ref.get("unit", ""), ref.get("better"), "value", _value(base_m), _value(new_m),
                       None, None, None, "not comparable", options.threshold_for(key), False, ", ".join(why))


def with_recovery(delta: MetricDelta, base_m: dict[str, Any] | None, new_m: dict[str, Any] | None,
                  base_dense: dict[str, Any] | None, new_dense: dict[str, Any] | None,
                  options: CompareOptions) -> MetricDelta:
    """``delta`` with each side's recovery (quality metrics, or any measurement a floor
    names) and the floor's verdict: NEW below ``min_recovery`` is a regression, judged on
    NEW alone (also when BASE lacks the measurement or measured it differently)."""
    ref = base_m or new_m or {}
    floor = options.recovery_floor_for(delta.key)
    if floor is None and ref.get("metric", delta.key.split("/", 1)[0]) not in QUALITY_METRICS:
        return delta
    better = ref.get("better")
    base_share = recovery(_value(base_m), _value(base_dense), better)
    new_share = recovery(_value(new_m), _value(new_dense), better)
    base_pct = None if base_share is None else base_share * 100
    new_pct = None if new_share is None else new_share * 100
    regressed, reason = delta.regressed, delta.reason
    if floor is not None and new_m is not None:
        if new_pct is None:
            why = "no recovery in NEW (no value, no dense baseline value or no direction)"
            reason = f"{reason}; {why}" if reason else why
        elif new_pct < floor.percent - _EPS:
            regressed = True
            why = f"recovery {new_pct:.2f}% < {floor.percent:g}%"
            reason = f"{reason}; {why}" if reason else why
    return replace(delta, base_recovery=base_pct, new_recovery=new_pct, min_recovery=floor,
                   regressed=regressed, reason=reason)


# -- whole reports ----------------------------------------------------------------------


def _dense(report: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in report.get("runs") or [] if r.get("pipeline") == BASELINE and r.get("status") == "ok"),
                None)


@dataclass(frozen=True)
class _Context:
    """What every pair of a comparison shares."""

    options: CompareOptions
    base_dense: dict[str, dict[str, Any]]
    new_dense: dict[str, dict[str, Any]]
    defaults: ParamDefaults


def _compare_pair(comparison: Comparison, base_run: dict[str, Any], new_run: dict[str, Any], how: str,
                  ctx: _Context) -> None:
    """Add one pair of runs, its run-level regressions and its measurements to ``comparison``."""
    comparison.pairs.append(RunPair(
        base_name=base_run["name"], new_name=new_run["name"], pipeline=new_run.get("pipeline", ""),
        matched_by=how,  # type: ignore[arg-type]
        base_status=base_run.get("status", "?"), new_status=new_run.get("status", "?"),
        parameter_changes=_parameter_changes(base_run, new_run) if how == "name" else (),
        metric_changes=run_metric_changes(base_run, new_run, ctx.defaults),
    ))
    name = new_run["name"]
    if base_run.get("status") == "ok" and new_run.get("status") != "ok":
        message = ((new_run.get("error") or {}).get("message") or "failed").splitlines()[0]
        comparison.run_regressions.append(f"{name}: failed in NEW ({message})")
    base_ms, new_ms = _index(base_run), _index(new_run)
    for key in list(base_ms) + [k for k in new_ms if k not in base_ms]:
        if ctx.options.is_ignored(key):
            continue
        base_m, new_m = base_ms.get(key), new_ms.get(key)
        ref = base_m or new_m or {}
        metric = ref.get("metric", key.split("/", 1)[0])
        why = differences(metric, ref.get("name"), metric_settings(base_run, metric, ctx.defaults),
                          metric_settings(new_run, metric, ctx.defaults))
        if why:
            delta = not_comparable(name, key, base_m, new_m, ctx.options, why)
        else:
            delta = compare_measurement(name, key, base_m, new_m, ctx.options,
                                        ctx.base_dense.get(key), ctx.new_dense.get(key))
        comparison.deltas.append(with_recovery(delta, base_m, new_m, ctx.base_dense.get(key),
                                               ctx.new_dense.get(key), ctx.options))


def compare_reports(
    base: dict[str, Any], new: dict[str, Any], options: CompareOptions | None = None,
    base_label: str = "BASE", new_label: str = "NEW", param_defaults: ParamDefaults = registered_defaults,
) -> Comparison:
    """Every measurement of every paired run, with verdicts against ``options``; a
    measurement whose metric parameters differ is ``not comparable``. ``param_defaults``
    gives a metric's parameter defaults, for a parameter one report did not record."""
    options = options or CompareOptions()
    comparison = Comparison(base_label=base_label, new_label=new_label, options=options,
                            setting_changes=setting_changes(base, new))
    pairs, comparison.unmatched_base, comparison.unmatched_new = pair_runs(
        base.get("runs") or [], new.get("runs") or [], options.strict_match)
    if options.fail_on_missing:
        comparison.run_regressions += [f"{name}: not in NEW" for name in comparison.unmatched_base]
    ctx = _Context(options, _index(_dense(base)), _index(_dense(new)), param_defaults)
    for base_run, new_run, how in pairs:
        _compare_pair(comparison, base_run, new_run, how, ctx)
    return comparison
