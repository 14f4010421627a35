"""What an export wrote: one record per target, one line per layer."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "unavailable", "failed"]


@dataclass
class LayerRecord:
    """One paqbench layer in the target file: where it went and how."""

    module: str
    layer: str
    tensor: str
    level: str
    how: str
    reason: str = ""


@dataclass
class ExportRecord:
    """One target's export of one run: the file, its size, the per-layer capabilities,
    and notes for engines (e.g. layers vLLM will not take)."""

    target: str
    status: Status
    path: str | None = None
    bytes: int | None = None
    reason: str = ""
    layers: list[LayerRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def levels(self) -> dict[str, int]:
        """How many layers were written exactly, converted, unavailable."""
        return dict(Counter(layer.level for layer in self.layers))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["levels"] = self.levels()
        return data


def unavailable_record(target: str, reason: str) -> ExportRecord:
    return ExportRecord(target=target, status="unavailable", reason=reason)
