"""Reading reports for a comparison, and writing one as Markdown or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tabulate import tabulate

from paqbench.compare.core import Comparison, MetricDelta, RunPair
from paqbench.report import build_report
from paqbench.report.formatting import format_value


class ReportNotFound(FileNotFoundError):
    """A BASE or NEW argument that is neither a report.json nor a result directory."""


def load_report(path: str | Path) -> dict[str, Any]:
    """A ``report.json`` file, or a result directory: its ``results.jsonl`` rebuilt into a
    report when present (always current), else its ``report.json``."""
    path = Path(path)
    if path.is_dir():
        if (path / "results.jsonl").is_file():
            return json.loads(json.dumps(build_report(path).to_dict(), default=str))
        if (path / "report.json").is_file():
            path = path / "report.json"
        else:
            raise ReportNotFound(f"{path} holds neither results.jsonl nor report.json")
    if not path.is_file():
        raise ReportNotFound(f"{path}: no such report file or result directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportNotFound(f"{path}: not a JSON report ({exc})") from None
    if not isinstance(data, dict) or "runs" not in data:
        raise ReportNotFound(f"{path}: not a paqbench report (no 'runs')")
    return data


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "x dense":
        return f"{value:.4g}x"
    return format_value(value, unit)


def _change(d: MetricDelta) -> tuple[str, str]:
    if d.abs_change is None:
        return "", ""
    if d.unit == "fraction":
        absolute = f"{d.abs_change * 100:+.2f} pp"
    elif d.unit == "x dense":
        absolute = f"{d.abs_change:+.4g}x"
    else:
        absolute = ("+" if d.abs_change > 0 else "") + _fmt(d.abs_change, d.unit)
    relative = f"{d.rel_change * 100:+.2f}%" if d.rel_change is not None else ""
    return absolute, relative


def _recovery(d: MetricDelta) -> str:
    """``96.1% -> 95.3%``: each side's value as a percentage of its report's dense baseline."""
    if d.base_recovery is None and d.new_recovery is None:
        return ""
    sides = ["n/a" if v is None else f"{v:.1f}%" for v in (d.base_recovery, d.new_recovery)]
    floor = f" (floor {d.min_recovery.percent:g}%)" if d.min_recovery is not None else ""
    return " -> ".join(sides) + floor


def _verdict(d: MetricDelta) -> str:
    if d.regressed:
        return f"**REGRESSION** ({d.verdict})"
    return d.verdict


_MATCHED_BY = {
    "parameters": "matched by pipeline and step parameters",
    "name": "matched by run name",
}


def _summary(c: Comparison) -> list[str]:
    """The verdict in a line or two: regressions, and how many measurements were not comparable."""
    failures = [f"{d.run}: {d.key}" for d in c.regressions] + c.run_regressions
    lines = [f"**{len(failures)} regression(s):** " + "; ".join(failures) if failures
             else "No regression beyond the thresholds."]
    if c.not_comparable:
        lines.append(f"{len(c.not_comparable)} measurement(s) not comparable: their metric ran with different "
                     "parameters (listed per run); never counted as regressions.")
    if c.setting_changes:
        lines.append("The reports' settings differ (not used to pair runs): " + "; ".join(c.setting_changes))
    return [line for text in lines for line in (text, "")]


def _rules(c: Comparison) -> list[str]:
    lines = []
    if c.options.thresholds:
        lines.append("Thresholds (how much worse a metric may get): "
                     + ", ".join(f"`{t.key}` {t.describe()}" for t in c.options.thresholds))
    if c.options.min_recovery:
        lines.append("Recovery floors (NEW's value as a percentage of its own dense baseline run): "
                     + ", ".join(f"`{f.key}` {f.describe()}" for f in c.options.min_recovery))
    if c.options.baseline_relative:
        lines.append("Compared as ratios to each report's own dense baseline run: "
                     + ", ".join(f"`{k}`" for k in c.options.baseline_relative))
    lines.append("Changes inside the noise band (combined spread of repeated measurements, "
                 f"{c.options.noise_sigmas:g}x) are not counted.")
    return [*lines, ""]


def _regressions(c: Comparison) -> list[str]:
    if not c.regressions:
        return []
    rows = [[d.run, d.key, _fmt(d.base, d.unit), _fmt(d.new, d.unit), *_change(d),
             d.threshold.describe() if d.threshold else "", d.reason] for d in c.regressions]
    return ["## Regressions", "",
            tabulate(rows, headers=["run", "metric", "base", "new", "change", "relative", "threshold", "note"],
                     tablefmt="github", disable_numparse=True), ""]


def _unmatched(c: Comparison) -> list[str]:
    if not (c.unmatched_base or c.unmatched_new):
        return []
    lines = ["## Unmatched runs", ""]
    if c.unmatched_base:
        lines.append("Only in BASE: " + ", ".join(f"`{n}`" for n in c.unmatched_base))
    if c.unmatched_new:
        lines.append("Only in NEW: " + ", ".join(f"`{n}`" for n in c.unmatched_new))
    return [*lines, ""]


def _pair_status(pair: RunPair) -> str:
    status = f"status {pair.base_status} -> {pair.new_status}; {_MATCHED_BY.get(pair.matched_by, pair.matched_by)}"
    if pair.parameter_changes:
        status += "; step parameters differ: " + "; ".join(pair.parameter_changes)
    if pair.metric_changes:
        status += "; metric parameters differ (not comparable): " + "; ".join(pair.metric_changes)
    return status


def _pair(c: Comparison, pair: RunPair) -> list[str]:
    title = pair.new_name if pair.base_name == pair.new_name else f"{pair.base_name} -> {pair.new_name}"
    lines = [f"### {title}", "", _pair_status(pair), ""]
    rows = [[d.key, _fmt(d.base, d.unit), _fmt(d.new, d.unit), *_change(d), _recovery(d),
             _fmt(d.noise, d.unit) if d.noise is not None else "", d.better or "",
             d.threshold.describe() if d.threshold else "", _verdict(d), d.reason]
            for d in c.deltas if d.run == pair.new_name]
    if rows:
        lines += [tabulate(rows, headers=["metric", "base", "new", "change", "relative", "recovery", "noise ±",
                                          "better", "threshold", "verdict", "note"], tablefmt="github",
                           disable_numparse=True),
                  ""]
    return lines


def to_markdown(comparison: Comparison) -> str:
    """The comparison as Markdown: regressions first, then every metric of every run."""
    c = comparison
    lines = [f"# paqbench compare: `{c.base_label}` -> `{c.new_label}`", "",
             *_summary(c), *_rules(c), *_regressions(c), *_unmatched(c), "## Runs", ""]
    for pair in c.pairs:
        lines += _pair(c, pair)
    return "\n".join(lines)


def write_json(comparison: Comparison, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(comparison.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
