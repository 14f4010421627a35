"""The export phase in a suite: artifacts under the run's folder, measurements in the
record, a target that cannot be written reported without stopping the metrics."""

from __future__ import annotations

import json

from tests.export_helpers import needs_compressed_tensors
from tests.helpers import paqbench, write_suite

SUITE = """
name: tiny-export
model: tiny-random-llama
calibration: {dataset: embedded, n_samples: 2, seqlen: 64}
export: [compressed-tensors, gguf]
export_check: {seqlen: 64, windows: 2}
metrics:
  - perplexity: {dataset: embedded, seqlen: 64, max_windows: 2}
pipelines:
  - name: rtn
    steps:
      - rtn: {bits: 4, group_size: 32, symmetric: true}
  - name: dense-only
    export: [gguf]
    steps:
      - magnitude: {sparsity: 0.25}
"""


def _runs(output):
    lines = (output / "results.jsonl").read_text().splitlines()
    return {run["name"]: run for run in map(json.loads, lines)}


@needs_compressed_tensors
def test_suite_exports_every_run_and_still_measures(tmp_path):
    suite = write_suite(tmp_path, SUITE)
    out = tmp_path / "out"
    done = paqbench("run", str(suite), "-o", str(out), "--in-process")
    assert done.returncode == 0, done.stdout + done.stderr
    runs = _runs(out)
    rtn = {m["metric"] + "/" + m["name"]: m for m in runs["rtn"]["measurements"]}
    assert rtn["export/compressed-tensors/check"]["value"] == 1.0
    assert rtn["export/compressed-tensors/bytes"]["value"] > 0
    assert "perplexity/embedded" in rtn  # the metrics ran after the export
    assert (out / "runs" / "rtn" / "export" / "compressed-tensors" / "config.json").is_file()
    assert (out / "runs" / "rtn" / "export" / "gguf" / "model.gguf").is_file()
    dense = {m["metric"] + "/" + m["name"] for m in runs["dense-only"]["measurements"]}
    assert "export/gguf/bytes" in dense and not any("compressed-tensors" in key for key in dense)
    phase = next(p for p in runs["rtn"]["metrics"] if p["name"] == "export")
    levels = {r["target"]: r["levels"] for r in phase["info"]["records"]}
    assert levels["compressed-tensors"]["exact"] == 14  # the 7 Linears of two blocks (down_proj re-cut to g16)
    assert levels["gguf"]["exact"] == 12  # down_proj (176 columns) has no whole Q4_0 blocks: F16


def test_unknown_target_is_a_suite_error(tmp_path):
    suite = write_suite(tmp_path, SUITE.replace("[compressed-tensors, gguf]", "[onnx]"))
    done = paqbench("run", str(suite), "-o", str(tmp_path / "out"), "--dry-run")
    assert done.returncode != 0 and "onnx" in done.stdout + done.stderr


def test_check_data_that_cannot_load_still_exports_and_says_why(make_context, tmp_path, monkeypatch):
    """A hub outage for the check windows must not cost the artifact: the files are
    written (so the engine backends can time them) and only the check is unavailable."""
    from paqbench.export.phase import export_phase
    from tests.export_helpers import tiny_quantized

    ctx = make_context()

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub")

    monkeypatch.setattr(ctx, "dataset", offline)
    outcome = export_phase(tiny_quantized(), ctx, ["gguf"], {"dataset": "wikitext2", "split": "test",
                                                             "seqlen": 32, "windows": 2, "enabled": True},
                           tmp_path, "rtn", "tiny-random-llama")
    [record] = outcome.records
    assert record.status == "ok" and (tmp_path / "runs" / "rtn" / "export" / "gguf" / "model.gguf").is_file()
    assert ctx.exports["gguf"] is record
    check = next(m for m in outcome.measurements if m.name == "gguf/check")
    assert check.value is None and "check windows could not be read" in check.unavailable
    assert "Couldn't reach" in check.unavailable
