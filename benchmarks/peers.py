"""The quality bar (issue 17): paqbench's own RTN, GPTQ, AWQ, SparseGPT and Wanda against
the peers' versions of the same method, on identical weights, calibration and evaluation
windows (suites/benchmarks/peers.yaml).

The suite runs ``--passes`` times, each pass into its own folder, every run in its own
process, each paqbench run next to its peer's; passes after the first repeat only the
pairs whose peer ran. Perplexity is deterministic, so it is read from the first pass and checked equal
in the others (a difference is printed); the step
wall time of each implementation is the median over passes, and its ratio against a peer
is the median of the per-pass ratios (A B, A B: this machine's speed drifts by 2x within a
day, a pair run back to back does not). The bar: perplexity no worse than the best peer's
(ratio <= 1.00) in at most 0.7x its time.

    python benchmarks/peers.py [--passes 2] [--output reports/bench-peers]
        [--json reports/bench-peers/peers.json] [--table-only]

llm-compressor pins transformers 5.17, so run it in its environment: ``tox -e bench-peers``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

SUITE = Path(__file__).resolve().parent.parent / "suites" / "benchmarks" / "peers.yaml"
BAR_PPL, BAR_TIME = 1.00, 0.70


@dataclass(frozen=True)
class Method:
    """One method of the bar: paqbench's pipeline, the peers' versions of the same method
    (the bar), paqbench's extra rows, and peers' related methods shown beside them (not
    the bar: a different algorithm under a similar name)."""

    name: str
    ours: str
    peers: tuple[str, ...]
    extra: tuple[str, ...] = ()
    related: tuple[str, ...] = ()


METHODS = (
    # auto-round's iters=0 is its *optimized* RTN (a per-group scale search weighted by an
    # activation importance matrix from calibration), not plain round-to-nearest.
    Method("RTN", "rtn", ("llmc-rtn", "torchao-rtn"), ("rtn-g128",), ("auto-round-rtn",)),
    Method("GPTQ", "gptq", ("llmc-gptq",), ("gptq-g128",)),
    Method("AWQ", "awq", ("llmc-awq",)),
    Method("SparseGPT", "sparsegpt", ("llmc-sparsegpt",)),
    Method("Wanda", "wanda", ("llmc-wanda",)),
)


@dataclass
class Row:
    method: str
    run: str
    status: str
    wikitext2: float | None
    c4: float | None
    step_s: float | None  # median over passes
    peak_rss_mib: float | None
    ppl_vs_best_peer: float | None = None
    time_vs_peer: dict[str, float] | None = None  # median per-pass ratio against each peer
    note: str = ""


def timed_pairs(methods: tuple[Method, ...], first: dict[str, dict[str, Any]]) -> list[str]:
    """The pipelines whose time ratios the bar needs: each method's own and those of its
    peers that ran in the first pass (a peer that failed there has no time to compare;
    related methods get no time ratio, so they are not repeated)."""
    names = []
    for method in methods:
        peers = [p for p in method.peers if first.get(p, {}).get("status") == "ok"]
        if peers:
            names += [method.ours, *peers]
    return names


def run_passes(passes: int, output: Path, only: list[str]) -> list[Path]:
    """Run the suite ``passes`` times into output/pass-1, pass-2, ...; return the report paths.

    Perplexity is deterministic, so passes after the first repeat only the timed pairs
    (``only`` narrows every pass)."""
    paqbench = shutil.which("paqbench", path=str(Path(sys.executable).parent)) or "paqbench"
    reports = []
    for index in range(1, passes + 1):
        folder = output / f"pass-{index}"
        names = only or ([] if index == 1 else timed_pairs(METHODS, load_runs(reports[0])))
        command = [paqbench, "run", str(SUITE), "-o", str(folder)] + [f"--only={name}" for name in names]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=False, env=os.environ.copy())
        reports.append(folder / "report.json")
    return reports


def load_runs(report: Path) -> dict[str, dict[str, Any]]:
    """Runs by name; an absent report (the pass did not finish) is an empty pass."""
    if not report.is_file():
        print(f"{report}: missing; that pass is left out", file=sys.stderr)
        return {}
    return {run["name"]: run for run in json.loads(report.read_text())["runs"]}


def perplexities(run: dict[str, Any]) -> dict[str, float]:
    return {m["name"]: m["value"] for m in run.get("measurements", []) if m["metric"] == "perplexity"}


def step_seconds(run: dict[str, Any]) -> float | None:
    walls = [step.get("wall_s") for step in run.get("steps", [])]
    return sum(walls) if walls and all(w is not None for w in walls) and run["status"] == "ok" else None


def step_peak_rss(run: dict[str, Any]) -> float | None:
    peaks = [(step.get("memory") or {}).get("rss_bytes") for step in run.get("steps", [])]
    peaks = [p for p in peaks if p]
    return max(peaks) / 2**20 if peaks else None


def build_row(method: str, name: str, passes: list[dict[str, dict[str, Any]]]) -> Row:
    runs = [p[name] for p in passes if name in p]
    if not runs:
        return Row(method, name, "not run", None, None, None, None)
    first = runs[0]
    ppl = perplexities(first)
    notes = []
    for other in runs[1:]:
        if other["status"] == "ok" and perplexities(other) != ppl:
            notes.append(f"perplexity differs between passes: {perplexities(other)}")
    if first["status"] != "ok":
        error = first.get("error") or {}
        notes.append(str(error.get("message", error))[:160])
    for step in first.get("steps", []):
        conversion = (step.get("info") or {}).get("conversion")
        if conversion:
            diff = conversion.get("max_abs_weight_diff") or 0.0
            exact = "exact" if conversion.get("exact") else f"inexact (max |dw| {diff:.2g})"
            why = " ".join(conversion.get("notes") or [])
            notes.append(f"conversion {exact}: {conversion.get('formats')} {why}".strip())
    times = [t for t in (step_seconds(r) for r in runs) if t is not None]
    return Row(method, name, first["status"], ppl.get("wikitext2"), ppl.get("c4"),
               statistics.median(times) if times else None, step_peak_rss(first), note="; ".join(notes))


def time_ratio(ours: str, peer: str, passes: list[dict[str, dict[str, Any]]]) -> float | None:
    """Median over passes of ours/peer step time, each ratio within one pass."""
    ratios = []
    for runs in passes:
        if ours in runs and peer in runs:
            a, b = step_seconds(runs[ours]), step_seconds(runs[peer])
            if a is not None and b:
                ratios.append(a / b)
    return statistics.median(ratios) if ratios else None


def method_rows(method: Method, passes: list[dict[str, dict[str, Any]]]) -> list[Row]:
    ours = build_row(method.name, method.ours, passes)
    peers = [build_row(method.name, name, passes) for name in method.peers]
    extra = [build_row(method.name, name, passes) for name in (*method.extra, *method.related)]
    scored = [p for p in peers if p.wikitext2 is not None]
    if scored and ours.wikitext2 is not None:
        best = min(scored, key=lambda p: p.wikitext2)
        ours.ppl_vs_best_peer = ours.wikitext2 / best.wikitext2
        for row in extra:
            if row.wikitext2 is not None:
                row.ppl_vs_best_peer = row.wikitext2 / best.wikitext2
    ours.time_vs_peer = {p.run: r for p in peers if (r := time_ratio(method.ours, p.run, passes)) is not None}
    for row in extra:
        if row.run in method.related:
            row.note = "; ".join(filter(None, ["related method, not the bar", row.note]))
    return [ours, *peers, *extra]


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(rows: list[Row]) -> str:
    body = []
    for row in rows:
        ratios = ", ".join(f"{r:.2f}× {peer}" for peer, r in (row.time_vs_peer or {}).items())
        body.append([
            row.method, row.run if row.status == "ok" else f"{row.run} ({row.status})",
            _fmt(row.wikitext2, ".3f"), _fmt(row.c4, ".3f"), _fmt(row.ppl_vs_best_peer, ".3f"),
            _fmt(row.step_s, ".1f"), ratios or "", _fmt(row.peak_rss_mib, ".0f"), row.note,
        ])
    headers = ["method", "run", "WikiText-2 ppl", "C4 ppl", "ppl / best peer", "step s (median)",
               "time / peer (paired)", "peak RSS MiB", "note"]
    return tabulate(body, headers=headers, tablefmt="github")


def verdicts(rows: list[Row], methods: tuple[Method, ...]) -> list[str]:
    lines = []
    by_run = {row.run: row for row in rows}
    for method in methods:
        ours = by_run[method.ours]
        if ours.ppl_vs_best_peer is None:
            lines.append(f"{method.name}: no comparison (paqbench or every peer did not run)")
            continue
        quality = "meets" if ours.ppl_vs_best_peer <= BAR_PPL else "misses"
        speed = {peer: ratio <= BAR_TIME for peer, ratio in (ours.time_vs_peer or {}).items()}
        fast = ", ".join(f"{'≤' if ok else '>'}{BAR_TIME}× {peer}" for peer, ok in speed.items())
        ratio = f"{ours.ppl_vs_best_peer:.3f} of the best peer"
        lines.append(f"{method.name}: perplexity {quality} the bar ({ratio}); time {fast}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=2, help="runs of the whole suite (A B, A B)")
    parser.add_argument("--output", type=Path, default=Path("reports/bench-peers"))
    parser.add_argument("--json", type=Path, default=None, help="default: OUTPUT/peers.json")
    parser.add_argument("--only", action="append", default=[], help="only these pipelines (repeatable)")
    parser.add_argument("--table-only", action="store_true", help="read the passes already in OUTPUT")
    args = parser.parse_args()
    if args.table_only:
        reports = sorted(args.output.glob("pass-*/report.json"))
    else:
        reports = run_passes(args.passes, args.output, args.only)
    passes = [load_runs(report) for report in reports]
    rows = [row for method in METHODS for row in method_rows(method, passes)]
    print(table(rows))
    print()
    for line in verdicts(rows, METHODS):
        print(line)
    destination = args.json or args.output / "peers.json"
    destination.parent.mkdir(parents=True, exist_ok=True)
    payload = {"passes": [str(r) for r in reports], "rows": [asdict(r) for r in rows]}
    destination.write_text(json.dumps(payload, indent=2))
    print(f"\n-> {destination}")


if __name__ == "__main__":
    main()
