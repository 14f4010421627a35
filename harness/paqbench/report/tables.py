"""The report's tables as data (cells with display text and a sort key), shared by
report.md, report.html and report.csv so the three never disagree.

- :func:`headline`: at most about eight columns chosen by what the suite measured:
  quality (each with its recovery against the baseline), size, sparsity, speed, memory.
- :func:`full_table`: every measurement, one column each.

Each value carries its change against the baseline only where the change exceeds the noise
band (:mod:`paqbench.report.noise`); within noise it reads "≈".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from paqbench.measure.stats import recovery
from paqbench.report.formatting import format_bytes, format_value
from paqbench.report.noise import Change, compare, is_paired_speedup
from paqbench.report.selection import find, key_of, quality_axes, value_or_reason

Run = Mapping[str, Any]

#: Candidates of each headline role, in order of preference: the first with a value in the
#: most runs wins; when none has a value anywhere, the first one requested keeps the column.
SIZE_KEYS = ("storage/checkpoint", "storage/bits_per_weight", "params/bits_per_weight", "params/nonzero")
SPEED_KEYS = ("latency/decode_speedup", "latency/decode_tokens_per_s", "latency/tpot", "latency/e2e")
MEMORY_KEYS = ("memory/weights", "memory/peak_allocated", "memory/peak_rss")
SPARSITY_KEY = "params/linear_sparsity"
QUALITY_METRICS = ("perplexity", "race", "lm_eval")
MAX_COLUMNS = 8
MASK_MARK = "¹"

#: What a measurement means, where its name alone does not say (the legend's last column).
MEANINGS = {
    "params/bits_per_weight": "bits the in-memory weights need per parameter (codes, scales, zero points; "
                              "pruning masks not counted), over all parameters",
    "storage/bits_per_weight": "bits per parameter of the saved checkpoint file (file bytes × 8 / parameters)",
    "storage/checkpoint": "bytes of the saved safetensors checkpoint",
    "params/linear_sparsity": "fraction of zero weights in the targeted linear layers",
    "params/sparsity": "fraction of zero parameters in the whole model (embeddings included)",
    "memory/weights": "bytes of the model's parameters and buffers in memory (pruning masks included)",
    "latency/decode_speedup": "uncompressed model's time per output token / this model's, per pair of "
                              "back-to-back calls; median over pairs",
    "latency/prefill_speedup": "uncompressed model's prefill time / this model's, per pair; median over pairs",
}


@dataclass(frozen=True)
class Cell:
    """One table cell: what a person reads, and the value a sortable table sorts by."""

    text: str
    sort: float | str | None = None
    verdict: str = ""  # the change verdict (noise.Change.verdict), for styling
    tone: str = ""  # "better" or "worse" than the baseline for a change beyond noise, else ""
    change: str = ""  # the part of ``text`` that states the change (" (+12.3%)", " ≈"), for styling

    @property
    def value_text(self) -> str:
        """``text`` without its change."""
        return self.text[: len(self.text) - len(self.change)] if self.change else self.text


@dataclass(frozen=True)
class Column:
    role: str  # run, quality, recovery, size, sparsity, speed, memory, measurement
    title: str
    key: str | None = None
    unit: str = ""
    better: str | None = None
    meaning: str = ""


@dataclass
class Table:
    columns: list[Column]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)  # footnotes, in order of their marks


def baseline_of(runs: Sequence[Run]) -> Run | None:
    return next((r for r in runs if r.get("pipeline") == "baseline"), None)


def measurement_keys(runs: Sequence[Run]) -> list[str]:
    """Every measurement key in the order first recorded (whole-metric entries excluded)."""
    keys: list[str] = []
    for run in runs:
        for m in run.get("measurements") or ():
            if m["name"] != "*" and key_of(m) not in keys:
                keys.append(key_of(m))
    return keys


def _recorded(runs: Sequence[Run], key: str) -> dict[str, Any] | None:
    """The first recorded measurement of ``key`` (with a value if any run has one), else
    the metric's whole-metric ``*`` entry, else None: what the suite asked for."""
    found = [find(r, key) for r in runs]
    with_value = next((m for m in found if m is not None and m.get("value") is not None), None)
    if with_value or any(found):
        return dict(with_value or next(m for m in found if m))
    metric = key.split("/", 1)[0]
    whole = next((find(r, f"{metric}/*") for r in runs if find(r, f"{metric}/*")), None)
    phase = any(p.get("name") == metric for r in runs for p in r.get("metrics") or ())
    return dict(whole) if whole else ({"metric": metric, "name": "*"} if phase else None)


def _count(runs: Sequence[Run], key: str) -> int:
    return sum(1 for r in runs if value_or_reason(r, key)[0] is not None)


def choose_key(runs: Sequence[Run], candidates: Sequence[str]) -> str | None:
    """The candidate with a value in the most runs (ties: the earlier); when no run has
    any, the first candidate the suite measured at all (so its column stays, saying why)."""
    best, best_count = None, 0
    for key in candidates:
        count = _count(runs, key)
        if count > best_count:
            best, best_count = key, count
    if best:
        return best
    return next((k for k in candidates if _recorded(runs, k) is not None), None)


def _title(key: str) -> str:
    metric, name = key.split("/", 1)
    if name == "*":
        return metric
    if metric == "perplexity":
        return f"perplexity ({name})"
    return {"storage/checkpoint": "checkpoint", "storage/bits_per_weight": "checkpoint bits/weight",
            "params/bits_per_weight": "bits/weight", "params/nonzero": "nonzero params",
            "params/linear_sparsity": "sparsity", "latency/decode_speedup": "decode speedup (paired)",
            "latency/decode_tokens_per_s": "decode", "latency/tpot": "time per output token",
            "memory/weights": "weights memory", "memory/peak_allocated": "peak CUDA memory",
            "memory/peak_rss": "peak RSS"}.get(key, f"{metric} {name}")


def _column(runs: Sequence[Run], role: str, key: str, title: str | None = None) -> Column:
    recorded = _recorded(runs, key) or {}
    engine = _engine_speedup(key, recorded)
    if engine is not None:
        title, meaning = engine
    else:
        title, meaning = title or _title(key), MEANINGS.get(key, "")
    return Column(role, title, key, recorded.get("unit", ""), recorded.get("better"), meaning)


def _engine_speedup(key: str, recorded: Mapping[str, Any]) -> tuple[str, str] | None:
    """Title and meaning of a latency speedup measured in an engine backend: there the pair
    is paqbench's torch path against the engine on the same model, not baseline against run."""
    backend = (recorded.get("details") or {}).get("backend")
    if key not in ("latency/decode_speedup", "latency/prefill_speedup") or backend in (None, "torch"):
        return None
    phase = key.split("/")[1].removesuffix("_speedup")
    return (f"{phase} speedup ({backend} vs torch, paired)",
            f"paqbench's torch time / {backend}'s time for this run's model (the same codes), per pair of "
            "back-to-back calls; median over pairs")


def quality_keys(runs: Sequence[Run]) -> list[str]:
    """The headline quality measurements: the first perplexity and the first accuracy with
    a value; a quality metric the suite ran but that has no value anywhere keeps a column."""
    primary, secondary = quality_axes(runs)
    keys = [a.key for a in (primary, secondary) if a is not None]
    for metric in QUALITY_METRICS:
        if len(keys) >= 2 or any(k.startswith(metric + "/") for k in keys):
            continue
        recorded = [m for r in runs for m in r.get("measurements") or () if m["metric"] == metric]
        if recorded and all(m.get("value") is None for m in recorded):
            keys.append(key_of(recorded[0]))
    return keys


def headline_columns(runs: Sequence[Run]) -> list[Column]:
    """run, each quality with its recovery, size, sparsity (when runs are pruned and there
    is room), speed, memory: only what the suite measured."""
    columns = [Column("run", "run")]
    for key in quality_keys(runs):
        columns += [_column(runs, "quality", key), _column(runs, "recovery", key, "recovery")]
    rest = [(role, choose_key(runs, keys)) for role, keys in
            (("size", SIZE_KEYS), ("speed", SPEED_KEYS), ("memory", MEMORY_KEYS))]
    rest = [(role, key) for role, key in rest if key]
    pruned = any((value_or_reason(r, SPARSITY_KEY)[0] or 0) > 0.005 for r in runs)
    if pruned and len(columns) + len(rest) < MAX_COLUMNS:
        rest.insert(1, ("sparsity", SPARSITY_KEY))
    return columns + [_column(runs, role, key) for role, key in rest]


# -- cells -------------------------------------------------------------------------------------


def change_suffix(change: Change, unit: str) -> str:
    """`` (+12.3%)``, `` (+2.50 pp)`` for fractions, `` ≈`` within noise, `` (±0%)`` equal,
    `` (1 sample)`` for a noisy value without a band; nothing without a reference."""
    if change.verdict == "same":
        return " ≈" if change.noisy else " (±0%)"
    if change.verdict == "unknown":
        return " (1 sample)"
    if change.verdict != "change":
        return ""
    if unit == "fraction" and change.points is not None:
        return f" ({change.points:+.2f} pp)" if abs(change.points) >= 0.005 else f" ({change.points:+.1g} pp)"
    if change.relative is None:
        return ""
    percent = change.relative * 100
    return f" ({percent:+.1f}%)" if abs(percent) >= 0.05 else f" ({percent:+.1g}%)"


def _missing(run: Run, key: str) -> Cell:
    if run.get("status") != "ok" and find(run, key) is None:
        return Cell("—", None, "missing")
    _, reason = value_or_reason(run, key)
    if reason and reason.startswith("no "):
        return Cell("not measured", None, "missing")
    return Cell(f"unavailable: {_reason_text(reason or '')}", None, "missing")


def _reason_text(reason: str) -> str:
    """``latency unavailable (no CUDA)`` -> ``no CUDA``: the cell already says unavailable."""
    if "unavailable (" in reason and reason.endswith(")"):
        return reason.split("unavailable (", 1)[1][:-1]
    return reason


def value_cell(run: Run, key: str, baseline: Run | None, with_change: bool = True) -> Cell:
    """The run's value of ``key`` with its change against the baseline (noise-aware)."""
    measurement = find(run, key)
    value, _ = value_or_reason(run, key)
    if value is None or measurement is None:
        return _missing(run, key)
    unit = measurement.get("unit", "")
    text = format_value(value, unit)
    if not with_change:
        return Cell(text, value)
    if run is baseline and not is_paired_speedup(measurement):
        return Cell(text, value, "baseline")
    change = compare(measurement, find(baseline, key) if baseline else None)
    suffix = change_suffix(change, unit)
    return Cell(text + suffix, value, change.verdict, tone(change, measurement.get("better")), suffix)


def tone(change: Change, better: str | None) -> str:
    """Whether a change beyond noise is an improvement (for colouring), by its direction."""
    delta = change.points if change.points is not None else change.relative
    if change.verdict != "change" or not delta or better not in ("lower", "higher"):
        return ""
    return "better" if (delta < 0) == (better == "lower") else "worse"


def recovery_cell(run: Run, key: str, baseline: Run | None) -> Cell:
    value, _ = value_or_reason(run, key)
    base = value_or_reason(baseline, key)[0] if baseline else None
    measurement = find(run, key) or {}
    share = recovery(value, base, measurement.get("better"))
    if share is None:
        return Cell("", None, "missing")
    return Cell(f"{share * 100:.1f}%", share, "baseline" if run is baseline else "")


def _run_cell(run: Run, marks: str = "") -> Cell:
    status = run.get("status", "ok")
    text = run["name"] + (f" ({status})" if status != "ok" else "") + marks
    return Cell(text, run["name"])


def mask_bytes(run: Run) -> int | None:
    """Bytes of the pruning masks the run carries (one bool per weight of each pruned
    layer), from the params metric's per-module record; None when it cannot tell."""
    per_module = (((find(run, SPARSITY_KEY) or {}).get("details") or {}).get("per_module"))
    if not per_module:
        return None
    return sum(math.prod(entry.get("shape") or [0]) for entry in per_module.values()
               if entry.get("kind") == "pruned")


def headline(runs: Sequence[Run]) -> Table:
    """The summary table: one row per run, baseline first, columns by :func:`headline_columns`."""
    columns = headline_columns(runs)
    baseline = baseline_of(runs)
    rows, masked = [], []
    memory_key = next((c.key for c in columns if c.role == "memory"), None)
    for run in runs:
        masks = mask_bytes(run) if memory_key else None  # masks count in any memory figure
        if masks:
            masked.append((run["name"], masks))
        row = []
        for column in columns:
            if column.role == "run":
                row.append(_run_cell(run))
            elif column.role == "recovery":
                row.append(recovery_cell(run, column.key, baseline))
            else:
                cell = value_cell(run, column.key, baseline, with_change=column.role != "sparsity")
                if column.role == "memory" and masks:
                    cell = Cell(cell.text + " " + MASK_MARK, cell.sort, cell.verdict, cell.tone,
                                cell.change + " " + MASK_MARK)
                row.append(cell)
        rows.append(row)
    notes = []
    if masked:
        sizes = ", ".join(f"{name} {format_bytes(size)}" for name, size in masked)
        notes.append(f"{MASK_MARK} Includes the pruning masks the run keeps in memory (one byte per weight of each "
                     f"pruned layer: {sizes}); a deployed model would not carry them.")
    return Table(columns, rows, notes)


def full_table(runs: Sequence[Run]) -> Table:
    """Every measurement of every run, one column each (the details table and report.csv)."""
    keys = measurement_keys(runs)
    baseline = baseline_of(runs)
    columns = [Column("run", "run"), *[_column(runs, "measurement", key, key.replace("/", " ", 1)) for key in keys]]
    rows = [[_run_cell(run), *[value_cell(run, key, baseline) for key in keys]] for run in runs]
    return Table(columns, rows)


def raw_value(run: Run, key: str) -> float | None:
    """The plain number for report.csv (None when there is none)."""
    return value_or_reason(run, key)[0]


# -- per-run records the reporters show ------------------------------------------------------------


def modules_of(run: Run) -> dict[str, dict[str, Any]]:
    """The params metric's per-layer record: {layer: {kind, shape, sparsity, bits, ...}}."""
    return ((find(run, SPARSITY_KEY) or {}).get("details") or {}).get("per_module") or {}


def kernels_of(run: Run) -> dict[str, int]:
    """The latency metric's count of compressed layers per forward path, if recorded."""
    for m in run.get("measurements") or ():
        kernels = (m.get("details") or {}).get("kernels")
        if m["metric"] == "latency" and isinstance(kernels, dict):
            return kernels
    return {}


def samples_of(runs: list[Run]) -> tuple[list[tuple[dict, dict | None]], list[str], dict] | None:
    """(run with its samples measurement, prompts in order, the first details) or None
    when no run has generated text."""
    found = [(run, next((m for m in run["measurements"] if m["metric"] == "samples"), None)) for run in runs]
    measured = [m for _, m in found if m is not None and (m.get("details") or {}).get("outputs")]
    if not measured:
        return None
    prompts = list(dict.fromkeys(o["prompt"] for m in measured for o in m["details"]["outputs"]))
    return found, prompts, measured[0]["details"]


def continuation(run: Run, m: Run | None, prompt: str) -> str | None:
    """The run's text for ``prompt``; None with the reason in :func:`missing_sample`."""
    if m is None or m.get("value") is None:
        return None
    output = next((o for o in m["details"]["outputs"] if o["prompt"] == prompt), None)
    return None if output is None else output["text"]


def missing_sample(run: Run, m: Run | None) -> str:
    return (m or {}).get("unavailable") or ("run failed" if run["status"] != "ok" else "not measured")


