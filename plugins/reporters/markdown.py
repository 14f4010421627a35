"""report.md: one summary table (baseline first, each number's change against it),
then per-run details, then the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tabulate import tabulate

from paqbench import Reporter, hookimpl
from paqbench.report.formatting import format_bytes, format_change, format_value, relative_change


def _measurement_keys(runs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for run in runs:
        for m in run["measurements"]:
            key = (m["metric"], m["name"])
            if key not in keys and m["name"] != "*":
                keys.append(key)
    return keys


def _index(run: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["metric"], m["name"]): m for m in run["measurements"]}


def _change_text(measurement: dict[str, Any], base: dict[str, Any]) -> str:
    value, reference = measurement.get("value"), base.get("value")
    if value is None or reference is None:
        return ""
    if measurement.get("unit") == "fraction":  # a change of a fraction reads best in points
        points = (value - reference) * 100
        return " (±0 pp)" if abs(points) < 0.005 else f" ({points:+.2f} pp)"
    change = relative_change(value, reference)
    return f" ({format_change(change)})" if change is not None else ""


def summary_table(runs: list[dict[str, Any]]) -> str:
    keys = _measurement_keys(runs)
    baseline = next((r for r in runs if r["pipeline"] == "baseline"), None)
    base = _index(baseline) if baseline else {}
    header = ["run", "status", *[f"{metric} {name}" if name != metric else metric for metric, name in keys]]
    rows = []
    for run in runs:
        values = _index(run)
        row = [run["name"], run["status"]]
        for key in keys:
            m = values.get(key)
            if m is None:
                row.append("")
                continue
            cell = format_value(m.get("value"), m.get("unit", ""))
            if run is not baseline and key in base:
                cell += _change_text(m, base[key])
            row.append(cell)
        rows.append(row)
    return tabulate(rows, headers=header, tablefmt="github", disable_numparse=True)


def legend(runs: list[dict[str, Any]]) -> str:
    seen = {}
    for run in runs:
        for m in run["measurements"]:
            if m["name"] != "*":
                seen.setdefault((m["metric"], m["name"]), m)
    rows = [
        [f"{metric} {name}", m.get("unit", ""), {"lower": "lower is better", "higher": "higher is better"}.get(
            m.get("better") or "", "informational")]
        for (metric, name), m in seen.items()
    ]
    return tabulate(rows, headers=["column", "unit", "direction"], tablefmt="github")


def _memory(memory: dict[str, int] | None) -> str:
    if not memory:
        return ""
    parts = [f"RSS {format_bytes(memory['rss_bytes'])}"] if "rss_bytes" in memory else []
    if "device_allocated_bytes" in memory:
        parts.append(f"device {format_bytes(memory['device_allocated_bytes'])}")
    return ", ".join(parts)


def run_details(run: dict[str, Any]) -> list[str]:
    lines = [f"### {run['name']}", ""]
    lines.append(f"Status: **{run['status']}** · id `{run['id']}` · wall {run['wall_s']:.1f} s · seed {run['seed']}"
                 + (f" · limit {run['limit']}" if run.get("limit") else ""))
    lines.append("")
    phases = []
    if run.get("load"):
        phases.append(["load", "", f"{run['load']['wall_s']:.2f} s", _memory(run["load"].get("memory")), ""])
    for i, step in enumerate(run["steps"], start=1):
        params = ", ".join(f"{k}={v}" for k, v in (step.get("params") or {}).items() if v is not None)
        phases.append([f"step {i}: {step['name']}", params, f"{step['wall_s']:.2f} s",
                       _memory(step.get("memory")), step.get("error") or ""])
    for metric in run["metrics"]:
        phases.append([f"metric: {metric['name']}", "", f"{metric['wall_s']:.2f} s",
                       _memory(metric.get("memory")), metric.get("error") or ""])
    lines.append(tabulate(phases, headers=["phase", "parameters", "wall", "peak memory", "error"],
                          tablefmt="github"))
    lines.append("")
    rows = []
    for m in run["measurements"]:
        spread = m.get("spread") or {}
        spread_text = ", ".join(f"{k} {format_value(v, m.get('unit', ''))}" for k, v in spread.items())
        value = format_value(m.get("value"), m.get("unit", "")) if m.get("value") is not None else (
            f"unavailable: {m.get('unavailable')}")
        rows.append([m["metric"], m["name"], value, spread_text])
    if rows:
        lines.append(tabulate(rows, headers=["metric", "measurement", "value", "spread"], tablefmt="github"))
        lines.append("")
    if run.get("error"):
        lines += [f"**Error:** {run['error'].get('message', '')}", ""]
        if run["error"].get("traceback"):
            lines += ["<details><summary>traceback</summary>", "", "```",
                      run["error"]["traceback"].rstrip(), "```", "", "</details>", ""]
    return lines


def environment_lines(env: dict[str, Any]) -> list[str]:
    if not env:
        return []
    libs = ", ".join(f"{k} {v}" for k, v in env.get("libraries", {}).items())
    gpus = "; ".join(f"{g['name']} ({format_bytes(g['memory_bytes'])}, driver {g.get('driver')})"
                     for g in env.get("gpus", [])) or "none"
    return [
        "## Environment", "",
        f"- CPU: {env.get('cpu')} ({env.get('cpu_cores')} cores, {env.get('cpu_threads')} threads; "
        f"torch threads {env.get('torch_threads')})",
        f"- RAM: {format_bytes(env.get('ram_bytes', 0))}; GPU: {gpus}",
        f"- Python {env.get('python')} on {env.get('platform')}",
        f"- Libraries: {libs}",
        f"- paqbench git sha: {env.get('git_sha') or 'unknown'}",
        "",
    ]


class MarkdownReporter(Reporter):
    name = "markdown"
    description = "report.md: summary table against the baseline, per-run details, environment."

    def write(self, report, directory: Path) -> list[Path]:
        suite = report.suite or {}
        model = (suite.get("model") or {}).get("source", "?")
        lines = [f"# paqbench report: {report.suite_name}", ""]
        if suite.get("description"):
            lines += [suite["description"].strip(), ""]
        lines += [f"Model `{model}` · {len(report.runs)} runs · generated {report.generated_at}", ""]
        if report.missing:
            lines += [f"**Not yet run:** {', '.join(report.missing)} (run the suite again to resume).", ""]
        note = "Changes in brackets are against the baseline: relative (%), or in percentage points (pp) for fractions."
        lines += ["## Summary", "", note, "",
                  summary_table(report.runs), "", legend(report.runs), "", "## Runs", ""]
        for run in report.runs:
            lines += run_details(run)
        lines += environment_lines(report.environment)
        path = Path(directory) / "report.md"
        path.write_text("\n".join(lines), encoding="utf-8")
        return [path]


@hookimpl
def paqbench_register_reporters(register):
    register(MarkdownReporter)
