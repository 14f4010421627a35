"""GGUF export: blocks from paqbench's codes, Q/K row order, the llama.cpp round trip."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from paqbench.export.gguf_file.blocks import q4_0, q4_1, q8_0
from paqbench.export.gguf_file.names import qk_row_order, tensor_name
from paqbench.export.gguf_file.writer import export_gguf
from paqbench.export.grid import grid_of
from paqbench.export.roundtrip import compare, llamacpp
from paqbench.export.run import export_model
from paqbench.models.embedded import byte_tokenizer
from paqbench.quant.linear import QuantizedLinear
from paqbench.quant.quantizer import QuantConfig
from tests.export_helpers import needs_llama_cpp, tiny_quantized, window_ids


def _layer(bits: int, symmetric: bool, group_size: int = 32, width: int = 128) -> QuantizedLinear:
    torch.manual_seed(0)
    linear = torch.nn.Linear(width, 24, bias=False)
    return QuantizedLinear.from_linear(linear, QuantConfig(bits, group_size, symmetric))


@pytest.mark.parametrize(("bits", "kind", "writer"), [(4, "Q4_0", q4_0), (8, "Q8_0", q8_0)])
@pytest.mark.parametrize("group_size", [32, 64, -1])
def test_symmetric_blocks_dequantize_bitwise_like_paqbench(bits, kind, writer, group_size):
    """gguf-py's own dequantizer reads back exactly paqbench's weights: codes copied."""
    layer = _layer(bits, True, group_size)
    raw = writer(grid_of(layer))
    back = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[kind])
    assert back.shape == (24, 128)
    assert np.array_equal(back, layer.dequantize().numpy())


def test_q4_0_nibble_order_is_ggml():
    """Byte j of a block holds element j (low nibble) and element j + 16 (high)."""
    layer = _layer(4, True)
    codes = layer.unpack_codes()
    raw = q4_0(grid_of(layer)).reshape(24, 4, 18)
    assert np.array_equal(raw[:, 0, 2:] & 0x0F, codes[:, :16].numpy())
    assert np.array_equal(raw[:, 0, 2:] >> 4, codes[:, 16:32].numpy())


def test_q4_1_adds_only_the_float16_rounding_of_the_minimum():
    layer = _layer(4, False)
    back = gguf.quants.dequantize(q4_1(grid_of(layer)), gguf.GGMLQuantizationType.Q4_1)
    ours = layer.dequantize().numpy()
    minimum = (layer.unpack_zeros().float() * layer.scales.float()).abs().max().item()
    assert np.abs(back - ours).max() <= minimum * 2.0**-11 * 1.01
    assert not np.array_equal(back, ours) or minimum == 0  # the rounding is real, not hidden


def test_qk_order_is_what_transformers_gguf_loader_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rows = np.arange(24 * 5).reshape(24, 5)
    for heads in (2, 3, 6):
        stored = rows[qk_row_order(24, heads).numpy()]
        assert not np.array_equal(stored, rows)
        restored = LlamaTensorProcessor(config={})._reverse_permute_weights(stored, heads, heads)
        assert np.array_equal(restored, rows)


def test_llama_tensor_names():
    assert tensor_name("model.layers.3.self_attn.q_proj.weight", 4) == "blk.3.attn_q.weight"
    assert tensor_name("model.embed_tokens.weight", 4) == "token_embd.weight"
    assert tensor_name("lm_head.weight", 4) == "output.weight"
    assert tensor_name("model.layers.0.mystery.weight", 4) is None


def test_written_file_holds_q4_0_where_blocks_fit(tmp_path):
    model = tiny_quantized()
    record = export_gguf(model, byte_tokenizer(), tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["blk.1.ffn_up.weight"] == "Q4_0"
    # down_proj reads 176 columns: its last group of 16 is no whole Q4_0 block
    assert types["blk.0.ffn_down.weight"] == "F16"
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert record.levels() == {"exact": 12, "converted": 4}  # + 2 down_proj, table and head in F16
    # the stored Q rows, un-permuted, are paqbench's codes
    q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    values = gguf.quants.dequantize(np.asarray(q.data), gguf.GGMLQuantizationType.Q4_0)
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    restored = LlamaTensorProcessor(config={})._reverse_permute_weights(values, 4, 4)
    assert np.array_equal(restored, model.model.layers[0].self_attn.q_proj.dequantize().numpy())


@needs_llama_cpp
def test_llama_cpp_computes_the_same_model(tmp_path):
    model = tiny_quantized()
    ids = window_ids()
    export_gguf(model, byte_tokenizer(), tmp_path / "m.gguf")
    agreement = compare.compare(compare.model_logits(model, ids), llamacpp.logits(tmp_path / "m.gguf", ids, 2), ids)
    # llama.cpp rounds activations to Q8_0 for Q4_0 matmuls: small logit differences, same model
    assert agreement.max_abs_logit < 0.05
    assert agreement.ppl_rel < 0.005
    assert agreement.top1 >= 0.95  # random weights: near-uniform logits, ties can flip


@needs_llama_cpp
def test_greedy_timing_matches_torch_greedy(tmp_path):
    from paqbench.export.timing import time_greedy

    model = tiny_quantized()
    export_gguf(model, byte_tokenizer(), tmp_path / "m.gguf")
    prompt = window_ids(1, 16)[0]
    timing = time_greedy(tmp_path / "m.gguf", prompt.tolist(), 6, n_threads=1)
    ids, expected = prompt[None], []
    with torch.no_grad():
        for _ in range(6):
            token = int(model(ids).logits[0, -1].argmax())
            expected.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert timing.tokens == expected
    assert len(timing.token_s) == 5 and all(t > 0 for t in timing.token_s) and timing.ttft_s > 0
    assert timing.n_threads == 1 and timing.quant_type == "MOSTLY_Q4_0" and timing.llama_cpp_version


def test_non_llama_architecture_is_unavailable_not_a_crash(tmp_path):
    model = tiny_quantized()
    model.config.model_type = "gpt_neox"
    outcome = export_model(model, byte_tokenizer(), ["gguf"], tmp_path)
    [record] = outcome.records
    assert record.status == "unavailable" and "Llama-architecture" in record.reason
    [bytes_] = [m for m in outcome.measurements if m.name == "gguf/bytes"]
    assert bytes_.value is None and "Llama-architecture" in bytes_.unavailable


def test_missing_llama_cpp_gives_the_install_command(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    outcome = export_model(tiny_quantized(), byte_tokenizer(), ["gguf"], tmp_path, ids=window_ids(1, 32))
    [check] = [m for m in outcome.measurements if m.name == "gguf/check"]
    assert check.value is None and "pip install 'llama-cpp-python>=0.3'" in check.unavailable
    assert (tmp_path / "gguf" / "model.gguf").is_file()


def test_unwritable_output_and_unknown_target(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    outcome = export_model(tiny_quantized(), byte_tokenizer(), ["gguf", "onnx"], blocker)
    assert [r.status for r in outcome.records] == ["unavailable", "unavailable"]
    assert "not writable" in outcome.records[0].reason and "unknown export target" in outcome.records[1].reason


def test_rope_scaling_is_unavailable_not_written_wrong(tmp_path):
    model = tiny_quantized()
    model.config.rope_parameters = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}
    [record] = export_model(model, byte_tokenizer(), ["gguf"], tmp_path).records
    assert record.status == "unavailable" and "llama3" in record.reason
