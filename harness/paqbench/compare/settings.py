"""What must be equal for two measurements to be comparable: their metric's parameters.

A perplexity over 2048-token windows and one over 256-token windows are different
quantities, as are checkpoint bytes saved in float16 and in float32; a difference between
them is no change of the model. Every run records the resolved parameters of each metric
(``report.json``: ``runs[].metrics[].params``) and the ``--limit`` it ran under
(``runs[].limit``), which caps perplexity windows, RACE documents and lm-eval documents.
Two measurements are comparable when all of these are equal, except the parameters listed
in :data:`PARAM_SCOPE`, which change only how a quantity is sampled or batched.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from functools import cache
from typing import Any

from paqbench.registry import get_registry
from paqbench.report.records import phases

LIMIT = "--limit"  # the run's --limit, compared like a parameter of every metric

ParamDefaults = Callable[[str], dict[str, Any]]

_SAMPLING = dict.fromkeys(("warmup", "min_iterations", "min_seconds", "max_iterations", LIMIT), ())

#: Built-in metric parameters that do not change (some of) the metric's measurements: each
#: maps to the globs of the measurement names it does change (``()``: none). Anything not
#: listed, including every parameter of a metric not listed, must be equal on both sides.
#: - latency/energy: how many calls are timed (the spread records the sampling noise);
#: - perplexity/race ``batch_size``: the same windows and questions, batched (equal up to
#:   float rounding; no padding reaches a real token);
#: - params ``per_module``: only the per-module details; ``seqlen``: only the MACs;
#: - ``--limit`` for metrics that never read it.
PARAM_SCOPE: dict[str, dict[str, tuple[str, ...]]] = {
    "latency": _SAMPLING,
    "energy": _SAMPLING,
    "perplexity": {"batch_size": ()},
    "race": {"batch_size": ()},
    "params": {"per_module": (), "seqlen": ("macs_per_token", "nonzero_macs_per_token"), LIMIT: ()},
    "storage": {LIMIT: ()},
    "memory": {LIMIT: ()},
    "samples": {LIMIT: ()},
}


@cache
def registered_defaults(metric: str) -> dict[str, Any]:
    """The current defaults of a registered metric's parameters, so that a parameter added
    after a report was recorded compares as its default (``{}`` for an unknown metric)."""
    try:
        fields = get_registry().metric(metric).Params.model_fields
    except Exception:  # an uninstalled third-party metric: compare what was recorded
        return {}
    defaults = {k: f.get_default(call_default_factory=True) for k, f in fields.items() if not f.is_required()}
    return json.loads(json.dumps(defaults, default=str))


def metric_settings(run: dict[str, Any], metric: str, defaults: ParamDefaults) -> list[dict[str, Any]] | None:
    """The parameters of each time ``metric`` was measured in ``run`` (a suite may list a
    metric twice), with ``--limit``; None when the run records none (an old report, or a
    run that failed before its metrics)."""
    records = [r for r in phases(run, "metrics") if r.name == metric]
    if not records:
        return None
    return [{**defaults(metric), **(r.params or {}), LIMIT: run.get("limit")} for r in records]


def changes(metric: str, param: str, name: str | None) -> bool:
    """Whether ``param`` changes measurement ``name`` of ``metric`` (None: any of them)."""
    scope = PARAM_SCOPE.get(metric, {}).get(param)
    if scope is None:
        return True
    if name is None:
        return bool(scope)
    return any(fnmatch.fnmatchcase(name, glob) for glob in scope)


def _show(value: Any) -> str:
    return "unset" if value is None else str(value)


def differences(
    metric: str, name: str | None, base: list[dict[str, Any]] | None, new: list[dict[str, Any]] | None
) -> list[str]:
    """``["seqlen 256 vs 2048", ...]``: the parameters that make measurement ``name`` of
    ``metric`` differ between two runs (``#2 `` prefixes the second listing of a metric
    listed twice); empty when comparable or when either side recorded nothing."""
    if base is None or new is None:
        return []
    if len(base) != len(new):
        return [f"measured {len(base)} vs {len(new)} times"]
    found = []
    for index, (a, b) in enumerate(zip(base, new, strict=True), start=1):
        prefix = f"#{index} " if len(base) > 1 else ""
        found += [f"{prefix}{p} {_show(a.get(p))} vs {_show(b.get(p))}" for p in dict.fromkeys([*a, *b])
                  if a.get(p) != b.get(p) and changes(metric, p, name)]
    return found


def run_metric_changes(base: dict[str, Any], new: dict[str, Any], defaults: ParamDefaults) -> tuple[str, ...]:
    """Per metric of two paired runs, the parameters that make some of its measurements
    differ: ``("perplexity: seqlen 256 vs 2048, max_windows 8 vs unset", ...)``."""
    names = [r.get("name") for r in (base.get("metrics") or []) + (new.get("metrics") or [])]
    found = []
    for metric in dict.fromkeys(n for n in names if n):
        diff = differences(metric, None, metric_settings(base, metric, defaults),
                           metric_settings(new, metric, defaults))
        if diff:
            found.append(f"{metric}: " + ", ".join(diff))
    return tuple(found)


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flat(f"{prefix}.{key}", item))
    return flat


def _settings(report: dict[str, Any]) -> dict[str, Any] | None:
    suite = report.get("suite")
    if not suite:
        return None
    flat: dict[str, Any] = {}
    for key in ("model", "calibration", "seed"):
        flat.update(_flat(key, suite.get(key)))
    return flat


def setting_changes(base: dict[str, Any], new: dict[str, Any]) -> tuple[str, ...]:
    """Report-wide settings that differ (model, calibration, seed), which run pairing does
    not look at: ``("model.source smollm2-135m vs llama-3.2-1b", ...)``."""
    a, b = _settings(base), _settings(new)
    if a is None or b is None:
        return ()
    return tuple(f"{k} {_show(a.get(k))} vs {_show(b.get(k))}" for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k))
