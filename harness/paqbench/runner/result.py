"""What one run produced, as recorded in results.jsonl (one JSON object per line)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Status = Literal["ok", "failed"]


@dataclass
class PhaseRecord:
    """Wall time and peak memory of one phase (model load, a step, a metric)."""

    name: str
    wall_s: float
    memory: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    info: dict[str, Any] | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PhaseRecord:
        """Read a recorded phase; keys this version does not know are ignored, and a
        phase written without a wall time (a hand-made report) reads as 0 s."""
        return cls(**{"wall_s": 0.0, **{k: v for k, v in data.items() if k in _PHASE_FIELDS}})



_PHASE_FIELDS = frozenset(f.name for f in fields(PhaseRecord))

@dataclass
class RunResult:
    id: str
    name: str
    pipeline: str
    status: Status
    spec: dict[str, Any]
    suite: str
    sweep: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] | None = None
    load: PhaseRecord | None = None
    steps: list[PhaseRecord] = field(default_factory=list)
    metrics: list[PhaseRecord] = field(default_factory=list)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    started_at: str = ""
    finished_at: str = ""
    wall_s: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        data = dict(data)
        data["load"] = PhaseRecord(**data["load"]) if data.get("load") else None
        data["steps"] = [PhaseRecord(**s) for s in data.get("steps", [])]
        data["metrics"] = [PhaseRecord(**m) for m in data.get("metrics", [])]
        return cls(**data)


def measurement_key(m: dict[str, Any]) -> str:
    """A recorded measurement's key, ``metric`` or ``metric/name``: how reports, the
    comparison and threshold-search objectives name one number."""
    return m["metric"] if m.get("name") in (None, "", m["metric"]) else f"{m['metric']}/{m['name']}"
