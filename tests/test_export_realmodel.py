"""Acceptance on the embedded SmolLM2-135M: RTN and GPTQ W4 g32 symmetric exported to
compressed-tensors (reloaded by transformers) and GGUF (reloaded by llama.cpp) compute
the same model, on 2 windows x 256 tokens of the embedded test text: transformers'
perplexity within 0.5% of paqbench's in-memory value and the same top-1 token at >= 99%
of positions. llama.cpp rounds the activations of its quantized matmuls to 8 bits, which
moves even its own Q4_0 file's perplexity by 0.65% (docs/export.md): within 1%, the same
top-1 at >= 99% of the decisive positions (paqbench's top-1 ahead by >= 0.5 logit) and
>= 95% of all (see TOLERANCES)."""

from __future__ import annotations

import copy
import importlib.util

import pytest

from paqbench.export.phase import check_ids, source_gguf
from paqbench.export.run import TOLERANCES, export_model
from paqbench.registry import get_registry
from tests.export_helpers import needs_compressed_tensors

pytestmark = [pytest.mark.realmodel, needs_compressed_tensors]
CHECK = {"dataset": "embedded", "split": "test", "seqlen": 256, "windows": 2}


def _compress(model, method: str, ctx):
    cls = get_registry().method(method)
    params = {"bits": 4, "group_size": 32, "symmetric": True}
    cls().apply(model, cls.Params.model_validate(params), ctx)
    return model


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_smollm2_w4_g32_round_trips_in_both_engines(smollm2, make_context, tmp_path, method):
    base, tokenizer = smollm2
    # Few calibration windows: the test checks the export's fidelity, not GPTQ's quality.
    ctx = make_context(tokenizer=tokenizer, n_samples=4, seqlen=128)
    model = _compress(copy.deepcopy(base), method, ctx)
    targets = ["compressed-tensors"]
    if importlib.util.find_spec("llama_cpp") is not None:
        targets.append("gguf")
    outcome = export_model(model, tokenizer, targets, tmp_path, ids=check_ids(ctx, CHECK),
                           source_gguf=source_gguf("smollm2-135m", None))
    values = {m.name: m.value for m in outcome.measurements}
    print(method, {k: v for k, v in values.items()})  # the numbers docs/export.md quotes (pytest -s)
    for record in outcome.records:
        assert record.status == "ok", record.reason
        assert record.levels().get("exact", 0) == 210  # 30 blocks x 7 Linears, codes copied
        agreement = record.extra["agreement"]
        assert agreement["ppl_rel"] <= TOLERANCES[record.target].ppl_rel, agreement
        assert agreement["top1"] >= TOLERANCES[record.target].top1, agreement
        assert agreement["top1_decisive"] >= 0.99, agreement
        assert values[f"{record.target}/check"] == 1.0
    if "gguf" not in targets:
        pytest.skip("llama-cpp-python is not installed: only the compressed-tensors half ran (CI installs it)")


def test_smollm2_dense_gguf_agrees_to_float16_rounding(smollm2, make_context, tmp_path):
    """Dense weights written F16 (no quantized matmul in llama.cpp): names, Q/K order and
    hyper-parameters are right to float16 rounding. The source Q4_1 file in llama.cpp
    against its own dequantized weights is the engine's floor for quantized types."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed; CI installs it")
    from paqbench.export.roundtrip import compare, llamacpp

    model, tokenizer = smollm2
    ctx = make_context(tokenizer=tokenizer)
    ids = check_ids(ctx, CHECK)
    gguf_file = source_gguf("smollm2-135m", None)
    outcome = export_model(model, tokenizer, ["gguf"], tmp_path, ids=ids, source_gguf=gguf_file)
    [record] = outcome.records
    agreement = record.extra["agreement"]
    floor = compare.compare(compare.model_logits(model, ids), llamacpp.logits(gguf_file, ids), ids)
    print("dense F16", agreement, "source Q4_1 file", floor.to_dict())  # docs/export.md (pytest -s)
    assert agreement["top1"] >= 0.99 and agreement["ppl_rel"] <= 0.001, agreement
    assert agreement["mean_kl"] < floor.mean_kl  # F16 is far closer than the engine's own Q4_1 path
