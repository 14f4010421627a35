"""``paqbench compare``: two reports, run by run and metric by metric, with thresholds
that turn a worse number into a failing exit code (the regression gate of ``tox -e bench``)."""

from paqbench.compare.core import (
    Comparison,
    MetricDelta,
    RunPair,
    combined_noise,
    compare_measurement,
    compare_reports,
    not_comparable,
    pair_runs,
    run_signature,
    spread_width,
    with_recovery,
)
from paqbench.compare.render import ReportNotFound, load_report, to_markdown, write_json
from paqbench.compare.settings import PARAM_SCOPE, registered_defaults
from paqbench.compare.thresholds import (
    CompareOptions,
    RecoveryFloor,
    Threshold,
    ThresholdError,
    load_thresholds_file,
    parse_floor,
    parse_floor_option,
    parse_limit,
    parse_option,
)

__all__ = [
    "PARAM_SCOPE",
    "CompareOptions",
    "Comparison",
    "MetricDelta",
    "RecoveryFloor",
    "ReportNotFound",
    "RunPair",
    "Threshold",
    "ThresholdError",
    "combined_noise",
    "compare_measurement",
    "compare_reports",
    "load_report",
    "load_thresholds_file",
    "not_comparable",
    "pair_runs",
    "parse_floor",
    "parse_floor_option",
    "parse_limit",
    "parse_option",
    "registered_defaults",
    "run_signature",
    "spread_width",
    "to_markdown",
    "with_recovery",
    "write_json",
]
