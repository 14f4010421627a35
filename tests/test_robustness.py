"""No data lost, no traceback on bad output paths, no run past its time: results.jsonl
repairs a torn tail and survives a full disk, in-process runs honour --timeout, dead runs'
scratch folders go, output errors are one line, and nothing is written through a symlink."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from paqbench import Metric
from paqbench.cli import main
from paqbench.fsio import OutputError, safe_dir_name, write_text_atomic
from paqbench.planner import build_plan
from paqbench.registry import Registered, get_registry
from paqbench.runner.result import RunResult
from paqbench.runner.session import run_plan
from paqbench.runner.store import ResultStore, ResultsWriteError
from paqbench.suite import load_suite
from tests.helpers import TINY_SUITE, paqbench, write_suite

BASELINE_ONLY = """
name: quick
model: tiny-random-llama
metrics: [params]
"""


def _result(name: str) -> RunResult:
    return RunResult(id=f"id-{name}", name=name, pipeline=name, status="ok", spec={}, suite="s")


def _plan(tmp_path, text, registry=None):
    return build_plan(load_suite(write_suite(tmp_path, text)), registry or get_registry())


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


# ------------------------------------------------------------------ results.jsonl


def test_a_torn_last_line_is_moved_aside_and_the_next_record_is_kept(tmp_path, caplog):
    store = ResultStore(tmp_path)
    store.append(_result("first"))
    with store.path.open("ab") as handle:
        handle.write(b'{"id": "id-second", "name": "sec')  # a crash mid-write
    store.append(_result("third"))
    assert [r.name for r in store.read()] == ["first", "third"]
    assert store.corrupt_lines() == []
    (side,) = tmp_path.glob("results.jsonl.torn-*")
    assert side.read_text() == '{"id": "id-second", "name": "sec'
    assert "line 2" in caplog.text and side.name in caplog.text


def test_a_last_line_that_is_not_json_is_moved_aside_too(tmp_path):
    store = ResultStore(tmp_path)
    store.append(_result("first"))
    with store.path.open("ab") as handle:
        handle.write(b"garbage\n")
    store.append(_result("second"))
    assert [r.name for r in store.read()] == ["first", "second"]
    assert store.corrupt_lines() == []


def _full_disk(monkeypatch, after: int = 0) -> None:
    """Make the (after+1)-th result record hit a full disk: half of it is written, then ENOSPC."""
    real_write, records, cut = os.write, [], []

    def write(fd, data):
        if fd in cut:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if bytes(data[:7]) != b'{"id": ':
            return real_write(fd, data)
        records.append(fd)
        if len(records) <= after:
            return real_write(fd, data)
        cut.append(fd)
        return real_write(fd, bytes(data[: len(data) // 2]))

    monkeypatch.setattr(os, "write", write)


def test_a_full_disk_leaves_whole_lines_and_a_clear_error(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.append(_result("first"))
    before = store.path.read_bytes()
    _full_disk(monkeypatch)
    with pytest.raises(ResultsWriteError, match=r"could not record run 'second'.*No space left"):
        store.append(_result("second"))
    assert store.path.read_bytes() == before  # cut back to the last whole line
    monkeypatch.undo()  # space is freed
    store.append(_result("second"))
    assert [r.name for r in store.read()] == ["first", "second"]


def test_after_a_full_disk_a_rerun_records_the_run_and_loses_nothing(tmp_path, monkeypatch):
    suite, out = write_suite(tmp_path, TINY_SUITE), tmp_path / "out"
    _full_disk(monkeypatch, after=1)
    result = _cli("run", str(suite), "-o", str(out), "--in-process")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "No space left" in errors[0] and "Traceback" not in result.output
    first = ResultStore(out).read()
    assert [r.name for r in first] == ["baseline"]
    monkeypatch.undo()
    rerun = _cli("run", str(suite), "-o", str(out), "--in-process")
    assert rerun.exit_code == 0, rerun.output
    records = ResultStore(out).read()
    assert [r.name for r in records] == ["baseline", "magnitude[sparsity=0.25]", "magnitude[sparsity=0.5]"]
    assert records[0].started_at == first[0].started_at  # the baseline was kept, not redone


def test_report_names_each_corrupt_line(tmp_path):
    store = ResultStore(tmp_path)
    for name in ("a", "b"):
        store.append(_result(name))
    lines = store.path.read_text().splitlines(keepends=True)
    store.path.write_text(lines[0] + "{not json\n" + lines[1])
    assert store.corrupt_lines() == [2]
    result = _cli("report", str(tmp_path), "--reporter", "json")
    assert f"Warning: {store.path}:2: not a valid result record; skipped" in result.stderr


# ------------------------------------------------------------------ runs


class _Slow(Metric):
    name = "slow"
    description = "sleeps for half a minute"

    def measure(self, model, params, ctx):
        for _ in range(300):
            time.sleep(0.1)
        yield self.make("slow", 1.0, "", None)


def test_in_process_run_past_its_timeout_is_recorded_as_failed(tmp_path):
    registry = get_registry()
    registry.entries["metrics"]["slow"] = Registered(_Slow, "test")
    plan = _plan(tmp_path, BASELINE_ONLY.replace("metrics: [params]", "metrics: [params, slow]"), registry)
    plan.runs[0].timeout = 0.5
    summary = run_plan(plan, tmp_path / "out", registry=registry, isolation="in-process", echo=lambda m: None)
    (result,) = summary.ran
    assert result.status == "failed"
    assert result.error["type"] == "TimeoutError"
    assert "exceeded its timeout of 0.5 s" in result.error["message"]
    assert [m["name"] for m in result.measurements][:1] == ["total"]  # measured before the limit: kept


def test_scratch_folders_of_dead_runs_are_removed_on_the_next_run(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    scratch = out / ".scratch"
    leftovers = [scratch / f"paqbench-abc123-{dead_pid}-x1", scratch / "paqbench-abc123-old"]
    alive = scratch / f"paqbench-def456-{os.getpid()}-x2"
    for folder in (*leftovers, alive):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"0" * 16)
    run_plan(_plan(tmp_path, BASELINE_ONLY), out, registry=get_registry(), isolation="in-process",
             echo=lambda m: None)
    assert not any(folder.exists() for folder in leftovers)
    assert alive.exists()  # a live process's run is not ours to remove


def test_a_run_prints_its_phases_without_verbose(tmp_path):
    messages: list[str] = []
    run_plan(_plan(tmp_path, TINY_SUITE), tmp_path / "out", registry=get_registry(), isolation="in-process",
             echo=messages.append)
    mine = [m for m in messages if m.startswith("[2/3] magnitude[sparsity=0.25]: ")]
    phases = [m.split(": ", 1)[1].split(" (at ")[0] for m in mine[1:-1]]
    assert phases == ["load tiny-random-llama", "step 1/1 magnitude", "metric params", "metric perplexity"]
    assert all(" s)" in m for m in mine[1:-1])


# ------------------------------------------------------------------ output directory


def test_output_below_a_regular_file_is_one_clear_line(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    result = _cli("run", str(write_suite(tmp_path, BASELINE_ONLY)), "-o", str(blocker / "out"), "--in-process")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: output directory {blocker / 'out'} is below {blocker}, which is a file"


def test_read_only_output_directory_is_one_clear_line(tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    real_open, real_io_open = os.open, io.open

    def refuse(path) -> None:
        """A read-only file system (chmod cannot simulate one for root): no file opened for writing in ``out``."""
        if str(path).startswith(str(out)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def ro_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def ro_io_open(path, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            refuse(path)
        return real_io_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", ro_os_open)
    monkeypatch.setattr(io, "open", ro_io_open)
    monkeypatch.setattr("builtins.open", ro_io_open)
    result = _cli("run", str(write_suite(tmp_path, BASELINE_ONLY)), "-o", str(out), "--in-process")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"Error: output directory {out} is not writable: Read-only file system"


def test_a_very_long_suite_name_gets_a_safe_default_directory(tmp_path, monkeypatch):
    name = "n" * 300
    suite = write_suite(tmp_path, BASELINE_ONLY.replace("name: quick", f"name: {name}"))
    monkeypatch.chdir(tmp_path)
    result = _cli("run", str(suite), "--in-process")
    assert result.exit_code == 0, result.output
    short = safe_dir_name(name)
    assert len(short) <= 100 and short.startswith("nnnn") and short != safe_dir_name("n" * 299)
    assert (tmp_path / "reports" / short / "results.jsonl").is_file()
    assert f"writing to reports/{short}" in result.stderr


# ------------------------------------------------------------------ symlinks


def test_atomic_write_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "out" / "report.md"
    link.parent.mkdir()
    link.symlink_to(victim)
    write_text_atomic(link, "report")
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and link.read_text() == "report"
    assert [p.name for p in link.parent.iterdir()] == ["report.md"]  # no temp file left


def test_results_and_manifest_are_never_written_through_symlinks(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "suite.json.tmp").symlink_to(victim)  # where the manifest used to be staged
    (out / "results.jsonl").symlink_to(victim)
    with pytest.raises(OutputError, match=r"results\.jsonl is a symbolic link"):
        run_plan(_plan(tmp_path, BASELINE_ONLY), out, registry=get_registry(), isolation="in-process",
                 echo=lambda m: None)
    assert victim.read_text() == "precious"
    (out / "results.jsonl").unlink()
    run_plan(_plan(tmp_path, BASELINE_ONLY), out, registry=get_registry(), isolation="in-process",
             echo=lambda m: None)
    assert victim.read_text() == "precious"
    assert json.loads((out / "suite.json").read_text())["suite_name"] == "quick"


def test_appending_never_follows_a_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.jsonl").symlink_to(victim)
    with pytest.raises(ResultsWriteError, match=r"cannot open .* it is a symbolic link"):
        ResultStore(tmp_path / "out").append(_result("x"))
    assert victim.read_text() == "precious\n"


def test_cli_run_refuses_a_symlinked_results_file_in_one_line(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").symlink_to(victim)
    result = paqbench("run", str(write_suite(tmp_path, BASELINE_ONLY)), "-o", str(out))
    assert result.returncode == 2
    assert result.stderr.startswith("Error: ") and "symbolic link" in result.stderr
    assert victim.read_text() == "precious\n"


def test_validate_checks_the_suites_output_directory(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    suite = write_suite(tmp_path, BASELINE_ONLY + f"output: {blocker / 'out'}\n")
    result = _cli("validate", str(suite))
    assert result.exit_code == 2
    expected = f"Error: {suite}: output directory {blocker / 'out'} is below {blocker}, which is a file"
    assert result.stderr.strip() == expected
    long_output = write_suite(tmp_path, BASELINE_ONLY + f"output: {tmp_path / ('x' * 300)}\n", name="long.yaml")
    result = _cli("validate", str(long_output))
    assert result.exit_code == 2 and "a name in it is longer than 255 bytes" in result.stderr
