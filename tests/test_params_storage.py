"""params and storage arithmetic on models whose answers are known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paqbench.measure.counting import count_parameters
from paqbench_plugins.metrics.params import ParamsMetric
from paqbench_plugins.metrics.storage import Storage


class TwoLayers(nn.Module):
    """A known tensor set: 6x4 + 4 (bias) + 3x6 weights, fp32."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3, bias=False)


def test_count_parameters_of_known_module():
    model = TwoLayers()
    with torch.no_grad():
        model.b.weight[0].zero_()
    total, nonzero, bits = count_parameters(model)
    assert total == 24 + 6 + 18
    assert nonzero == total - 6
    assert bits == total * 32


def test_tied_weights_count_once(tiny_llama):
    tiny_llama.lm_head.weight = tiny_llama.model.embed_tokens.weight
    total, _, _ = count_parameters(tiny_llama)
    assert total == sum(p.numel() for p in tiny_llama.parameters())  # parameters() dedupes
    assert total < sum(p.numel() for _, p in tiny_llama.named_parameters(remove_duplicate=False))


def test_params_metric_reports_per_module_sparsity(tiny_llama, make_context):
    up = tiny_llama.model.layers[1].mlp.up_proj.weight  # [176, 64]
    with torch.no_grad():
        up[:, :16].zero_()  # a quarter of the input columns
    values = {m.name: m for m in ParamsMetric().measure(tiny_llama, ParamsMetric.Params(), make_context())}
    per_module = values["linear_sparsity"].details["per_module"]
    assert per_module["model.layers.1.mlp.up_proj"]["sparsity"] == 0.25
    assert per_module["model.layers.0.mlp.up_proj"]["sparsity"] == 0.0
    assert per_module["model.layers.0.mlp.up_proj"]["format"] == "Linear"
    assert "kernel" not in per_module["model.layers.0.mlp.up_proj"]  # a dense layer has no path to choose
    assert values["bits_per_weight"].value == 32.0
    decoder_linears = {
        name for name, m in tiny_llama.named_modules() if isinstance(m, nn.Linear) and ".layers." in name
    }
    assert set(per_module) == decoder_linears and len(decoder_linears) == 14
    linear_total = sum(m.weight.numel() for n, m in tiny_llama.named_modules() if n in decoder_linears)
    assert values["linear_sparsity"].value == pytest.approx(176 * 16 / linear_total)


def test_storage_counts_the_saved_safetensors_bytes(tiny_llama, make_context):
    ctx = make_context()
    values = {m.name: m for m in Storage().measure(tiny_llama, Storage.Params(), ctx)}
    n_params = sum(p.numel() for p in tiny_llama.parameters())
    # safetensors = 8-byte header length + JSON header + raw tensor bytes
    raw = n_params * 4
    assert raw < values["checkpoint"].value < raw + 64 * 1024
    assert values["bits_per_weight"].value == pytest.approx(32, rel=0.02)
    half = {m.name: m for m in Storage().measure(tiny_llama, Storage.Params(dtype="float16"), ctx)}
    assert half["checkpoint"].value == pytest.approx(values["checkpoint"].value / 2, rel=0.05)
    assert not any(ctx.scratch_dir.iterdir())  # the checkpoint is cleaned up


def test_storage_dtype_leaves_fp8_weights_one_byte(tiny_llama, make_context):
    """dtype: float16 casts float weights, not FP8 codes (widening them doubles the bytes)."""
    from paqbench_plugins.methods.quant.fp8 import FP8

    ctx = make_context()

    def checkpoint() -> float:
        values = {m.name: m for m in Storage().measure(tiny_llama, Storage.Params(dtype="float16"), ctx)}
        return values["checkpoint"].value

    before = checkpoint()
    FP8().apply(tiny_llama, FP8.Params(activations="none"), ctx)
    layers = [m for m in tiny_llama.modules() if type(m).__name__ == "FP8Linear"]
    weights = sum(m.weight_fp8.numel() for m in layers)
    assert weights > 0
    saved = before - checkpoint()  # each FP8 weight saved as 1 byte instead of 2, less the scales' bytes
    assert 0.9 * weights < saved < weights  # widened to float16 it would save nothing (or cost)


@pytest.mark.realmodel
def test_storage_of_the_gguf_loaded_embedded_model(smollm2, tmp_path):
    """transformers keeps a GGUF quantizer on the dequantized model and would refuse to
    save it; the loader drops it, so storage measures the float checkpoint."""
    from paqbench.testing import make_run_context

    model, tokenizer = smollm2
    values = {m.name: m for m in Storage().measure(model, Storage.Params(), make_run_context(tokenizer, tmp_path))}
    total, _, _ = count_parameters(model)
    assert values["checkpoint"].value == pytest.approx(4 * total, rel=0.001)
    # cast copies must not untie the LM head from the embedding: stored once, 2 bytes each
    half = {m.name: m for m in Storage().measure(model, Storage.Params(dtype="float16"),
                                                  make_run_context(tokenizer, tmp_path))}
    assert half["checkpoint"].value == pytest.approx(2 * total, rel=0.001)


def test_macs_per_token_of_the_tiny_config(tiny_llama, make_context):
    """Tiny Llama: hidden 64, 4 heads (head_dim 16), 2 KV heads, MLP 176, vocab 260, 2 layers."""
    per_layer = 64 * 64 + 2 * (64 * 32) + 64 * 64 + 3 * (64 * 176)  # q, k+v (GQA), o, gate/up/down
    linear = 2 * per_layer + 64 * 260  # + LM head
    attention = 2 * 2 * 4 * 16 * (128 + 1) / 2  # QK^T and AV, mean causal context of 128 tokens
    values = {m.name: m for m in ParamsMetric().measure(tiny_llama, ParamsMetric.Params(seqlen=128), make_context())}
    assert values["macs_per_token"].value == linear + attention
    with torch.no_grad():
        tiny_llama.model.layers[0].mlp.down_proj.weight[:, :88].zero_()
    values = {m.name: m for m in ParamsMetric().measure(tiny_llama, ParamsMetric.Params(seqlen=128), make_context())}
    assert values["nonzero_macs_per_token"].value == linear + attention - 64 * 88
