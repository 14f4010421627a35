"""Run a whole plan into an output directory: resume, force, isolation, reports."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from paqbench.fsio import OutputError
from paqbench.planner import Plan, RunSpec
from paqbench.registry import Registry
from paqbench.runner.execute import RunTimedOut, execute_run
from paqbench.runner.isolation import deadline, failed_by_timeout, run_in_subprocess
from paqbench.runner.ray_executor import connected
from paqbench.runner.result import RunResult
from paqbench.runner.search import SearchOutcome, baseline_entry, bisect
from paqbench.runner.store import ResultStore
from paqbench.suite.schema import RunnerConfig


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
    for path in (store.path, store.manifest_path):
        if path.is_symlink():
            raise OutputError(20, f"{path} is a symbolic link; paqbench does not write through links: "
                                  "remove it or choose another --output")
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
    runner: RunnerConfig | None = None,
) -> SessionSummary:
    """Run every run of ``plan`` not yet recorded, appending each result as it ends.

    KeyboardInterrupt stops the run in flight; what finished stays recorded and the
    summary says ``interrupted``. ``runner.executor: ray`` hands the runs to
    :mod:`paqbench.runner.ray_executor` (unless ``isolation`` is in-process, the
    ``--in-process`` debugging switch); it raises ``ExecutorError`` when Ray cannot be
    used, before anything is written to the output directory.
    """
    args = (plan, output_dir, registry, isolation, resume, force, echo, log_level)
    if runner is not None and runner.executor == "ray" and isolation != "in-process":
        with connected(runner, log_level) as cluster:
            return _run_plan(*args, cluster=cluster)
    return _run_plan(*args, cluster=None)


def _run_plan(plan: Plan, output_dir: Path, registry: Registry, isolation: str, resume: bool, force: bool,
              echo: Callable[[str], None], log_level: int, cluster: Any) -> SessionSummary:
    store = prepare_output(plan, output_dir, force)
    done = store.completed_ids() if resume and not force else set()
    summary = SessionSummary(output_dir=output_dir)
    scratch = output_dir / ".scratch"
    remove_dead_scratch(scratch)
    total = len(plan.runs)

    def run_one(spec: RunSpec, label: str) -> RunResult:
        echo(f"{label}: running")
        if isolation == "process":
            result = run_in_subprocess(spec, plan.suite_name, scratch, spec.timeout, log_level, label)
        else:
            result = _run_in_process(spec, plan.suite_name, scratch, registry,
                                     lambda message: echo(f"{label}: {message}"))
        store.append(result)
        summary.ran.append(result)
        if result.status == "ok":
            echo(f"{label}: ok in {result.wall_s:.1f} s")
        else:
            message = (result.error or {}).get("message", "unknown error")
            echo(f"{label}: FAILED in {result.wall_s:.1f} s: {message}")
        return result

    try:
        if cluster is not None:  # a RayCluster: its own scheduling loop, this process still the only writer
            cluster.run(plan, store, summary, done=done, reuse=resume and not force, scratch=scratch, echo=echo)
            return summary
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

            outcome = bisect(search, evaluate, baseline_entry(plan.runs, store.latest()))
            summary.searches.append(outcome)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        remove_dead_scratch(scratch)
        with contextlib.suppress(OSError):
            scratch.rmdir()
    return summary


def _run_in_process(spec: RunSpec, suite_name: str, scratch: Path, registry: Registry,
                    progress: Callable[[str], None]) -> RunResult:
    """One run in this process, stopped by ``isolation.deadline`` when it passes its timeout."""
    started, started_at = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        with deadline(spec.timeout):
            return execute_run(spec, suite_name, scratch, registry, progress)
    except RunTimedOut:  # the alarm went off between the run's end and the timer's reset
        return failed_by_timeout(spec, suite_name, started, started_at)


def remove_dead_scratch(scratch: Path) -> None:
    """Remove the scratch folders of runs whose process is gone (killed, timed out, interrupted).

    A folder is named ``paqbench-<id>-<pid>-<random>`` by ``execute_run``; one whose pid is
    still alive belongs to a run in progress (perhaps another session) and is kept.
    """
    if not scratch.is_dir():
        return
    for folder in scratch.iterdir():
        parts = folder.name.split("-")
        pid = int(parts[2]) if len(parts) >= 4 and parts[2].isdigit() else None
        if pid is None or pid <= 0 or not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
