"""End to end: shipped suites validate; the quickstart runs the real model through the
CLI and writes a report with real numbers."""

from __future__ import annotations

import json

import pytest

from tests.helpers import ROOT, paqbench

#: Shared blocks under suites/include/ are parts of suites, not suites (`include:`).
SUITES = sorted(p for p in (ROOT / "suites").rglob("*.yaml") if "include" not in p.relative_to(ROOT / "suites").parts)


@pytest.mark.parametrize("suite", SUITES, ids=[str(s.relative_to(ROOT / "suites").with_suffix("")) for s in SUITES])
def test_every_shipped_suite_validates(suite):
    # The shipped studies may download their data; offline, validate would rightly refuse them.
    result = paqbench("validate", "-q", str(suite), env={"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"})
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
    assert list(runs) == ["baseline", "magnitude", "wanda", "rtn4"]
    base, magnitude, wanda, rtn4 = (runs[name] for name in runs)
    assert 134_000_000 < base["params/total"] < 135_000_000
    assert 5 < base["perplexity/embedded"] < 100
    # Wanda keeps far more quality than magnitude at the same sparsity (the quickstart's point)
    assert base["perplexity/embedded"] < wanda["perplexity/embedded"] < magnitude["perplexity/embedded"]
    for pruned in (magnitude, wanda):
        assert pruned["params/linear_sparsity"] == pytest.approx(0.5, abs=1e-4)
        assert pruned["storage/checkpoint"] == base["storage/checkpoint"]  # zeros do not shrink a dense file
    # bf16 checkpoint: 2 bytes per weight, embeddings tied; 4-bit g32 codes about a quarter of that
    assert base["storage/checkpoint"] == pytest.approx(2 * base["params/total"], rel=0.01)
    assert rtn4["storage/checkpoint"] < 0.35 * base["storage/checkpoint"]
    assert base["latency/decode_tokens_per_s"] > 0 and base["latency/ttft"] > 0
    assert rtn4["latency/decode_speedup"] > 0
    md = (out / "report.md").read_text()
    assert md.index("| baseline") < md.index("| magnitude") < md.index("| wanda") < md.index("| rtn4")
    assert "perplexity" in md
