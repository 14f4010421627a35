"""compressed-tensors export: packed codes that transformers decompresses bitwise."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from paqbench.export import capability_of
from paqbench.export.roundtrip import compare, transformers_engine
from paqbench.export.run import export_model
from paqbench.models.embedded import byte_tokenizer
from paqbench.quant.linear import QuantizedLinear
from tests.export_helpers import needs_compressed_tensors, tiny_quantized, window_ids

pytestmark = needs_compressed_tensors


def _decompressed(directory):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    model(torch.tensor([[1, 2, 3]]))  # compressed-tensors decompresses on the first forward
    return model


@pytest.mark.parametrize(("bits", "group_size"), [(4, 32), (8, -1), (4, 48)])
def test_transformers_decompresses_paqbench_weights_bitwise(tmp_path, bits, group_size):
    model = tiny_quantized(bits, group_size, True)
    outcome = export_model(model, byte_tokenizer(), ["compressed-tensors"], tmp_path)
    [record] = outcome.records
    assert record.status == "ok", record.reason
    loaded = _decompressed(tmp_path / "compressed-tensors")
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            assert torch.equal(loaded.get_submodule(name).weight.float(), module.dequantize()), name


def test_config_and_tensors_are_compressed_tensors_pack_quantized(tmp_path):
    export_model(tiny_quantized(4, 32, True), byte_tokenizer(), ["compressed-tensors"], tmp_path)
    folder = tmp_path / "compressed-tensors"
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    # down_proj reads 176 = 5 x 32 + 16 columns: re-cut to group 16, a config group of its own
    sizes = {g["weights"]["group_size"]: len(g["targets"]) for g in config["config_groups"].values()}
    assert sizes == {32: 12, 16: 2}
    assert all(g["weights"]["num_bits"] == 4 and g["weights"]["symmetric"] for g in config["config_groups"].values())
    tensors = load_file(str(folder / "model.safetensors"))
    assert tensors["model.layers.0.self_attn.q_proj.weight_packed"].dtype == torch.int32
    assert tensors["model.layers.0.self_attn.q_proj.weight_scale"].shape == (64, 2)


def test_short_last_group_is_exact_and_flagged_for_vllm(tmp_path):
    """64 columns at group 48 (a group of 48 and one of 16): written at group 16 with the
    scales repeated, values unchanged, and the layer named as not vLLM-compatible."""
    model = tiny_quantized(4, 48, True)
    [record] = export_model(model, byte_tokenizer(), ["compressed-tensors"], tmp_path).records
    assert any("q_proj" in note and "not vLLM-compatible" in note for note in record.notes)
    config = json.loads((tmp_path / "compressed-tensors" / "config.json").read_text())["quantization_config"]
    assert {g["weights"]["group_size"] for g in config["config_groups"].values()} == {16}


def test_act_order_and_asymmetric_are_converted_with_a_reason(tmp_path):
    model = tiny_quantized(4, 32, False)
    layer = model.model.layers[0].self_attn.q_proj
    asym = capability_of(layer, "compressed-tensors")
    assert asym.level == "converted" and "asymmetric" in asym.reason
    sym = tiny_quantized(4, 32, True).model.layers[0].self_attn.q_proj
    sym.g_idx = sym.g_idx[torch.randperm(sym.in_features, generator=torch.Generator().manual_seed(0))]
    permuted = capability_of(sym, "compressed-tensors")
    assert permuted.level == "converted" and "act-order" in permuted.reason


def test_transformers_computes_the_same_model(tmp_path):
    model = tiny_quantized(4, 32, True)
    ids = window_ids()
    export_model(model, byte_tokenizer(), ["compressed-tensors"], tmp_path)
    agreement = compare.compare(
        compare.model_logits(model, ids), transformers_engine.logits(tmp_path / "compressed-tensors", ids), ids
    )
    assert agreement.max_abs_logit < 1e-2  # only the float16 token table and head differ
    assert agreement.top1 >= 0.99 and agreement.ppl_rel < 1e-3 and agreement.passed
