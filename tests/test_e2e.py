"""End to end: shipped suites validate; the quickstart runs the real model through the
CLI and writes a report with real numbers."""

from __future__ import annotations

import json

import pytest

from tests.helpers import ROOT, paqbench

SUITES = sorted((ROOT / "suites").rglob("*.yaml"))


@pytest.mark.parametrize("suite", SUITES, ids=[str(s.relative_to(ROOT / "suites").with_suffix("")) for s in SUITES])
def test_every_shipped_suite_validates(suite):
    result = paqbench("validate", "-q", str(suite))
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
@pytest.mark.realmodel
def test_quickstart_on_the_embedded_model(tmp_path):
    out = tmp_path / "quickstart"
    result = paqbench("run", "suites/quickstart.yaml", "-o", str(out), timeout=1800)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    runs = {r["name"]: {f"{m['metric']}/{m['name']}": m["value"] for m in r["measurements"]}
            for r in report["runs"]}
    assert list(runs) == ["baseline", "magnitude[sparsity=0.1]", "magnitude[sparsity=0.3]",
                          "magnitude[sparsity=0.5]"]
    base = runs["baseline"]
    assert 134_000_000 < base["params/total"] < 135_000_000
    assert 5 < base["perplexity/embedded"] < 100
    ppl = [runs[f"magnitude[sparsity={s}]"]["perplexity/embedded"] for s in ("0.1", "0.3", "0.5")]
    assert base["perplexity/embedded"] < ppl[1] < ppl[2]  # more pruning, more damage
    for s in (0.1, 0.3, 0.5):
        assert runs[f"magnitude[sparsity={s}]"]["params/linear_sparsity"] == pytest.approx(s, abs=1e-4)
    # fp32 checkpoint: 4 bytes per weight, embeddings tied
    assert base["storage/checkpoint"] == pytest.approx(4 * base["params/total"], rel=0.01)
    assert 0 <= base["race/high/acc"] <= 1
    assert base["latency/decode_tokens_per_s"] > 0 and base["latency/ttft"] > 0
    assert base["memory/peak_rss"] > base["memory/weights"] > 500_000_000
    md = (out / "report.md").read_text()
    assert md.index("| baseline") < md.index("| magnitude[sparsity=0.1]")
    assert "perplexity embedded" in md
