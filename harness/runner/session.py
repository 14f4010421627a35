"""Run a whole plan into an output directory: resume, force, isolation, reports."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from paqbench.planner import Plan, RunSpec
from paqbench.registry import Registry
from paqbench.runner.result import RunResult
from paqbench.runner.search import SearchOutcome, bisect
from paqbench.runner.store import ResultStore


class OutputDirConflict(Exception):
    """The output directory holds results of a different suite."""


@dataclass
class SessionSummary:
    output_dir: Path
    ran: list[RunResult] = field(default_factory=list)
    skipped: list[RunSpec] = field(default_factory=list)
    interrupted: bool = False
    report_files: list[Path] = field(default_factory=list)
    searches: list[SearchOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.ran if r.status != "ok"]


def prepare_output(plan: Plan, output_dir: Path, force: bool) -> ResultStore:
    store = ResultStore(output_dir)
    manifest = store.read_manifest()
    if store.exists() and manifest and manifest.get("suite_name") != plan.suite_name and not force:
        raise OutputDirConflict(
            f"{output_dir} holds results of suite {manifest.get('suite_name')!r}, not {plan.suite_name!r}; "
            "choose another --output, or pass --force to archive them and start afresh"
        )
    if force:
        archived = store.archive()
        if archived:
            logging.getLogger("paqbench").info("previous results archived to %s", archived)
    store.write_manifest({
        "suite_name": plan.suite_name,
        "resolved_suite": plan.resolved_suite,
        "plan": [{"id": r.config_hash, "name": r.name, "pipeline": r.pipeline} for r in plan.runs],
        "searches": [s.to_dict() for s in plan.searches],
    })
    return store


def run_plan(
    plan: Plan,
    output_dir: Path,
    *,
    registry: Registry,
    isolation: str = "process",
    resume: bool = True,
    force: bool = False,
    echo: Callable[[str], None] = print,
    log_level: int = logging.WARNING,
) -> SessionSummary:
    """Run every run of ``plan`` not yet recorded, appending each result as it ends.

    KeyboardInterrupt stops the run in flight; what finished stays recorded and the
    summary says ``interrupted``.
    """
    store = prepare_output(plan, output_dir, force)
    done = store.completed_ids() if resume and not force else set()
    summary = SessionSummary(output_dir=output_dir)
    scratch = output_dir / ".scratch"
    total = len(plan.runs)

    def run_one(spec: RunSpec, label: str) -> RunResult:
        echo(f"{label}: running")
        if isolation == "process":
            from paqbench.runner.isolation import run_in_subprocess

            result = run_in_subprocess(spec, plan.suite_name, scratch, spec.timeout, log_level)
        else:
            from paqbench.runner.execute import execute_run

            result = execute_run(spec, plan.suite_name, scratch, registry)
        store.append(result)
        summary.ran.append(result)
        if result.status == "ok":
            echo(f"{label}: ok in {result.wall_s:.1f} s")
        else:
            message = (result.error or {}).get("message", "unknown error")
            echo(f"{label}: FAILED in {result.wall_s:.1f} s: {message}")
        return result

    try:
        for position, spec in enumerate(plan.runs, start=1):
            label = f"[{position}/{total}] {spec.name}"
            if spec.config_hash in done:
                summary.skipped.append(spec)
                echo(f"{label}: already recorded ({spec.config_hash}), skipped")
                continue
            run_one(spec, label)
        for search in plan.searches:
            latest = store.latest() if resume and not force else {}

            def evaluate(spec: RunSpec, search=search, latest=latest) -> dict:
                label = f"[search {search.name}] {spec.name}"
                recorded = latest.get(spec.config_hash)
                if recorded is not None and recorded.status == "ok":
                    summary.skipped.append(spec)
                    echo(f"{label}: already recorded ({spec.config_hash}), reused")
                    return recorded.to_dict()
                return run_one(spec, label).to_dict()

            outcome = bisect(search, evaluate)
            summary.searches.append(outcome)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        with contextlib.suppress(OSError):
            scratch.rmdir()
    return summary
