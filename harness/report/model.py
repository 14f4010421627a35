"""The report: every run of the plan with its steps and measurements, the resolved
suite, and the environment. ``report.json`` is this object; ``report.md`` a view of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from paqbench.runner.result import RunResult
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
        "metrics": [m.__dict__ for m in result.metrics],
        "measurements": result.measurements,
        "seed": spec.get("seed"),
        "limit": spec.get("limit"),
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "wall_s": result.wall_s,
    }


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
    environment = {}
    for result in latest.values():
        if result.environment:
            environment = result.environment
    return Report(
        suite_name=manifest.get("suite_name", output_dir.name),
        suite=manifest.get("resolved_suite", {}),
        environment=environment,
        runs=runs,
        missing=missing,
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
