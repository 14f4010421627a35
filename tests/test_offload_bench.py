"""benchmarks/offload.py: its run order, its refusal of a missing peer, and the llm-compressor
peer at a tiny shape (that one only where llmcompressor is installed: tox -e peer-llmcompressor
-- tests/test_offload_bench.py, or .tox/bench-peers)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "offload.py"
TINY = ["--layers", "2", "--hidden", "128", "--intermediate", "256", "--heads", "4", "--kv-heads", "2",
        "--vocab", "300", "--windows", "2", "--seqlen", "32"]
HAS_LLMCOMPRESSOR = importlib.util.find_spec("llmcompressor") is not None


def _script():
    spec = importlib.util.spec_from_file_location("offload_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_rows_alternate_between_paqbench_and_the_peers():
    order = _script().run_order
    assert order(["loaded", "disk"], ["llmcompressor", "llmcompressor-offload"], 2) == [
        "loaded", "llmcompressor", "disk", "llmcompressor-offload"] * 2
    assert order(["loaded", "disk"], ["llmcompressor"], 1) == ["loaded", "llmcompressor", "disk"]
    assert order(["disk"], [], 3) == ["disk"] * 3


@pytest.mark.skipif(HAS_LLMCOMPRESSOR, reason="llmcompressor is installed here")
def test_a_missing_peer_is_one_line_with_the_install_command(tmp_path):
    out = _run("--peer", "llmcompressor", "--json", str(tmp_path / "o.json"), *TINY, timeout=600)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install llmcompressor" in lines[0] and "tox -e bench-peers" in lines[0]
    assert not (tmp_path / "o.json").exists()


def test_unknown_peer_and_mode_are_one_line(tmp_path):
    for args, field in ((["--peer", "nope"], "--peer"), (["--modes", "loaded,nope"], "--modes")):
        out = _run(*args, "--json", str(tmp_path / "o.json"), timeout=600)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert out.stderr.strip().startswith(field) and "'nope'" in out.stderr


@pytest.mark.skipif(not HAS_LLMCOMPRESSOR, reason="needs llmcompressor (tox -e peer-llmcompressor)")
def test_llmcompressor_peers_quantize_the_same_model_at_a_tiny_shape(tmp_path):
    report = tmp_path / "offload.json"
    out = _run(*TINY, "--modes", "loaded", "--peer", "llmcompressor", "--peer", "llmcompressor-offload",
               "--json", str(report))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {row["mode"]: row for row in json.loads(report.read_text())["rows"]}
    assert list(rows) == ["loaded", "llmcompressor", "llmcompressor-offload"]
    for row in rows.values():
        # 2 blocks x 7 Linears; the peer children raise unless every one is on its W4 grid
        assert row["layers"] == 14 and row["peak_rss_bytes"] > 0 and row["gptq_s"] > 0
    assert rows["llmcompressor"]["modules_on_disk"] == 0
    assert rows["llmcompressor-offload"]["modules_on_disk"] > 0
