"""Typed views of one run entry of ``report.json``: its steps and phases.

Report and compare code reads ``StepSpec.method`` and ``PhaseRecord.wall_s`` rather than
indexing dicts: the entry is parsed here, in one place, into the same types the planner
and the runner write (:class:`paqbench.planner.StepSpec`,
:class:`paqbench.runner.result.PhaseRecord`). Nothing here changes a JSON format; the
views read what those types serialise to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from paqbench.planner import StepSpec
from paqbench.runner.result import PhaseRecord

Run = Mapping[str, Any]


def phases(run: Run, kind: Literal["steps", "metrics"]) -> list[PhaseRecord]:
    """The run's recorded step or metric phases, in order (empty when none ran)."""
    return [PhaseRecord.from_dict(record) for record in run.get(kind) or ()]


def load_phase(run: Run) -> PhaseRecord | None:
    """The model-load phase, or None when the run recorded none."""
    record = run.get("load")
    return PhaseRecord.from_dict(record) if record else None


def planned_steps(run: Run) -> list[StepSpec]:
    """The run's method steps as planned (``planned_steps``: the resolved suite, also
    when a step failed part-way), else as recorded by the steps that ran (older reports)."""
    planned = run.get("planned_steps")
    if planned is None:
        return [StepSpec(record.name, dict(record.params or {})) for record in phases(run, "steps")]
    return [StepSpec(**step) for step in planned]
