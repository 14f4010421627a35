"""report.md: one summary table (baseline first, each number's change against it),
then per-run details, then the environment."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tabulate import tabulate

from paqbench import Reporter, hookimpl
from paqbench.report.formatting import format_bytes, format_change, format_value, relative_change
from paqbench.report.plots import plots_markdown, read_manifest
from paqbench.report.search import search_lines


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


_CONTROL = {i: f"\\x{i:02x}" for i in range(32) if i not in (9, 10, 13)} | {127: "\\x7f"}


def md_text(text: str) -> str:
    """Model output made safe for one Markdown table cell: HTML and Markdown syntax escaped,
    pipes escaped, line breaks as <br>, runs of spaces kept, other control characters shown as \\xNN."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\\", "\\\\")
    for char in "`*_[]|#~":
        text = text.replace(char, "\\" + char)
    text = text.translate(_CONTROL).replace("\t", " ")
    text = text.replace("\r\n", "<br>").replace("\n", "<br>").replace("\r", "<br>")
    text = re.sub(r" {2,}", lambda spaces: " " + "&nbsp;" * (len(spaces.group()) - 1), text)  # kept, not collapsed
    return text if text.strip() else "*(empty)*"


def generation_samples(runs: list[dict[str, Any]]) -> list[str]:
    """One table per prompt: the baseline's continuation first, then each run's."""
    found = [(run, next((m for m in run["measurements"] if m["metric"] == "samples"), None)) for run in runs]
    measured = [(run, m) for run, m in found if m is not None and (m.get("details") or {}).get("outputs")]
    if not measured:
        return []
    details = measured[0][1]["details"]
    prompts = list(dict.fromkeys(o["prompt"] for _, m in measured for o in m["details"]["outputs"]))
    chat = "the tokenizer's chat template" if details.get("chat") and details.get("chat_template") else "plain text"
    lines = ["## Generation samples", "",
             f"Greedy continuations (do_sample=False), at most {details.get('max_new_tokens')} new tokens per prompt, "
             f"prompted as {chat}. Only the generated text is shown.", ""]
    for number, prompt in enumerate(prompts, start=1):
        lines += [f"**Prompt {number}:** {md_text(prompt)}", "", "| run | continuation |", "|---|---|"]
        for run, m in found:
            if m is None or m.get("value") is None:
                reason = (m or {}).get("unavailable") or ("run failed" if run["status"] != "ok" else "not measured")
                lines.append(f"| {md_text(run['name'])} | *{md_text(reason)}* |")
                continue
            output = next((o for o in m["details"]["outputs"] if o["prompt"] == prompt), None)
            text = md_text(output["text"]) if output else "*not measured*"
            lines.append(f"| {md_text(run['name'])} | {text} |")
        lines.append("")
    return lines


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
        lines += search_lines(getattr(report, "searches", []))  # threshold searches, when the suite has any
        lines += ["## Summary", "", note, "",
                  summary_table(report.runs), "", legend(report.runs), ""]
        lines += [*plots_markdown(read_manifest(directory, report)), ""]  # figures, when the plots reporter ran
        lines += generation_samples(report.runs)  # the samples metric's texts, when measured
        lines += ["## Runs", ""]
        for run in report.runs:
            lines += run_details(run)
        lines += environment_lines(report.environment)
        path = Path(directory) / "report.md"
        path.write_text("\n".join(lines), encoding="utf-8")
        return [path]


@hookimpl
def paqbench_register_reporters(register):
    register(MarkdownReporter)
