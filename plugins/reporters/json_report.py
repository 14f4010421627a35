"""report.json: everything, for machines (see docs/architecture.md for the schema)."""

from __future__ import annotations

import json
from pathlib import Path

from paqbench import Reporter, hookimpl


class JSONReporter(Reporter):
    name = "json"
    description = "report.json: environment, resolved suite, every run with steps and measurements."

    def write(self, report, directory: Path) -> list[Path]:
        path = Path(directory) / "report.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(path)
        return [path]


@hookimpl
def paqbench_register_reporters(register):
    register(JSONReporter)
