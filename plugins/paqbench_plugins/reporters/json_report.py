"""report.json: everything, for machines (see docs/architecture.md for the schema); next to
it, the accuracy measurements in lm-eval's results layout (lm_eval_results/, see
:mod:`paqbench.report.lm_eval_results`)."""

from __future__ import annotations

import json
from pathlib import Path

from paqbench import Reporter, hookimpl
from paqbench.fsio import write_text_atomic
from paqbench.report.lm_eval_results import write_lm_eval_results


class JSONReporter(Reporter):
    name = "json"
    description = ("report.json: environment, resolved suite, every run with steps and measurements; "
                   "lm_eval_results/: accuracy per run in lm-eval's results layout.")

    def write(self, report, directory: Path) -> list[Path]:
        path = write_text_atomic(Path(directory) / "report.json",
                                 json.dumps(report.to_dict(), indent=2, default=str) + "\n")
        return [path, *write_lm_eval_results(report.runs, report.environment, directory)]


@hookimpl
def paqbench_register_reporters(register):
    register(JSONReporter)
