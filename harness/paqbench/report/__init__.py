"""The report model built from results.jsonl, shared by all reporters."""

from paqbench.report.model import Report, build_report

__all__ = ["Report", "build_report"]
