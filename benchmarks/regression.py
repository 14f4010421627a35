"""The regression gate behind ``tox -e bench``.

Runs ``suites/regression.yaml`` into a fresh output directory, then compares the result
with the baseline stored in ``reports/baselines/regression/report.json`` under the
thresholds in ``reports/baselines/regression/thresholds.yaml``. Exit code 0: no
regression; 1: a metric regressed (named in the output) or a run failed; 2: bad input.

    python benchmarks/regression.py                     # run and compare
    python benchmarks/regression.py --update-baseline   # run and store the result as the baseline
    python benchmarks/regression.py --skip-run --output DIR   # compare an existing result directory
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "suites" / "regression.yaml"
BASELINE_DIR = ROOT / "reports" / "baselines" / "regression"
OUTPUT = ROOT / "reports" / "regression"


def _paqbench(*args: str) -> int:
    return subprocess.run([sys.executable, "-m", "paqbench.cli", *args], cwd=ROOT, check=False).returncode


def _busy_note() -> str | None:
    """Timings taken while other work competes for the CPU are unreliable: say so."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every platform
        return None
    cores = os.cpu_count() or 1
    if load > cores:
        return (f"note: load average {load:.1f} on {cores} cores; other processes competed for the CPU, "
                "so latency comparisons are unreliable in this session")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update-baseline", action="store_true",
                        help="store the new report as the baseline instead of comparing")
    parser.add_argument("--suite", type=Path, default=SUITE, help="suite to run (default: %(default)s)")
    parser.add_argument("--baseline", type=Path, default=BASELINE_DIR,
                        help="directory of the stored report.json (default: %(default)s)")
    parser.add_argument("--thresholds", type=Path, default=None,
                        help="thresholds YAML (default: thresholds.yaml in the baseline directory)")
    parser.add_argument("--output", type=Path, default=OUTPUT,
                        help="fresh output directory for this run; emptied first (default: %(default)s)")
    parser.add_argument("--skip-run", action="store_true", help="compare --output as it is, without running")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the baseline was recorded single-threaded
    os.environ.setdefault("PAQBENCH_PROGRESS", "0")

    output = args.output.resolve()
    if not args.skip_run:
        if output.exists():
            shutil.rmtree(output)
        code = _paqbench("run", str(args.suite), "--output", str(output))
        busy = _busy_note()
        if busy:
            print(f"regression bench: {busy}", file=sys.stderr)
        if code != 0:
            print(f"regression bench: the suite run failed (exit {code}); see {output}/report.md", file=sys.stderr)
            return code
    if args.update_baseline:
        args.baseline.mkdir(parents=True, exist_ok=True)
        for name in ("report.json", "report.md"):
            shutil.copyfile(output / name, args.baseline / name)
        print(f"regression bench: baseline updated in {args.baseline} (commit report.json and report.md)")
        return 0

    baseline = args.baseline / "report.json"
    if not baseline.is_file():
        print(f"regression bench: no baseline at {baseline}; create it with --update-baseline", file=sys.stderr)
        return 2
    thresholds = args.thresholds or args.baseline / "thresholds.yaml"
    compare_args = ["compare", str(baseline), str(output), "--json", str(output / "compare.json")]
    if thresholds.is_file():
        compare_args += ["--thresholds", str(thresholds)]
    code = _paqbench(*compare_args)
    print(f"regression bench: {'REGRESSED' if code == 1 else 'ok' if code == 0 else f'error {code}'}"
          f" (comparison in {output / 'compare.json'})", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
