"""report.html: the whole report in one self-contained page that works offline.

No CDN, no external file: CSS and a small vanilla script are inline, the plots reporter's
PNGs are embedded as base64 data URIs, and a Content-Security-Policy forbids the page
from loading anything else. Tables are the ones report.md shows
(:mod:`paqbench.report.tables`); clicking a header sorts a table. Every piece of user text
(run names, parameters, model output, errors) goes through :func:`html.escape`.

The script marks the page ``<html data-sortable="ready">`` once it has wired the tables,
which a headless-browser test can read back with ``--dump-dom``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from paqbench.report.formatting import format_bytes, format_value, ran_on_text
from paqbench.report.header import count_runs, describe, effective_setups
from paqbench.report.plots import fingerprint, read_manifest
from paqbench.report.records import load_phase, phases
from paqbench.report.tables import (
    MEANINGS,
    Cell,
    Column,
    Table,
    continuation,
    full_table,
    headline,
    kernels_of,
    measurement_keys,
    missing_sample,
    modules_of,
    samples_of,
)

FILE = "report.html"
FINGERPRINT_META = "paqbench-fingerprint"
ARROWS = {"lower": "↓", "higher": "↑"}
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")

STYLE = """
:root { --fg: #1d232b; --muted: #5b6572; --line: #d9dee5; --head: #f3f5f8; --better: #0b6b2f;
        --worse: #a3261b; --accent: #2457a6; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1400px; padding: 18px 24px 60px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid
  var(--line); padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: var(--muted); margin: 2px 0; } nav a { margin-right: 14px; color: var(--accent); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 8px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: var(--head); font-weight: 600; white-space: normal; vertical-align: bottom; min-width: 70px; }
td .chg { display: block; font-size: 11.5px; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th::after { content: " ⇅"; color: #aab2bd; font-size: 11px; }
table.sortable th[aria-sort=ascending]::after { content: " ▲"; color: var(--accent); }
table.sortable th[aria-sort=descending]::after { content: " ▼"; color: var(--accent); }
td.better { color: var(--better); } td.worse { color: var(--worse); } td.same { color: var(--muted); }
td.missing { color: var(--muted); font-style: italic; }
td.reason { white-space: normal; min-width: 190px; font-size: 12px; text-align: left; }
tr.baseline td { background: #fbfbf4; }
table.plain td, table.plain th { text-align: left; white-space: normal; }
.note { color: var(--muted); max-width: 980px; }
figure { margin: 14px 0 22px; } figure img { max-width: 100%; border: 1px solid var(--line); }
figcaption { color: var(--muted); max-width: 980px; }
.prompt { background: #f6f8fa; border-left: 3px solid var(--accent); }
.samples { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 10px; }
.sample { border: 1px solid var(--line); border-radius: 6px; padding: 6px 10px; }
.sample h4 { margin: 0 0 4px; font-size: 13px; }
pre { white-space: pre-wrap; word-break: break-word; margin: 4px 0; padding: 6px 8px; background: #f6f8fa;
      border-radius: 4px; font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
details { margin: 6px 0; } summary { cursor: pointer; font-weight: 600; }
details.run { border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; }
.failed { color: var(--worse); } .ok { color: var(--better); }
dl.env { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; } dl.env dt { color: var(--muted); }
dl.env dd { margin: 0; }
"""

SCRIPT = """
(function () {
  function key(cell) {
    var v = cell ? cell.getAttribute('data-sort') : null;
    if (v === null || v === '') { return null; }
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function compare(x, y, dir) {
    if (x === null && y === null) { return 0; }
    if (x === null) { return 1; }
    if (y === null) { return -1; }
    if (typeof x !== typeof y) { x = String(x); y = String(y); }
    return x < y ? -dir : (x > y ? dir : 0);
  }
  function sortBy(table, col, th) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
    rows.sort(function (a, b) { return compare(key(a.cells[col]), key(b.cells[col]), dir); });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(th.parentNode.cells, function (c) { c.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
  }
  var tables = document.querySelectorAll('table.sortable');
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.title = 'sort by this column';
      th.addEventListener('click', function () { sortBy(table, col, th); });
      th.addEventListener('keydown', function (e) {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sortBy(table, col, th); }
      });
    });
  });
  document.documentElement.setAttribute('data-sortable', 'ready');
  document.documentElement.setAttribute('data-sortable-tables', String(tables.length));
})();
"""


def _e(text: Any) -> str:
    return escape(str(text), quote=True)


def _sort_attr(value: float | str | None) -> str:
    if value is None:
        return ""
    return f' data-sort="{_e(repr(value) if isinstance(value, float) else value)}"'


def _td(cell: Cell) -> str:
    missing = cell.verdict == "missing"
    classes = " ".join(c for c in (cell.tone, "same" if cell.verdict == "same" else "", "missing" if missing else "",
                                   "reason" if missing and len(cell.text) > 24 else "") if c)
    cls = f' class="{classes}"' if classes else ""
    change = f'<span class="chg">{_e(cell.change.strip())}</span>' if cell.change.strip() else ""
    return f"<td{cls}{_sort_attr(cell.sort)}>{_e(cell.value_text)}{change}</td>"


def _th(column: Column) -> str:
    arrow = ARROWS.get(column.better or "", "") if column.role not in ("run", "recovery") else ""
    tip = column.meaning or (column.key or "")
    title = f' title="{_e(tip)}"' if tip else ""
    unit = f'<br><small>{_e(column.unit)}</small>' if column.role == "measurement" and column.unit else ""
    return f"<th{title} scope=\"col\">{_e(column.title)}{' ' + arrow if arrow else ''}{unit}</th>"


def table_html(table: Table, runs: Sequence[Mapping[str, Any]], table_id: str) -> str:
    """A sortable table: one row per run (the baseline's row marked), its footnotes under it."""
    head = "".join(_th(c) for c in table.columns)
    body = []
    for run, row in zip(runs, table.rows, strict=True):
        cls = ' class="baseline"' if run.get("pipeline") == "baseline" else ""
        body.append(f"<tr{cls}>" + "".join(_td(cell) for cell in row) + "</tr>")
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in table.notes)
    return (f'<div class="scroll"><table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>{notes}")


def _plain_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "plain") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


# -- sections ------------------------------------------------------------------------------------


def header_html(report: Any) -> str:
    suite = report.suite or {}
    setups = effective_setups(report.runs, suite)
    ran = "; ".join(describe(s, len(report.runs)) for s in setups) or "nothing yet"
    parts = [f"<h1>paqbench report: {_e(report.suite_name)}</h1>",
             f'<p class="meta">Ran <strong>{_e(ran)}</strong> · {count_runs(len(report.runs))} · generated '
             f"{_e(report.generated_at)}</p>"]
    if suite.get("description"):
        parts.append(f'<p class="meta">Suite description (from the suite file; what ran is the line above): '
                     f"{_e(suite['description'].strip())}</p>")
    if report.missing:
        parts.append(f'<p class="failed">Not yet run: {_e(", ".join(report.missing))} '
                     "(run the suite again to resume).</p>")
    return "\n".join(parts)


def summary_html(runs: Sequence[Mapping[str, Any]]) -> str:
    return ('<h2 id="summary">Summary</h2>' + table_html(headline(runs), runs, "headline")
            + '<p class="note">A change against the baseline is shown only where it exceeds the noise: a timing '
              "inside the p10–p90 band of its repetitions reads ≈ (a paired speedup: when 1.0 lies inside the band "
              "of its per-pair ratios). Counts, sizes, perplexity and accuracy are deterministic, so any "
              "difference shows. Recovery is the run's quality as a share of the baseline's: baseline/value "
              "where lower is better (perplexity), value/baseline where higher is (accuracy); llm-compressor "
              "gates at ≥ 95%. Green: better than the baseline beyond noise; red: worse. Click a header to "
              "sort.</p>")


def full_html(runs: Sequence[Mapping[str, Any]]) -> str:
    keys = measurement_keys(runs)
    meanings = "".join(f"<li><code>{_e(k)}</code>: {_e(MEANINGS[k])}</li>" for k in keys if k in MEANINGS)
    return ('<h2 id="all">Every measurement</h2><details><summary>All '
            f"{len(keys)} measurements, one column each (also report.csv)</summary>"
            + table_html(full_table(runs), runs, "full") + (f"<ul class=\"note\">{meanings}</ul>" if meanings else "")
            + "</details>")


def plots_html(directory: Path, report: Any) -> str:
    """The plots reporter's figures of this very report, embedded as data URIs."""
    manifest = read_manifest(directory, report)
    if not manifest or not (manifest.get("figures") or manifest.get("notes")):
        return ""
    parts = ['<h2 id="plots">Plots</h2>']
    for figure in manifest.get("figures", []):
        path = directory / figure["file"]
        if not path.is_file():
            continue
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        skipped = "".join(f"<li>{_e(s)}</li>" for s in figure.get("skipped") or ())
        parts.append(f'<figure><img alt="{_e(figure["title"])}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{_e(figure['caption'])}"
                     + (f"<br>Not plotted:<ul>{skipped}</ul>" if skipped else "") + "</figcaption></figure>")
    parts += [f'<p class="note">{_e(n)}</p>' for n in manifest.get("notes", [])]
    return "".join(parts)


def samples_html(runs: Sequence[Mapping[str, Any]]) -> str:
    """Each prompt, then every run's continuation side by side (the baseline's first)."""
    found = samples_of(list(runs))
    if found is None:
        return ""
    pairs, prompts, details = found
    chat = "the tokenizer's chat template" if details.get("chat") and details.get("chat_template") else "plain text"
    parts = ['<h2 id="samples">Generation samples</h2>',
             f'<p class="note">Greedy continuations (do_sample=False), at most {_e(details.get("max_new_tokens"))} '
             f"new tokens per prompt, prompted as {chat}. Only the generated text is shown, verbatim.</p>"]
    for number, prompt in enumerate(prompts, start=1):
        cards = []
        for run, m in pairs:
            text = continuation(run, m, prompt)
            body = (f"<pre>{_e(text)}</pre>" if text else "<pre><em>(empty)</em></pre>") if text is not None \
                else f'<p class="note">{_e(missing_sample(run, m))}</p>'
            cards.append(f'<div class="sample"><h4>{_e(run["name"])}</h4>{body}</div>')
        parts.append(f'<h3>Prompt {number}</h3><pre class="prompt">{_e(prompt)}</pre>'
                     f'<div class="samples">{"".join(cards)}</div>')
    return "".join(parts)


def searches_html(searches: Sequence[Mapping[str, Any]]) -> str:
    if not searches:
        return ""
    rows = [[s["name"], s["parameter"], s["objective"].get("metric"), s.get("status"),
             "" if s.get("answer") is None else f"{s['answer']:g}", s.get("reason") or "", len(s.get("probes") or ())]
            for s in searches]
    return '<h2 id="searches">Threshold searches</h2>' + _plain_table(
        ["search", "parameter", "bound on", "status", "answer", "reason", "probes"], rows)


def _memory(memory: Mapping[str, int] | None) -> str:
    if not memory:
        return ""
    parts = [f"RSS {format_bytes(memory['rss_bytes'])}"] if "rss_bytes" in memory else []
    if "device_allocated_bytes" in memory:
        parts.append(f"device {format_bytes(memory['device_allocated_bytes'])}")
    return ", ".join(parts)


def _params_text(params: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"
                     for k, v in (params or {}).items() if v is not None)


def phases_html(run: Mapping[str, Any]) -> str:
    rows = []
    load = load_phase(run)
    if load is not None:
        rows.append(["load", _params_text(load.info or {}), f"{load.wall_s:.2f} s", _memory(load.memory), ""])
    for i, step in enumerate(phases(run, "steps"), start=1):
        rows.append([f"step {i}: {step.name}", _params_text(step.params), f"{step.wall_s:.2f} s",
                     _memory(step.memory), step.error or ""])
    for metric in phases(run, "metrics"):
        rows.append([f"metric: {metric.name}", _params_text(metric.params), f"{metric.wall_s:.2f} s",
                     _memory(metric.memory), metric.error or ""])
    return _plain_table(["phase", "parameters", "wall", "peak memory", "error"], rows) if rows else ""


def measurements_html(run: Mapping[str, Any]) -> str:
    rows = []
    for m in run.get("measurements") or ():
        unit = m.get("unit", "")
        spread = ", ".join(f"{k} {format_value(v, unit)}" for k, v in (m.get("spread") or {}).items())
        value = format_value(m["value"], unit) if m.get("value") is not None else f"unavailable: {m.get('unavailable')}"
        rows.append([m["metric"], m["name"], value, spread])
    return _plain_table(["metric", "measurement", "value", "spread"], rows) if rows else ""


def modules_html(run: Mapping[str, Any]) -> str:
    per_module = modules_of(run)
    if not per_module:
        return ""
    extra = [k for k in ("format", "kernel") if any(k in e for e in per_module.values())]
    rows = [[name, e.get("kind", ""), "×".join(str(s) for s in e.get("shape") or ()),
             f"{e.get('sparsity', 0) * 100:.2f}%", f"{e.get('bits', 0):.3g}", *[e.get(k, "") for k in extra]]
            for name, e in per_module.items()]
    kernels = kernels_of(run)
    paths = ("<p class=\"note\">Forward paths in use (latency metric): "
             + _e(", ".join(f"{k} ×{n}" for k, n in kernels.items())) + "</p>") if kernels else ""
    return (f"<details><summary>{len(per_module)} layers (kind, sparsity, bits)</summary>"
            + _plain_table(["layer", "kind", "shape", "sparsity", "bits/weight", *extra], rows) + paths + "</details>")


def run_html(run: Mapping[str, Any]) -> str:
    status = run.get("status", "")
    summary = (f'<summary>{_e(run["name"])} · <span class="{_e(status)}">{_e(status)}</span> · '
               f"{run.get('wall_s', 0):.1f} s</summary>")
    facts = (f'<p class="meta">id <code>{_e(run.get("id"))}</code> · pipeline {_e(run.get("pipeline"))} · seed '
             f"{_e(run.get('seed'))}" + (f" · limit {_e(run['limit'])}" if run.get("limit") else "")
             + f" · started {_e(run.get('started_at', ''))}"
             + (f" · ran on {_e(where)}" if (where := ran_on_text(run.get("ran_on"))) else "") + "</p>")
    error = ""
    if run.get("error"):
        error = f'<p class="failed"><strong>Error:</strong> {_e(run["error"].get("message", ""))}</p>'
        if run["error"].get("traceback"):
            error += f"<details><summary>traceback</summary><pre>{_e(run['error']['traceback'])}</pre></details>"
    return (f'<details class="run" id="run-{_e(run.get("id"))}">{summary}{facts}{error}{phases_html(run)}'
            f"{measurements_html(run)}{modules_html(run)}</details>")


def environment_html(env: Mapping[str, Any]) -> str:
    if not env:
        return ""
    gpus = "; ".join(f"{g.get('name')} ({format_bytes(g.get('memory_bytes') or 0)}, driver {g.get('driver')})"
                     for g in env.get("gpus") or ()) or "none"
    items = [
        ("CPU", f"{env.get('cpu')} ({env.get('cpu_cores')} cores, {env.get('cpu_threads')} threads; "
                f"torch threads {env.get('torch_threads')})"),
        ("RAM", format_bytes(env.get("ram_bytes") or 0)), ("GPU", gpus), ("CUDA", env.get("cuda") or "none"),
        ("Python", f"{env.get('python')} on {env.get('platform')}"),
        ("Libraries", ", ".join(f"{k} {v}" for k, v in (env.get("libraries") or {}).items())),
        ("paqbench git sha", env.get("git_sha") or "unknown"),
        ("Settings", ", ".join(f"{k}={v}" for k, v in (env.get("env") or {}).items()) or "none"),
    ]
    return ('<h2 id="environment">Environment</h2><dl class="env">'
            + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>")


def render_html(report: Any, directory: str | Path) -> str:
    """The page for ``report``; figures come from ``directory`` when the plots reporter drew
    them for this same report."""
    directory = Path(directory)
    runs = report.runs
    sections = [summary_html(runs), searches_html(getattr(report, "searches", []) or []),
                plots_html(directory, report), samples_html(runs), full_html(runs),
                '<h2 id="runs">Runs</h2>' + "".join(run_html(r) for r in runs), environment_html(report.environment)]
    nav = " ".join(f'<a href="#{anchor}">{label}</a>' for anchor, label in
                   (("summary", "Summary"), ("plots", "Plots"), ("samples", "Samples"), ("all", "Every measurement"),
                    ("runs", "Runs"), ("environment", "Environment")) if f'id="{anchor}"' in "".join(sections))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="{FINGERPRINT_META}" content="{fingerprint(report)}">'
            f"<title>paqbench report: {_e(report.suite_name)}</title><style>{STYLE}</style></head><body>"
            f"{header_html(report)}<nav>{nav}</nav>{''.join(sections)}<script>{SCRIPT}</script></body></html>\n")


def belongs_to(path: Path, report: Any) -> bool:
    """Whether the report.html at ``path`` was rendered for this very report (so the plots
    reporter may render it again with its figures)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return False
    return f'<meta name="{FINGERPRINT_META}" content="{fingerprint(report)}">' in text
