"""The Ray executor (``runner.executor: ray``) on a local 2-CPU Ray cluster started once for
the module: the same results as the process runner (threshold search included), failures
recorded while the other runs finish, resume after kill -9 of the driver, and bad input
as one clear error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paqbench.planner import build_plan
from paqbench.plugin_manager import new_plugin_manager
from paqbench.registry import Registry, get_registry
from paqbench.runner.ray_executor import INSTALL, ExecutorError, describe_failure
from paqbench.runner.session import run_plan
from paqbench.runner.store import ResultStore
from paqbench.suite import SuiteError, load_suite
from tests import ray_faults_plugin
from tests.helpers import ROOT, paqbench, write_suite

ray = pytest.importorskip("ray", reason="Ray is not installed (CI installs it: pip install 'paqbench[ray]')")

PARITY_SUITE = """
name: ray-parity
model: tiny-random-llama
metrics:
  - params
  - perplexity: {dataset: embedded, seqlen: 128, max_windows: 4}
pipelines:
  - name: widest
    steps:
      - magnitude:
          sparsity: {search: {low: 0.2, high: 0.6, tol: 0.4}}
    objective: {metric: params/linear_sparsity, max: 0.9}
  - name: kept
    steps:
      - magnitude:
          sparsity: {search: {low: 0.1, high: 0.7, tol: 0.6}}
    objective: {metric: perplexity/embedded, min_recovery: 1}
runner: {executor: ray}
"""

FAULT_SUITE = """
name: ray-faults
model: tiny-random-llama
metrics: [params]
pipelines:
  - name: killed
    steps: [{ray-fault: {action: kill}}]
  - name: raises
    steps: [{ray-fault: {action: raise}}]
  - name: hangs
    steps: [{ray-fault: {action: hang}}]
runner: {executor: ray, resources: {num_cpus: 1}}
"""

KILL_SUITE = """
name: ray-kill
model: tiny-random-llama
metrics: [params]
pipelines:
  - name: magnitude
    steps:
      - magnitude: {sparsity: [0.25, 0.5]}
runner: {executor: ray, address: "ADDRESS", max_concurrent: 1}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> str:
    """A local Ray instance with 2 CPUs, its workers able to load the fault plugin; its GCS address."""
    site = tmp_path_factory.mktemp("ray-faults-site")
    shutil.copy(ray_faults_plugin.__file__, site / "paqbench_ray_faults.py")
    info = site / "paqbench_ray_faults-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: paqbench-ray-faults\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[paqbench]\nray-faults = paqbench_ray_faults\n")
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), before) if p)  # the workers inherit it
    try:
        context = ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20,
                           log_to_driver=False, logging_level="WARNING")
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before
    yield context.address_info["gcs_address"]
    ray.shutdown()


def _registry_with_faults() -> Registry:
    pm = new_plugin_manager()
    pm.register(ray_faults_plugin, name="ray-faults")
    return Registry.from_plugin_manager(pm)


def _values(result) -> dict[str, float]:
    return {f"{m['metric']}/{m['name']}": m["value"] for m in result.measurements}


def test_same_results_as_the_process_runner(tmp_path, cluster):
    loaded = load_suite(write_suite(tmp_path, PARITY_SUITE))
    plan = build_plan(loaded, get_registry())
    messages: list[str] = []
    on_ray = run_plan(plan, tmp_path / "ray", registry=get_registry(), echo=messages.append,
                      runner=loaded.suite.runner)
    # the process runner's in-process mode: the same execute_run and session, without 3 more interpreter starts
    here = run_plan(plan, tmp_path / "here", registry=get_registry(), isolation="in-process", echo=lambda m: None)

    assert not on_ray.interrupted and [r.status for r in on_ray.ran] == ["ok"] * 5
    ray_by_id, here_by_id = {r.id: r for r in on_ray.ran}, {r.id: r for r in here.ran}
    assert set(ray_by_id) == set(here_by_id)  # the same runs, by configuration hash
    for run_id, result in ray_by_id.items():
        mine, theirs = _values(result), _values(here_by_id[run_id])
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():  # counts exact; perplexity up to float summation order
            assert mine[key] == pytest.approx(value, rel=1e-5, abs=0), (result.name, key)
        where = result.environment["executor"]
        assert where["executor"] == "ray" and where["node_id"] and where["pid"] != os.getpid()
    assert [o.to_dict() for o in on_ray.searches] == [o.to_dict() for o in here.searches]
    assert [p.value for p in on_ray.searches[0].probes] == [0.2, 0.6]
    assert on_ray.searches[1].status == "done" and on_ray.searches[1].probes[0].value == 0.1

    # the search's probes ran one after another: the second started after the first ended
    first, second = (f"[search widest] widest[sparsity={v}]" for v in ("0.2", "0.6"))
    ended = next(i for i, m in enumerate(messages) if m.startswith(f"{first}: ok"))
    began = next(i for i, m in enumerate(messages) if m.startswith(f"{second}: running on"))
    assert began > ended
    # ...while the search and the ordinary runs shared the cluster: its first probe started before the baseline ended
    probe_began = next(i for i, m in enumerate(messages) if m.startswith(f"{first}: running on"))
    baseline_ended = next(i for i, m in enumerate(messages) if m.startswith("[1/1] baseline: ok"))
    assert probe_began < baseline_ended, messages
    # a min_recovery search judges its probes against the baseline, so it waits for the baseline's result
    kept = "[search kept] kept[sparsity=0.1]: running"
    recovery_began = next(i for i, m in enumerate(messages) if m.startswith(kept))
    assert recovery_began > baseline_ended, messages
    assert any(m.startswith("ray: ") and "running" in m and "pending" in m for m in messages)

    report = json.loads(_report(tmp_path / "ray", "json"))
    assert all(run["ran_on"]["executor"] == "ray" and run["ran_on"]["node_ip"] for run in report["runs"])
    assert report["environment"]["hostname"]


def _report(directory: Path, reporter: str) -> str:
    from paqbench.report import build_report

    files = get_registry().reporter(reporter)().write(build_report(directory), directory)
    return files[0].read_text()


def test_killed_raising_and_timed_out_runs_are_recorded_and_the_rest_finish(tmp_path, cluster):
    registry = _registry_with_faults()
    loaded = load_suite(write_suite(tmp_path, FAULT_SUITE))
    plan = build_plan(loaded, registry)
    for spec in plan.runs:
        spec.timeout = 8.0 if spec.pipeline == "hangs" else None  # counted from the task's start
    out = tmp_path / "out"
    summary = run_plan(plan, out, registry=registry, echo=lambda m: None, runner=loaded.suite.runner)

    by_name = {r.name: r for r in summary.ran}
    assert {n: r.status for n, r in by_name.items()} == {
        "baseline": "ok", "killed": "failed", "raises": "failed", "hangs": "failed"}
    assert by_name["killed"].error["type"] == "ProcessDied"
    assert "worker died" in by_name["killed"].error["message"]
    assert by_name["raises"].error["type"] == "RuntimeError"
    assert "injected failure" in by_name["raises"].error["message"]
    assert by_name["hangs"].error["type"] == "TimeoutError"
    assert "timeout of 8 s" in by_name["hangs"].error["message"]
    assert 8.0 <= by_name["hangs"].wall_s < 60
    recorded = ResultStore(out).latest()
    assert {r.name: r.status for r in recorded.values()} == {n: r.status for n, r in by_name.items()}
    md = _report(out, "markdown")
    node = by_name["baseline"].environment["executor"]["node_ip"]
    assert f"· ran on node {node} (" in md


def _driver_after_first_result(suite: Path, out: Path) -> subprocess.Popen:
    """``paqbench run`` in a session of its own, returned once its first result is recorded."""
    driver = subprocess.Popen(
        [sys.executable, "-m", "paqbench.cli", "run", str(suite), "-o", str(out)], cwd=ROOT,
        env={**os.environ, "PAQBENCH_PROGRESS": "0"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
        # a background job inherits SIGINT as ignored; a user's terminal does not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    results = out / "results.jsonl"
    deadline = time.time() + 300
    while not (results.exists() and results.read_text().count("\n") >= 1):
        if driver.poll() is not None:
            pytest.fail(f"the driver ended before its first result: {driver.stderr.read()}")
        if time.time() > deadline:
            os.killpg(driver.pid, signal.SIGKILL)
            pytest.fail("no result within 300 s")
        time.sleep(0.1)
    return driver


def test_ctrl_c_cancels_what_is_left_and_keeps_finished_runs(tmp_path, cluster):
    suite = write_suite(tmp_path, KILL_SUITE.replace("ADDRESS", cluster))
    out = tmp_path / "out"
    driver = _driver_after_first_result(suite, out)
    os.killpg(driver.pid, signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    assert "Interrupted: finished runs are kept" in stderr and "Traceback" not in stderr, stderr
    kept = ResultStore(out).completed_ids()
    assert 1 <= len(kept) < 3 and (out / "report.md").exists()


def test_driver_killed_then_rerun_redoes_no_finished_run(tmp_path, cluster):
    suite = write_suite(tmp_path, KILL_SUITE.replace("ADDRESS", cluster))
    out = tmp_path / "out"
    driver = _driver_after_first_result(suite, out)
    os.killpg(driver.pid, signal.SIGKILL)  # kill -9 of the driver
    driver.wait()
    finished = ResultStore(out).completed_ids()
    assert 1 <= len(finished) < 3

    loaded = load_suite(suite)
    plan = build_plan(loaded, get_registry())
    summary = run_plan(plan, out, registry=get_registry(), echo=lambda m: None, runner=loaded.suite.runner)
    assert {s.config_hash for s in summary.skipped} == finished
    assert not {r.id for r in summary.ran} & finished  # nothing finished is redone
    assert ResultStore(out).completed_ids() == {r.config_hash for r in plan.runs}


def test_resources_no_node_has_are_an_error_before_anything_runs(tmp_path, cluster):
    text = PARITY_SUITE.replace("runner: {executor: ray}", "runner: {executor: ray, resources: {num_gpus: 1}}")
    loaded = load_suite(write_suite(tmp_path, text))
    out = tmp_path / "out"
    with pytest.raises(ExecutorError, match=r"runner.resources: no node of the Ray cluster has \{num_cpus: 1, "
                                            r"num_gpus: 1\}.*nodes: 2 CPU, 0 GPU"):
        run_plan(build_plan(loaded, get_registry()), out, registry=get_registry(), echo=lambda m: None,
                 runner=loaded.suite.runner)
    assert not out.exists()  # nothing written, nothing archived


def test_missing_ray_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    loaded = load_suite(write_suite(tmp_path, PARITY_SUITE))
    with pytest.raises(ExecutorError, match="needs Ray, which is not installed") as caught:
        run_plan(build_plan(loaded, get_registry()), tmp_path / "out", registry=get_registry(),
                 echo=lambda m: None, runner=loaded.suite.runner)
    assert INSTALL in str(caught.value) and INSTALL == "pip install 'paqbench[ray]'"
    from click.testing import CliRunner

    from paqbench.cli import main

    validated = CliRunner().invoke(main, ["validate", str(tmp_path / "suite.yaml")])
    assert validated.exit_code == 2
    assert validated.output.strip().splitlines() == [f"Error: {tmp_path / 'suite.yaml'}: {caught.value}"]


def test_unreachable_address_is_one_line_exit_2_and_keeps_results(tmp_path):
    suite = write_suite(tmp_path, PARITY_SUITE.replace("{executor: ray}", '{executor: ray, address: "127.0.0.1:9"}'))
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text('{"kept": true}\n')
    result = paqbench("run", str(suite), "-o", str(out), timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"Error: {suite}: runner.address: no Ray cluster answers at '127.0.0.1:9'")
    assert (out / "results.jsonl").read_text() == '{"kept": true}\n'


@pytest.mark.parametrize(("runner", "message"), [
    ("{address: auto}", "address applies only with executor: ray"),
    ("{executor: ray, isolation: in-process}", "isolation: in-process cannot be combined with executor: ray"),
    ("{executor: ray, max_concurrent: 0}", "max_concurrent"),
    ("{executor: ray, resources: {num_gpu: 1}}", "num_gpu"),
    ("{executor: dask}", "executor"),
])
def test_runner_section_is_validated(tmp_path, runner, message):
    text = PARITY_SUITE.replace("runner: {executor: ray}", f"runner: {runner}")
    with pytest.raises(SuiteError) as caught:
        load_suite(write_suite(tmp_path, text))
    problems = [str(p) for p in caught.value.problems]
    assert any(message in p and "runner" in p for p in problems), problems


def test_ray_failures_are_named():
    kind, message, _ = describe_failure(ray, ray.exceptions.WorkerCrashedError())
    assert kind == "ProcessDied" and "worker died" in message
    kind, message, _ = describe_failure(ray, ray.exceptions.OutOfMemoryError("node memory 96% > 95%"))
    assert kind == "OutOfMemoryError" and "out of memory" in message
