"""FP8 (E4M3) layers as compressed-tensors ``float-quantized``: paqbench's bytes and
scales copied, dynamic activations as the input scheme, reloaded by transformers and
computing the same model; GGUF (no FP8 type) converts to F16."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from paqbench.export import capability_of
from paqbench.export.roundtrip.compare import Tolerance
from paqbench.export.run import export_model
from paqbench.models.embedded import byte_tokenizer, tiny_random_llama
from paqbench.quant.fp8 import FP8Linear
from paqbench.quant.linear import QuantizedLinear, replace_module
from paqbench.quant.quantizer import QuantConfig
from tests.export_helpers import decoder_linears, needs_compressed_tensors, window_ids

pytestmark = needs_compressed_tensors


def _fp8_model(activations: str, per_channel: bool):
    model = tiny_random_llama(seed=0)
    for name, linear in decoder_linears(model):
        replace_module(model, name, FP8Linear.from_linear(linear, activations=activations, per_channel=per_channel))
    return model


@pytest.mark.parametrize(("activations", "per_channel"), [("none", True), ("per-token", True), ("per-tensor", False)])
def test_fp8_layers_round_trip_as_float_quantized(tmp_path, activations, per_channel):
    model = _fp8_model(activations, per_channel)
    name, layer = next((n, m) for n, m in model.named_modules() if isinstance(m, FP8Linear))
    assert capability_of(layer, "compressed-tensors").level == "exact"
    # random weights give near-uniform logits, where float16 rounding flips some ties
    outcome = export_model(model, byte_tokenizer(), ["compressed-tensors"], tmp_path, ids=window_ids(2, 32),
                           tolerance=Tolerance(ppl_rel=0.001, top1=0.85))
    [record] = outcome.records
    assert record.status == "ok" and record.levels()["exact"] == 14, record.reason
    folder = tmp_path / "compressed-tensors"
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["format"] == "float-quantized"
    [group] = config["config_groups"].values()
    assert group["weights"]["type"] == "float" and group["weights"]["strategy"] == (
        "channel" if per_channel else "tensor")
    if activations == "none":
        assert group["input_activations"] is None
    else:
        assert group["input_activations"]["dynamic"] is True
        assert group["input_activations"]["strategy"] == {"per-token": "token", "per-tensor": "tensor"}[activations]
    with safe_open(str(folder / "model.safetensors"), "pt") as stored:
        assert stored.get_tensor(f"{name}.weight").dtype == torch.float8_e4m3fn
        assert torch.equal(stored.get_tensor(f"{name}.weight").view(torch.uint8), layer.weight_fp8.view(torch.uint8))
        assert torch.equal(stored.get_tensor(f"{name}.weight_scale").flatten(), layer.weight_scale.float().flatten())
    agreement = record.extra["agreement"]
    # the checkpoint runs in float16 in transformers; paqbench's reference in float32
    assert agreement["passed"] and agreement["mean_kl"] < 1e-4 and agreement["top1_decisive"] == 1.0, agreement


def test_fp8_and_int4_layers_in_one_checkpoint_are_mixed_precision(tmp_path):
    model = tiny_random_llama(seed=0)
    for index, (name, linear) in enumerate(decoder_linears(model)):
        layer = (FP8Linear.from_linear(linear) if index % 2 else
                 QuantizedLinear.from_linear(linear, QuantConfig(4, 32, True)))
        replace_module(model, name, layer)
    outcome = export_model(model, byte_tokenizer(), ["compressed-tensors"], tmp_path, ids=window_ids(2, 32),
                           tolerance=Tolerance(ppl_rel=0.001, top1=0.85))
    [record] = outcome.records
    assert record.status == "ok", record.reason
    config = json.loads((tmp_path / "compressed-tensors" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "mixed-precision"
    assert {g["format"] for g in config["config_groups"].values()} == {"float-quantized", "pack-quantized"}
    assert record.extra["agreement"]["passed"], record.extra["agreement"]


def test_fp8_to_gguf_is_converted_to_f16_with_the_reason():
    layer = next(m for m in _fp8_model("per-token", True).modules() if isinstance(m, FP8Linear))
    cell = capability_of(layer, "gguf")
    assert cell.level == "converted" and cell.how == "F16" and "no FP8 tensor type" in cell.reason
