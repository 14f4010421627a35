"""The regression gate (``tox -e bench`` = ``python benchmarks/regression.py``): the stored
baseline passes against itself, planted regressions fail with the metric named, and a
uniformly slower machine does not fail (timings are ratios to the dense run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

BASELINE = ROOT / "reports" / "baselines" / "regression"
SCRIPT = ROOT / "benchmarks" / "regression.py"


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PAQBENCH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _baseline() -> dict:
    return json.loads((BASELINE / "report.json").read_text())


def _write(tmp_path: Path, report: dict) -> Path:
    out = tmp_path / "new"
    out.mkdir()
    (out / "report.json").write_text(json.dumps(report))
    return out


def _measurement(report: dict, run: str, key: str) -> dict:
    entry = next(r for r in report["runs"] if r["name"] == run)
    return next(m for m in entry["measurements"] if f"{m['metric']}/{m['name']}" == key)


def test_baseline_is_stored_and_covers_the_suite():
    report = _baseline()
    assert [r["name"] for r in report["runs"]] == ["baseline", "magnitude", "rtn"]
    assert all(r["status"] == "ok" for r in report["runs"])
    assert (BASELINE / "thresholds.yaml").is_file()
    tracked = subprocess.run(["git", "check-ignore", "-q", str(BASELINE / "report.json")], cwd=ROOT)
    assert tracked.returncode == 1, "reports/baselines/ must not be git-ignored"


def test_baseline_against_itself_passes(tmp_path):
    result = bench("--skip-run", "--output", str(_write(tmp_path, _baseline())))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No regression beyond the thresholds." in result.stdout


def test_planted_perplexity_regression_fails_and_is_named(tmp_path):
    report = _baseline()
    _measurement(report, "rtn", "perplexity/embedded")["value"] *= 1.03  # 3% worse; the gate allows 1%
    result = bench("--skip-run", "--output", str(_write(tmp_path, report)))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "REGRESSION (1): rtn: perplexity/embedded" in result.stderr
    compared = json.loads((tmp_path / "new" / "compare.json").read_text())
    assert compared["regressions"] == ["rtn: perplexity/embedded"]


def test_slower_machine_passes_but_a_slower_method_fails(tmp_path):
    report = _baseline()
    for run in report["runs"]:  # every timing 3x slower: a slower machine
        for m in run["measurements"]:
            if m["metric"] == "latency":
                factor = 3.0 if m["better"] == "lower" else 1 / 3.0
                m["value"] *= factor
                m["spread"] = {k: v * factor for k, v in (m.get("spread") or {}).items()}
    slower = bench("--skip-run", "--output", str(_write(tmp_path, report)))
    assert slower.returncode == 0, slower.stdout + slower.stderr

    tpot = _measurement(report, "magnitude", "latency/tpot")
    tpot["value"] *= 3.0  # magnitude's decode got 3x slower than the dense run's
    (tmp_path / "new" / "report.json").write_text(json.dumps(report))
    worse = bench("--skip-run", "--output", str(tmp_path / "new"))
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "magnitude: latency/tpot" in worse.stderr


def test_missing_run_fails_the_gate(tmp_path):
    report = _baseline()
    report["runs"] = [r for r in report["runs"] if r["name"] != "rtn"]
    result = bench("--skip-run", "--output", str(_write(tmp_path, report)))
    assert result.returncode == 1 and "rtn: not in NEW" in result.stderr


@pytest.mark.slow
@pytest.mark.realmodel
def test_real_bench_flow_catches_a_worse_method(tmp_path):
    """The whole flow on the real model, with RTN made worse through a parameter (3 bits
    instead of 4, same pipeline name): the gate fails and names RTN's perplexity."""
    suite = yaml.safe_load((ROOT / "suites" / "regression.yaml").read_text())
    suite["pipelines"] = [p for p in suite["pipelines"] if p["name"] == "rtn"]
    suite["pipelines"][0]["steps"][0]["rtn"]["bits"] = 3
    path = tmp_path / "regression.yaml"
    path.write_text(yaml.safe_dump(suite))
    result = bench("--suite", str(path), "--output", str(tmp_path / "out"), timeout=1800)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rtn: perplexity/embedded" in result.stderr
    assert "parameters differ: step 1 rtn.bits: 4 -> 3" in result.stdout
