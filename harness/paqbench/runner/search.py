"""Threshold search: the largest (or smallest) value of one step parameter that keeps a
metric within a bound, by bisection; every probe is an ordinary recorded run.

The search is a pure function of its probes' results: :func:`bisect` asks ``evaluate``
for each probe's run entry, so the runner drives it by running probes (or reusing
recorded ones on resume) and the report rebuilds the same answer from results.jsonl
alone. It assumes the metric worsens monotonically as the parameter moves away from the
feasible end (more sparsity, more damage); one probe per halving, so ``tol`` and the
range set the cost: about ``2 + log2((high - low) / tol)`` runs.

An objective ``min_recovery`` bounds the probe's value as a percentage of the baseline
run's (:func:`paqbench.report.noise.recovery`, direction-aware); the caller passes the
baseline's run entry to :func:`bisect`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from paqbench.measure.stats import recovery
from paqbench.planner import BASELINE, RunSpec, SearchSpec
from paqbench.runner.result import measurement_key

SearchStatus = Literal["done", "incomplete", "failed"]


@dataclass(frozen=True)
class Probe:
    value: float
    run: str
    run_id: str
    status: str  # ok | failed | not run
    measured: float | None = None
    feasible: bool | None = None


@dataclass
class SearchOutcome:
    """What a threshold search found, with every probe in the order it ran."""

    name: str
    pipeline: str
    parameter: str
    objective: dict[str, Any]
    low: float
    high: float
    tol: float
    status: SearchStatus
    answer: float | None = None
    bracket: tuple[float, float] | None = None
    reason: str = ""
    probes: list[Probe] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        o = self.objective
        if o.get("min_recovery") is not None:
            bound = f"recovery >= {o['min_recovery']:g}%"
        else:
            bound = f"<= {o['max']:g}" if o.get("max") is not None else f">= {o['min']:g}"
        head = f"{self.name}: {o.get('find', 'largest')} {self.parameter} with {o['metric']} {bound}"
        if self.status != "done":
            return f"{head}: {self.status} ({self.reason})"
        if self.answer is None:
            return f"{head}: none in [{self.low:g}, {self.high:g}] ({self.reason}; {len(self.probes)} probes)"
        bracket = f", bracket [{self.bracket[0]:g}, {self.bracket[1]:g}]" if self.bracket else ""
        return f"{head}: {self.answer:g}{bracket} ({len(self.probes)} probes)"


def objective_value(entry: dict[str, Any], metric_key: str) -> tuple[float | None, str]:
    """The objective's measurement in a run entry, or None with why."""
    available = []
    for m in entry.get("measurements") or []:
        key = measurement_key(m)
        available.append(key)
        if key == metric_key:
            if m.get("value") is None:
                return None, f"{metric_key} is unavailable: {m.get('unavailable', 'no value')}"
            return float(m["value"]), ""
    metric = metric_key.split("/", 1)[0]
    same = [k for k in available if k.split("/", 1)[0] == metric]
    return None, f"the run measured no {metric_key!r} (measurements of {metric}: {', '.join(same) or 'none'})"


def _better(entry: dict[str, Any], metric_key: str) -> str | None:
    return next((m.get("better") for m in entry.get("measurements") or [] if measurement_key(m) == metric_key), None)


def objective_measure(
    entry: dict[str, Any], objective: dict[str, Any], baseline: dict[str, Any] | None
) -> tuple[float | None, str]:
    """What the objective bounds: the measurement itself, or with ``min_recovery`` its
    recovery in percent of ``baseline``'s (the baseline run's entry); None with why."""
    key = objective["metric"]
    value, why = objective_value(entry, key)
    if value is None or objective.get("min_recovery") is None:
        return value, why
    if baseline is None or baseline.get("status") != "ok":
        return None, "the recovery objective needs the baseline run's result, which is not recorded"
    base, why = objective_value(baseline, key)
    if base is None:
        return None, f"baseline: {why}"
    share = recovery(value, base, _better(entry, key))
    if share is None:
        return None, f"no recovery of {key}: it has no direction, or the baseline's value is 0"
    return share * 100, ""


def baseline_entry(specs: Iterable[RunSpec], latest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The recorded run entry of the plan's baseline run (``latest``: config hash -> RunResult), or None."""
    for spec in specs:
        if spec.pipeline == BASELINE and spec.config_hash in latest:
            return latest[spec.config_hash].to_dict()
    return None


def is_feasible(value: float, objective: dict[str, Any]) -> bool:
    if objective.get("min_recovery") is not None:
        return value >= objective["min_recovery"]
    if objective.get("max") is not None:
        return value <= objective["max"]
    return value >= objective["min"]


Evaluate = Callable[[RunSpec], "dict[str, Any] | None"]


def bisect(search: SearchSpec, evaluate: Evaluate, baseline: dict[str, Any] | None = None) -> SearchOutcome:
    """Run the search, asking ``evaluate(spec)`` for each probe's run entry (a dict with
    ``status`` and ``measurements``; None when it is not available, which leaves the
    search incomplete). ``baseline``: the baseline run's entry, for a ``min_recovery``
    objective."""
    objective = search.objective
    largest = objective.get("find", "largest") == "largest"
    outcome = SearchOutcome(
        name=search.name, pipeline=search.pipeline, parameter=search.label, objective=objective,
        low=search.low, high=search.high, tol=search.tol, status="done",
    )

    def probe(value: float) -> bool | None:
        value = int(value) if search.integer else float(value)
        spec = search.probe(value)
        entry = evaluate(spec)
        if entry is None:
            outcome.probes.append(Probe(value, spec.name, spec.config_hash, "not run"))
            outcome.status, outcome.reason = "incomplete", f"probe {spec.name} not run yet"
            return None
        if entry.get("status") != "ok":
            outcome.probes.append(Probe(value, spec.name, spec.config_hash, entry.get("status", "failed")))
            message = ((entry.get("error") or {}).get("message") or "failed").splitlines()[0]
            outcome.status, outcome.reason = "failed", f"probe {spec.name} failed: {message}"
            return None
        measured, why = objective_measure(entry, objective, baseline)
        if measured is None or math.isnan(measured):
            outcome.probes.append(Probe(value, spec.name, spec.config_hash, "ok", measured))
            outcome.status, outcome.reason = "failed", f"probe {spec.name}: {why or 'NaN'}"
            return None
        ok = is_feasible(measured, objective)
        outcome.probes.append(Probe(value, spec.name, spec.config_hash, "ok", measured, ok))
        return ok

    # the end where the bound should hold first, then the other end
    cast = int if search.integer else float
    safe, risky = (cast(search.low), cast(search.high)) if largest else (cast(search.high), cast(search.low))
    first = probe(safe)
    if first is None:
        return outcome
    if not first:
        outcome.reason = f"the bound fails already at {search.label}={safe:g}"
        return outcome
    second = probe(risky)
    if second is None:
        return outcome
    if second:
        outcome.answer, outcome.reason = risky, "the bound holds over the whole range"
        return outcome
    good, bad = safe, risky  # invariant: the bound holds at good, fails at bad
    while abs(bad - good) > search.tol * (1 + 1e-9) and len(outcome.probes) < search.max_probes:
        if search.integer:
            if abs(bad - good) <= 1:
                break
            mid = math.floor((good + bad) / 2)
        else:
            mid = (good + bad) / 2
        verdict = probe(mid)
        if verdict is None:
            return outcome
        if verdict:
            good = mid
        else:
            bad = mid
    outcome.answer = good
    outcome.bracket = (min(good, bad), max(good, bad))
    if abs(bad - good) > search.tol * (1 + 1e-9) and not (search.integer and abs(bad - good) <= 1):
        outcome.reason = f"stopped at max_probes={search.max_probes} before the bracket reached tol"
    return outcome
