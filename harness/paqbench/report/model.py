"""The report: every run of the plan with its steps and measurements, the resolved
suite, and the environment. ``report.json`` is this object; ``report.md`` a view of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from paqbench.planner import SearchSpec
from paqbench.runner.result import RunResult
from paqbench.runner.search import bisect
from paqbench.runner.store import ResultStore

SCHEMA_VERSION = 1


@dataclass
class Report:
    suite_name: str
    suite: dict[str, Any]
    environment: dict[str, Any]
    runs: list[dict[str, Any]]
    missing: list[str] = field(default_factory=list)
    generated_at: str = ""
    schema_version: int = SCHEMA_VERSION
    searches: list[dict[str, Any]] = field(default_factory=list)  # threshold searches: answer and probes

    @property
    def baseline(self) -> dict[str, Any] | None:
        return next((r for r in self.runs if r["pipeline"] == "baseline"), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "generated_at": self.generated_at,
            "suite_name": self.suite_name,
            "environment": self.environment,
            "suite": self.suite,
            "runs": self.runs,
            "missing_runs": self.missing,
            "searches": self.searches,
        }


def _run_entry(result: RunResult) -> dict[str, Any]:
    spec = result.spec
    return {
        "id": result.id,
        "name": result.name,
        "pipeline": result.pipeline,
        "sweep": result.sweep,
        "status": result.status,
        "error": result.error,
        "load": result.load.__dict__ if result.load else None,
        "steps": [s.__dict__ for s in result.steps],
        "planned_steps": spec.get("steps"),  # what was asked, also when a step failed part-way
        "model": spec.get("model"),  # the resolved model config this run used (--model/--device applied)
        "search": spec.get("search"),
        "metrics": [m.__dict__ for m in result.metrics],
        "measurements": result.measurements,
        "seed": spec.get("seed"),
        "limit": spec.get("limit"),
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "wall_s": result.wall_s,
        "ran_on": ran_on(result.environment),
    }


def ran_on(environment: dict[str, Any] | None) -> dict[str, Any] | None:
    """Where a run ran: its host and the GPUs its process saw; under Ray also the node, its
    address and the GPU ids Ray gave the task (``environment["executor"]``, set by the Ray
    executor, also for a run whose worker died)."""
    if not environment:
        return None
    executor = environment.get("executor") or {}
    where: dict[str, Any] = {
        "host": environment.get("hostname") or executor.get("hostname"),
        "gpus": [g.get("name") for g in environment.get("gpus") or ()],
        "executor": executor.get("executor", "process"),
    }
    for key in ("node_id", "node_ip", "gpu_ids", "pid"):
        if key in executor:
            where[key] = executor[key]
    return where


def build_report(output_dir: Path) -> Report:
    """Build the report of ``output_dir`` from its manifest and results.jsonl."""
    store = ResultStore(output_dir)
    manifest = store.read_manifest() or {}
    latest = store.latest()
    planned = manifest.get("plan") or [{"id": rid, "name": r.name} for rid, r in latest.items()]
    runs, missing = [], []
    for entry in planned:
        result = latest.get(entry["id"])
        if result is None:
            missing.append(entry["name"])
        else:
            runs.append(_run_entry(result))
    searches = _replay_searches(manifest, latest, runs, missing)
    environment = {}
    for result in latest.values():
        if result.environment.get("hostname"):  # not the stub of a Ray run whose worker died
            environment = result.environment
    return Report(
        suite_name=manifest.get("suite_name", output_dir.name),
        suite=manifest.get("resolved_suite", {}),
        environment=environment,
        runs=runs,
        missing=missing,
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        searches=searches,
    )


def _replay_searches(
    manifest: dict[str, Any], latest: dict[str, RunResult], runs: list[dict[str, Any]], missing: list[str]
) -> list[dict[str, Any]]:
    """Each threshold search re-derived from the recorded probes (the search is a pure
    function of them); probe runs join ``runs``, an unfinished search joins ``missing``."""
    out = []
    seen = {r["id"] for r in runs}
    baseline = next((r for r in runs if r.get("pipeline") == "baseline"), None)
    for data in manifest.get("searches") or []:
        search = SearchSpec.from_dict(data)

        def evaluate(spec, search=search):
            result = latest.get(spec.config_hash)
            if result is None:
                return None
            entry = _run_entry(result)
            if entry["id"] not in seen:
                seen.add(entry["id"])
                runs.append(entry)
            return entry

        outcome = bisect(search, evaluate, baseline)
        if outcome.status == "incomplete":
            missing.append(f"{search.name} (threshold search; next probe {outcome.probes[-1].run})")
        out.append(outcome.to_dict())
    return out
