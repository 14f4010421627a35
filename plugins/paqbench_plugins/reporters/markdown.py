"""report.md for a person: a headline table that fits a screen (quality with recovery,
size, speed, memory; changes only beyond the noise), then plots, generation samples,
every measurement in a details table (also report.csv), per-run details and the
environment. The tables come from :mod:`paqbench.report.tables`."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from tabulate import tabulate

from paqbench import Reporter, hookimpl
from paqbench.fsio import write_text_atomic
from paqbench.report.formatting import format_bytes, format_value, ran_on_text
from paqbench.report.header import count_runs, describe, effective_setups
from paqbench.report.plots import plots_markdown, read_manifest
from paqbench.report.search import search_lines
from paqbench.report.selection import find
from paqbench.report.tables import (
    MEANINGS,
    Column,
    Table,
    continuation,
    full_table,
    headline,
    kernels_of,
    measurement_keys,
    missing_sample,
    modules_of,
    raw_value,
    samples_of,
)

ARROWS = {"lower": "↓", "higher": "↑"}
CSV_FILE = "report.csv"

_CONTROL = {i: f"\\x{i:02x}" for i in range(32) if i not in (9, 10, 13)} | {127: "\\x7f"}


def md_text(text: str) -> str:
    """Text made safe for one Markdown table cell: HTML and Markdown syntax escaped,
    pipes escaped, line breaks as <br>, runs of spaces kept, other control characters shown as \\xNN."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\\", "\\\\")
    for char in "`*_[]|#~":
        text = text.replace(char, "\\" + char)
    text = text.translate(_CONTROL).replace("\t", " ")
    text = text.replace("\r\n", "<br>").replace("\n", "<br>").replace("\r", "<br>")
    text = re.sub(r" {2,}", lambda spaces: " " + "&nbsp;" * (len(spaces.group()) - 1), text)  # kept, not collapsed
    return text if text.strip() else "*(empty)*"


def md_cell(text: str) -> str:
    """:func:`md_text` that leaves square brackets alone (``magnitude[sparsity=0.5]`` reads
    as written) except where they could open an inline link."""
    return md_text(text).replace("\\[", "[").replace("\\]", "]").replace("](", "]\\(")


def fenced(text: str, info: str = "text") -> list[str]:
    """``text`` as a fenced code block, verbatim (no Markdown or HTML is interpreted), with a
    fence longer than any run of backticks inside; control characters shown as \\xNN."""
    body = text.replace("\r\n", "\n").replace("\r", "\n").translate(_CONTROL)
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + info, *(body.split("\n") if body.strip() else ["(empty)"]), fence]


# -- tables ------------------------------------------------------------------------------------


def column_title(column: Column) -> str:
    arrow = ARROWS.get(column.better or "", "") if column.role not in ("recovery", "run") else ""
    return md_cell(column.title + (f" {arrow}" if arrow else ""))


def render_table(table: Table) -> list[str]:
    """A GitHub table of ``table`` (cells escaped), then its footnotes."""
    rows = [[md_cell(cell.text) if cell.text else "" for cell in row] for row in table.rows]
    lines = [tabulate(rows, headers=[column_title(c) for c in table.columns], tablefmt="github",
                      disable_numparse=True), ""]
    return [*lines, *(md_cell(note) + "  " for note in table.notes), ""] if table.notes else lines


def render_transposed(table: Table) -> list[str]:
    """The full table turned on its side (one row per measurement, one column per run), so
    twenty-odd measurements read down the page instead of off its edge."""
    runs = [row[0].text for row in table.rows]
    rows = []
    for index, column in enumerate(table.columns[1:], start=1):
        direction = {"lower": "lower", "higher": "higher"}.get(column.better or "", "info")
        rows.append([md_cell(column.title), md_cell(column.unit) if column.unit else "", direction,
                     *[md_cell(row[index].text) if row[index].text else "" for row in table.rows]])
    headers = ["measurement", "unit", "better", *[md_cell(name) for name in runs]]
    return [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]


def summary_lines(runs: list[dict[str, Any]]) -> list[str]:
    table = headline(runs)
    notes = ["Each value's change against the baseline is in brackets (relative, or percentage points for "
             "fractions) only where it exceeds the noise: a timing within the p10–p90 band of its repetitions "
             "reads ≈; counts, sizes, perplexity and accuracy are deterministic, so any difference shows. "
             "Recovery is the run's quality as a share of the baseline's (baseline/value where lower is "
             "better, value/baseline where higher is; llm-compressor's gate is ≥ 95%). "
             "↓ lower is better, ↑ higher is better. Every measurement: Details below and report.csv."]
    return ["## Summary", "", *render_table(table), *notes, ""]


def details_lines(runs: list[dict[str, Any]]) -> list[str]:
    if not runs:
        return []
    keys = measurement_keys(runs)
    meanings = [f"- `{key}`: {MEANINGS[key]}" for key in keys if key in MEANINGS]
    return ["## Details", "",
            f"Every measurement (also in {CSV_FILE}, one row per run, plain numbers). Changes against the "
            "baseline follow the same noise rule as the summary.", "",
            *render_transposed(full_table(runs)), *meanings, *([""] if meanings else [])]


def csv_text(runs: list[dict[str, Any]]) -> str:
    """report.csv: one row per run, one column per measurement (``metric/name [unit]``),
    plain numbers; empty where a run has no value."""
    keys = measurement_keys(runs)
    units = {key: (next((find(r, key) for r in runs if find(r, key)), None) or {}).get("unit", "") for key in keys}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "pipeline", "status", *[f"{k} [{units[k]}]" if units[k] else k for k in keys]])
    for run in runs:
        values = [raw_value(run, key) for key in keys]
        writer.writerow([run["name"], run.get("pipeline", ""), run.get("status", ""),
                         *["" if v is None else repr(v) for v in values]])
    return buffer.getvalue()


# -- per-run details ---------------------------------------------------------------------------


def _memory(memory: dict[str, int] | None) -> str:
    if not memory:
        return ""
    parts = [f"RSS {format_bytes(memory['rss_bytes'])}"] if "rss_bytes" in memory else []
    if "device_allocated_bytes" in memory:
        parts.append(f"device {format_bytes(memory['device_allocated_bytes'])}")
    return ", ".join(parts)


def _phases(run: dict[str, Any]) -> list[list[str]]:
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
    return [[md_cell(cell) if cell else "" for cell in row] for row in phases]


def _measurement_rows(run: dict[str, Any]) -> list[list[str]]:
    rows = []
    for m in run["measurements"]:
        spread = m.get("spread") or {}
        spread_text = ", ".join(f"{k} {format_value(v, m.get('unit', ''))}" for k, v in spread.items())
        value = format_value(m.get("value"), m.get("unit", "")) if m.get("value") is not None else (
            f"unavailable: {m.get('unavailable')}")
        rows.append([md_cell(m["metric"]), md_cell(m["name"]), md_cell(value), md_cell(spread_text)
                     if spread_text else ""])
    return rows


def module_lines(run: dict[str, Any]) -> list[str]:
    """The params metric's per-layer record (kind, shape, sparsity, bits; format and kernel
    where recorded), collapsed; the latency metric's kernel counts under it."""
    per_module = modules_of(run)
    if not per_module:
        return []
    extra = [k for k in ("format", "kernel") if any(k in e for e in per_module.values())]
    rows = [[md_cell(name), md_cell(str(e.get("kind", ""))), "×".join(str(s) for s in e.get("shape") or ()),
             f"{e.get('sparsity', 0) * 100:.2f}%", f"{e.get('bits', 0):.3g}",
             *[md_cell(str(e.get(k, ""))) for k in extra]] for name, e in per_module.items()]
    kinds: dict[str, int] = {}
    for entry in per_module.values():
        kinds[entry.get("kind", "?")] = kinds.get(entry.get("kind", "?"), 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    lines = [f"<details><summary>Layers of {md_cell(run['name'])} ({summary})</summary>", "",
             tabulate(rows, headers=["layer", "kind", "shape", "sparsity", "bits/weight", *extra],
                      tablefmt="github", disable_numparse=True), ""]
    kernels = kernels_of(run)
    if kernels:
        lines += ["Forward paths in use (latency metric): "
                  + ", ".join(f"{md_cell(k)} ×{n}" for k, n in kernels.items()), ""]
    return [*lines, "</details>", ""]


def run_details(run: dict[str, Any]) -> list[str]:
    lines = [f"### {md_cell(run['name'])}", ""]
    lines.append(f"Status: **{run['status']}** · id `{run['id']}` · wall {run['wall_s']:.1f} s · seed {run['seed']}"
                 + (f" · limit {run['limit']}" if run.get("limit") else "")
                 + (f" · ran on {where}" if (where := ran_on_text(run.get("ran_on"))) else ""))
    lines.append("")
    lines.append(tabulate(_phases(run), headers=["phase", "parameters", "wall", "peak memory", "error"],
                          tablefmt="github", disable_numparse=True))
    lines.append("")
    rows = _measurement_rows(run)
    if rows:
        lines += [tabulate(rows, headers=["metric", "measurement", "value", "spread"], tablefmt="github",
                           disable_numparse=True), ""]
    lines += module_lines(run)
    if run.get("error"):
        lines += [f"**Error:** {md_cell(run['error'].get('message', ''))}", ""]
        if run["error"].get("traceback"):
            lines += ["<details><summary>traceback</summary>", "", *fenced(run["error"]["traceback"].rstrip(), ""),
                      "", "</details>", ""]
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


# -- generation samples ------------------------------------------------------------------------


def generation_samples(runs: list[dict[str, Any]]) -> list[str]:
    """One section per prompt: the prompt, then each run's continuation as a verbatim block,
    the baseline's first."""
    found = samples_of(runs)
    if found is None:
        return []
    pairs, prompts, details = found
    chat = "the tokenizer's chat template" if details.get("chat") and details.get("chat_template") else "plain text"
    lines = ["## Generation samples", "",
             f"Greedy continuations (do_sample=False), at most {details.get('max_new_tokens')} new tokens per prompt, "
             f"prompted as {chat}. Only the generated text is shown, verbatim.", ""]
    for number, prompt in enumerate(prompts, start=1):
        lines += [f"### Prompt {number}", "", *fenced(prompt), ""]
        for run, m in pairs:
            text = continuation(run, m, prompt)
            lines.append(f"**{md_cell(run['name'])}**" + ("" if text is not None else
                                                           f": *{md_cell(missing_sample(run, m))}*"))
            lines += ["", *fenced(text), ""] if text is not None else [""]
    return lines


# -- the page ----------------------------------------------------------------------------------


def header_lines(report: Any) -> list[str]:
    """Title, what ran (from the run records: the model and device after any --model /
    --device), the suite file's own description, and what is still to run."""
    suite = report.suite or {}
    setups = effective_setups(report.runs, suite)
    ran = "; ".join(md_cell(describe(s, len(report.runs))) for s in setups) or "nothing yet"
    lines = [f"# paqbench report: {md_text(report.suite_name)}", "",
             f"Ran {ran} · {count_runs(len(report.runs))} · generated {report.generated_at}", ""]
    if suite.get("description"):
        lines += [f"Suite description (from the suite file; what ran is the line above): "
                  f"{md_text(suite['description'].strip())}", ""]
    if report.missing:
        lines += [f"**Not yet run:** {md_cell(', '.join(report.missing))} (run the suite again to resume).", ""]
    return lines


def markdown_text(report: Any, directory: Path) -> str:
    manifest = read_manifest(directory, report)
    lines = header_lines(report)
    lines += summary_lines(report.runs)
    lines += search_lines(getattr(report, "searches", []))  # threshold searches, when the suite has any
    if manifest is not None:  # figures, when the plots reporter drew them for this report
        lines += [*plots_markdown(manifest), ""]
    lines += generation_samples(report.runs)
    lines += details_lines(report.runs)
    lines += ["## Runs", ""]
    for run in report.runs:
        lines += run_details(run)
    lines += environment_lines(report.environment)
    return "\n".join(lines)


class MarkdownReporter(Reporter):
    name = "markdown"
    description = ("report.md: headline table against the baseline (changes only beyond noise), plots, samples, "
                   "every measurement, per-run details, environment; report.csv: every measurement.")

    def write(self, report, directory: Path) -> list[Path]:
        directory = Path(directory)
        path = write_text_atomic(directory / "report.md", markdown_text(report, directory))
        table = write_text_atomic(directory / CSV_FILE, csv_text(report.runs))
        return [path, table]


@hookimpl
def paqbench_register_reporters(register):
    register(MarkdownReporter)
