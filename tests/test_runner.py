"""The runner: isolated runs, failures recorded while the others complete, resume after
a kill, Ctrl-C keeps what finished, timeouts, and the reports it writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from paqbench.planner import build_plan
from paqbench.registry import get_registry
from paqbench.runner.session import OutputDirConflict, run_plan
from paqbench.runner.store import ResultStore
from paqbench.suite import load_suite
from tests.helpers import ROOT, TINY_SUITE, paqbench, write_suite

FAILING_SUITE = TINY_SUITE + """
  - name: broken
    steps:
      - magnitude: {sparsity: 0.5, targets: "no_such_layer"}
"""


def _plan(tmp_path, text):
    return build_plan(load_suite(write_suite(tmp_path, text)), get_registry())


def test_in_process_run_records_every_run_and_reports(tmp_path):
    out = tmp_path / "out"
    summary = run_plan(_plan(tmp_path, TINY_SUITE), out, registry=get_registry(), isolation="in-process",
                       echo=lambda m: None)
    assert [r.status for r in summary.ran] == ["ok", "ok", "ok"]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    sparsity = {r["name"]: next(m["value"] for m in r["measurements"] if m["name"] == "linear_sparsity")
                for r in records}
    assert sparsity == {"baseline": 0.0, "magnitude[sparsity=0.25]": 0.25, "magnitude[sparsity=0.5]": 0.5}
    step = records[1]["steps"][0]
    assert step["name"] == "magnitude" and step["wall_s"] > 0 and step["memory"]["rss_bytes"] > 0


def test_failing_run_is_recorded_and_others_complete_in_subprocesses(tmp_path):
    out = tmp_path / "out"
    result = paqbench("run", str(write_suite(tmp_path, FAILING_SUITE)), "-o", str(out))
    assert result.returncode == 1, result.stderr
    assert "broken: FAILED" in result.stderr
    # each phase is one line on stderr without -v, from the run's own process
    assert "[4/4] broken: load tiny-random-llama (at " in result.stderr
    assert "[4/4] broken: step 1/1 magnitude (at " in result.stderr
    report = json.loads((out / "report.json").read_text())
    status = {r["name"]: r["status"] for r in report["runs"]}
    assert status == {"baseline": "ok", "magnitude[sparsity=0.25]": "ok",
                      "magnitude[sparsity=0.5]": "ok", "broken": "failed"}
    broken = next(r for r in report["runs"] if r["name"] == "broken")
    assert "step 1 (magnitude) failed" in broken["error"]["message"]
    assert "no linear layers match" in broken["error"]["message"]
    assert "Traceback" in broken["error"]["traceback"]
    md = (out / "report.md").read_text()
    assert "| broken" in md and "failed" in md


def test_resume_skips_recorded_runs_and_retries_failures(tmp_path):
    out = tmp_path / "out"
    plan = _plan(tmp_path, FAILING_SUITE)
    run_plan(plan, out, registry=get_registry(), isolation="in-process", echo=lambda m: None)
    messages: list[str] = []
    summary = run_plan(plan, out, registry=get_registry(), isolation="in-process", echo=messages.append)
    assert [s.name for s in summary.skipped] == [r.name for r in plan.runs if r.pipeline != "broken"]
    assert [r.name for r in summary.ran] == ["broken"]  # failures are retried on resume
    forced = run_plan(plan, out, registry=get_registry(), isolation="in-process", force=True,
                      echo=lambda m: None)
    assert len(forced.ran) == 4 and not forced.skipped
    assert list(out.glob("results.*.jsonl.bak"))  # --force archives, never deletes


def test_output_dir_of_another_suite_is_refused(tmp_path):
    out = tmp_path / "out"
    run_plan(_plan(tmp_path, TINY_SUITE), out, registry=get_registry(), isolation="in-process",
             echo=lambda m: None)
    other = _plan(tmp_path, TINY_SUITE.replace("name: tiny", "name: other"))
    with pytest.raises(OutputDirConflict, match="holds results of suite 'tiny'"):
        run_plan(other, out, registry=get_registry(), isolation="in-process", echo=lambda m: None)


def _start(suite, out) -> subprocess.Popen:
    env = {**os.environ, "PAQBENCH_PROGRESS": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "paqbench.cli", "run", str(suite), "-o", str(out)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
        # a background job inherits SIGINT as ignored; a user's terminal does not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_lines(path, n, process, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if process.poll() is not None:
            pytest.fail(f"suite ended before {n} results: {process.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("timed out waiting for results")


def test_suite_killed_mid_run_resumes_without_redoing_finished_runs(tmp_path):
    suite, out = write_suite(tmp_path, TINY_SUITE), tmp_path / "out"
    process = _start(suite, out)
    _wait_for_lines(out / "results.jsonl", 1, process)
    os.killpg(process.pid, signal.SIGKILL)  # the whole process group, runs included
    process.wait()
    finished = ResultStore(out).completed_ids()
    assert 1 <= len(finished) < 3

    result = paqbench("run", str(suite), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("), skipped") == len(finished)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 3  # nothing ran twice


def test_ctrl_c_keeps_finished_runs(tmp_path):
    suite, out = write_suite(tmp_path, TINY_SUITE), tmp_path / "out"
    process = _start(suite, out)
    _wait_for_lines(out / "results.jsonl", 1, process)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    finished = len((out / "results.jsonl").read_text().splitlines())
    if finished == 3:  # pragma: no cover - the suite won the race; nothing to interrupt
        pytest.skip("suite finished before the interrupt arrived")
    assert process.returncode == 130, stderr
    assert "Interrupted" in stderr and (out / "report.md").exists()


def test_timeout_records_a_failed_run(tmp_path):
    suite = write_suite(tmp_path, TINY_SUITE)
    result = paqbench("run", str(suite), "-o", str(tmp_path / "out"), "--timeout", "0.5", "--only", "magnitude")
    assert result.returncode == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert all(r["status"] == "failed" for r in report["runs"])
    assert "exceeded its timeout of 0.5 s" in report["runs"][0]["error"]["message"]


def test_report_command_regenerates_from_results(tmp_path):
    out = tmp_path / "out"
    run_plan(_plan(tmp_path, TINY_SUITE), out, registry=get_registry(), isolation="in-process",
             echo=lambda m: None)
    assert not (out / "report.md").exists()
    result = paqbench("report", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1
    assert report["runs"][0]["name"] == "baseline"
    assert report["environment"]["libraries"]["torch"]
    for run in report["runs"]:
        for m in run["measurements"]:
            assert {"metric", "name", "value", "unit", "better"} <= set(m)
    md = (out / "report.md").read_text()
    assert md.index("| baseline") < md.index("| magnitude[sparsity=0.25]")
    assert "(+25.00 pp)" in md  # linear sparsity change against the baseline


def test_dry_run_prints_plan_and_runs_nothing(tmp_path):
    result = paqbench("run", str(write_suite(tmp_path, TINY_SUITE)), "--dry-run", "-o", str(tmp_path / "o"))
    assert result.returncode == 0
    assert "magnitude[sparsity=0.5]" in result.stdout and "baseline" in result.stdout
    assert not (tmp_path / "o").exists()
