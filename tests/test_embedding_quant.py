"""embed-rtn: the token table as packed codes, a tied LM head reading the same codes,
real checkpoint bytes, and a save/load round trip."""

from __future__ import annotations

import copy
import json
import math
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from paqbench.layers import UnsupportedLayerError
from paqbench.measure.counting import count_parameters, linear_macs
from paqbench.models.embedded import tiny_random_llama
from paqbench.quant import embedding as embedding_module
from paqbench.quant import load_quantized
from paqbench.quant.embedding import QuantizedEmbedding, TiedQuantizedHead
from paqbench.quant.linear import QuantizedLinear
from paqbench.quant.packing import packed_length
from paqbench.quant.quantizer import QuantConfig, quantize_rtn
from paqbench.registry import get_registry
from paqbench_plugins.methods.quant.embedding import EmbedRTN
from tests.helpers import needs_int4

VOCAB, DIM = 260, 64


pytestmark = pytest.mark.usefixtures("one_thread")


def llama(tied: bool) -> torch.nn.Module:
    model = tiny_random_llama(seed=0, tie_word_embeddings=tied)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    return model


def quantized(tied: bool, make_context, **params) -> tuple[torch.nn.Module, torch.Tensor, dict]:
    """(model after embed-rtn, the original float table, the method's info)."""
    model = llama(tied)
    table = model.model.embed_tokens.weight.detach().clone()
    info = EmbedRTN().apply(model, EmbedRTN.Params(**params), make_context())
    return model, table, info


def ids_batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, VOCAB, (3, 17), generator=generator)


def safetensors_data_bytes(directory: Path) -> int:
    """Bytes of tensor data in a save_pretrained directory (file size minus the JSON header)."""
    total = 0
    for file in directory.glob("*.safetensors"):
        with file.open("rb") as handle:
            (header,) = struct.unpack("<Q", handle.read(8))
        total += file.stat().st_size - 8 - header
    return total


def safetensors_keys(directory: Path) -> set[str]:
    keys: set[str] = set()
    for file in directory.glob("*.safetensors"):
        with file.open("rb") as handle:
            (header,) = struct.unpack("<Q", handle.read(8))
            keys |= set(json.loads(handle.read(header))) - {"__metadata__"}
    return keys


def expected_table_bytes(rows: int, dim: int, bits: int, group_size: int, meta_ints: int) -> int:
    groups = math.ceil(dim / group_size)
    return (
        rows * packed_length(dim, bits)  # codes
        + rows * packed_length(groups, bits)  # zero points
        + rows * groups * 2  # float16 scales
        + dim * 4  # int32 g_idx
        + meta_ints * 4  # int32 metadata row
    )


def test_embed_rtn_is_registered_as_a_quantize_method():
    assert get_registry().method("embed-rtn") is EmbedRTN
    assert EmbedRTN.family == "quantize" and not EmbedRTN.needs_calibration
    defaults = EmbedRTN.Params()
    assert (defaults.bits, defaults.group_size, defaults.symmetric, defaults.head) == (4, 128, False, True)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_table_codes_round_trip_and_lie_within_half_a_step(make_context, bits, symmetric):
    model, table, info = quantized(True, make_context, bits=bits, group_size=48, symmetric=symmetric)
    embed = model.model.embed_tokens
    assert isinstance(embed, QuantizedEmbedding) and info["tied_head"]
    assert embed.n_groups == 2  # 64 columns in groups of 48: one of 48 and a shorter one of 16
    reference = quantize_rtn(table, QuantConfig(bits, 48, symmetric))
    assert torch.equal(embed.unpack_codes(), reference.codes)
    assert torch.equal(embed.unpack_zeros(), reference.zeros)
    assert torch.equal(embed.scales, reference.scales)
    step = embed.scales.float().abs().index_select(1, embed.g_idx.long())
    # symmetric: llama.cpp's Q4_0 rule clips the short side by up to one step (quantizer.py)
    bound = 2 * (1 + (1 << (bits - 1)) * 2.0**-11) if symmetric else 1 + 1e-4
    assert float(((table - embed.dequantize()).abs() / (step / 2)).max()) <= bound
    padding = embed.padding_idx
    assert padding is not None and bool((table[padding] == 0).all())
    assert bool((embed.dequantize()[padding] == 0).all())  # exact zeros stay exactly zero


@pytest.mark.parametrize("tied", [True, False])
def test_forward_is_exactly_dequantize_then_embedding_and_gathers_only_the_rows(make_context, monkeypatch, tied):
    model, _, _ = quantized(tied, make_context)
    embed = model.model.embed_tokens
    ids = ids_batch()
    reference = F.embedding(ids, embed.dequantize().to(torch.float32))
    unpacked_rows: list[int] = []
    real_unpack = embedding_module.unpack

    def counting_unpack(packed, bits, n):
        unpacked_rows.append(packed.shape[0])
        return real_unpack(packed, bits, n)

    monkeypatch.setattr(embedding_module, "unpack", counting_unpack)
    out = embed(ids)
    assert out.shape == (3, 17, DIM) and out.dtype == torch.float32
    assert torch.equal(out, reference)
    assert unpacked_rows and max(unpacked_rows) == ids.numel() < VOCAB  # never the whole table


def test_tied_head_logits_are_exactly_the_linear_of_the_dequantized_table(make_context):
    model, _, _ = quantized(True, make_context)
    head, embed = model.lm_head, model.model.embed_tokens
    assert isinstance(head, TiedQuantizedHead) and head.embedding is embed
    assert not list(head.parameters()) and not list(head.buffers())  # it holds no tensor
    assert not any(key.startswith("lm_head") for key in model.state_dict())
    ids = ids_batch()
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state
        logits = model(ids).logits
    table = embed.dequantize()
    assert torch.equal(logits, F.linear(hidden, table))
    # chunked over the vocabulary: each chunk is exactly the linear of its rows
    head.chunk_rows = 100
    with torch.no_grad():
        chunked = head(hidden)
    for start in range(0, VOCAB, 100):
        stop = min(start + 100, VOCAB)
        assert torch.equal(chunked[..., start:stop], F.linear(hidden, table[start:stop]))


def table_head(vocab: int, dim: int, bits: int, group_size: int, symmetric: bool = False) -> TiedQuantizedHead:
    generator = torch.Generator().manual_seed(1)
    embedding = torch.nn.Embedding(vocab, dim)
    embedding.weight.data = torch.randn(vocab, dim, generator=generator)
    table = QuantizedEmbedding.from_embedding(embedding, QuantConfig(bits, group_size, symmetric), tied=True)
    return TiedQuantizedHead(table)


@needs_int4
def test_tied_head_multiplies_by_the_4bit_codes_for_bfloat16_activations():
    """The head is the largest matmul of a small model: with bfloat16 activations it runs
    the int4 kernel on the table's codes (576 = 4 x 128 + 64 columns, as in SmolLM2), as
    close to exact arithmetic on the dequantized table as bfloat16 dequantize-then-matmul;
    float32 activations keep the reference path."""
    head = table_head(vocab=320, dim=576, bits=4, group_size=128)
    hidden = torch.randn(2, 3, 576, generator=torch.Generator().manual_seed(2))
    table = head.embedding.dequantize()
    exact = F.linear(hidden, table)
    assert torch.equal(head(hidden), exact) and head.kernel == "reference"
    fast = head(hidden.to(torch.bfloat16))
    assert head.kernel == "int4-cpu" and fast.dtype == torch.bfloat16 and fast.shape == (2, 3, 320)
    reference = F.linear(hidden.to(torch.bfloat16), table.to(torch.bfloat16)).float()
    error = float((fast.float() - exact).norm() / exact.norm())
    reference_error = float((reference - exact).norm() / exact.norm())
    assert error <= max(2 * reference_error, 0.02)


@needs_int4
def test_tied_head_rebuilds_its_kernel_when_the_table_changes():
    head = table_head(vocab=64, dim=128, bits=4, group_size=64)
    hidden = torch.randn(4, 128, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    before = head(hidden)
    assert head.kernel == "int4-cpu"
    with torch.no_grad():
        head.embedding.qweight[:32].zero_()  # an in-place edit: rows 0-31 now decode to other values
    after = head(hidden)
    assert not torch.equal(before[:, :32], after[:, :32])
    expected = F.linear(hidden.float(), head.embedding.dequantize())
    assert float((after.float() - expected).norm() / expected.norm()) < 0.02


def test_tied_head_without_a_kernel_layout_stays_on_the_reference_path():
    """Tokens rows not a multiple of 16, or 3-bit codes: no int4 kernel; exact reference."""
    for head in (table_head(vocab=70, dim=128, bits=4, group_size=64), table_head(64, 128, 3, 64)):
        hidden = torch.randn(2, 128).to(torch.bfloat16)
        out = head(hidden)
        assert head.kernel == "reference"
        assert torch.equal(out, F.linear(hidden, head.embedding.dequantize().to(torch.bfloat16)))


def test_untied_head_becomes_a_quantized_linear_on_the_same_grid(make_context):
    model = llama(False)
    head_weight = model.lm_head.weight.detach().clone()
    info = EmbedRTN().apply(model, EmbedRTN.Params(bits=3, group_size=32), make_context())
    assert isinstance(model.lm_head, QuantizedLinear) and model.lm_head.bits == 3
    assert torch.equal(model.lm_head.unpack_codes(), quantize_rtn(head_weight, QuantConfig(3, 32)).codes)
    assert info["head"] == "lm_head (QuantizedLinear)" and not info["tied_head"]
    kept = llama(False)
    EmbedRTN().apply(kept, EmbedRTN.Params(head=False), make_context())
    assert type(kept.lm_head) is torch.nn.Linear and isinstance(kept.model.embed_tokens, QuantizedEmbedding)


@pytest.mark.parametrize("tied", [True, False])
def test_save_then_load_quantized_gives_identical_logits(make_context, tmp_path, tied):
    model, _, _ = quantized(tied, make_context)
    ids = ids_batch()
    with torch.no_grad():
        before = model(ids).logits
    model.save_pretrained(tmp_path / "checkpoint", safe_serialization=True)
    keys = safetensors_keys(tmp_path / "checkpoint")
    assert "model.embed_tokens.qweight" in keys and "model.embed_tokens.weight" not in keys
    assert "lm_head.weight" not in keys
    assert ("lm_head.qweight" in keys) == (not tied)
    fresh = tiny_random_llama(seed=1, tie_word_embeddings=tied)  # other weights: all must come from the file
    load_quantized(fresh, tmp_path / "checkpoint")
    assert isinstance(fresh.model.embed_tokens, QuantizedEmbedding)
    assert isinstance(fresh.lm_head, TiedQuantizedHead if tied else QuantizedLinear)
    if tied:
        assert fresh.lm_head.embedding is fresh.model.embed_tokens
    assert fresh.model.embed_tokens.tied == tied and fresh.model.embed_tokens.padding_idx == 258
    with torch.no_grad():
        after = fresh(ids).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize("tied", [True, False])
def test_checkpoint_shrinks_by_exactly_the_table_bytes(make_context, tmp_path, tied):
    dense = llama(tied)
    dense.save_pretrained(tmp_path / "dense", safe_serialization=True)
    model, _, _ = quantized(tied, make_context)
    model.save_pretrained(tmp_path / "quant", safe_serialization=True)
    table = expected_table_bytes(VOCAB, DIM, 4, 128, meta_ints=7)
    assert model.model.embed_tokens.paqbench_storage_bits() == table * 8
    saved_dense = VOCAB * DIM * 4  # the float32 table, stored once when tied
    saved_quant = table
    if not tied:  # the head: a float32 table, then a QuantizedLinear (5-int qmeta)
        saved_dense += VOCAB * DIM * 4
        saved_quant += expected_table_bytes(VOCAB, DIM, 4, 128, meta_ints=5)
    dense_bytes = safetensors_data_bytes(tmp_path / "dense")
    quant_bytes = safetensors_data_bytes(tmp_path / "quant")
    assert dense_bytes - quant_bytes == saved_dense - saved_quant


@pytest.mark.parametrize("tied", [True, False])
def test_params_count_the_table_once_and_macs_do_not_change(make_context, tied):
    dense = llama(tied)
    total, nonzero, bits = count_parameters(dense)
    macs = linear_macs(dense)
    model, _, _ = quantized(tied, make_context)
    q_total, q_nonzero, q_bits = count_parameters(model)
    assert q_total == total  # the tied table counts once, before and after
    table_bits = model.model.embed_tokens.paqbench_storage_bits()
    saved = VOCAB * DIM * 32 - table_bits
    if not tied:
        saved += VOCAB * DIM * 32 - model.lm_head.paqbench_storage_bits()
    assert q_bits == bits - saved
    assert linear_macs(model)[0] == macs[0]  # the head's matmul, never the embedding gather
    # nonzero: the table's float entries are replaced by those whose code is not the zero point
    lost = int(torch.count_nonzero(dense.model.embed_tokens.weight)) - model.model.embed_tokens.paqbench_nonzero()
    if not tied:
        lost += int(torch.count_nonzero(dense.lm_head.weight)) - model.lm_head.paqbench_nonzero()
    assert nonzero - q_nonzero == lost


def test_generate_dtype_moves_and_deepcopy_keep_the_tie(make_context, tiny_tokenizer):
    model, _, _ = quantized(True, make_context)
    prompt = tiny_tokenizer("hello", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert out.shape == (1, prompt.shape[1] + 6)
    twin = copy.deepcopy(model)
    assert twin.lm_head.embedding is twin.model.embed_tokens is not model.model.embed_tokens
    twin.to(torch.bfloat16)
    embed = twin.model.embed_tokens
    assert embed.scales.dtype == torch.float16 and embed(prompt).dtype == torch.bfloat16
    assert torch.equal(embed.scales, model.model.embed_tokens.scales)
    with torch.no_grad():
        assert twin(prompt).logits.dtype == torch.bfloat16


def test_unsupported_layers_fail_naming_layer_and_step(make_context):
    model, _, _ = quantized(True, make_context)
    with pytest.raises(UnsupportedLayerError, match=r"model\.embed_tokens.*quantized-embedding"):
        EmbedRTN().apply(model, EmbedRTN.Params(), make_context())
    untied = llama(False)
    untied.lm_head = QuantizedLinear.from_linear(untied.lm_head, QuantConfig(4, 128))
    with pytest.raises(UnsupportedLayerError, match=r"step 1 \(test\).*'lm_head'"):
        EmbedRTN().apply(untied, EmbedRTN.Params(), make_context())
    with pytest.raises(ValueError):
        EmbedRTN.Params(group_size=0)


@pytest.mark.realmodel
def test_smollm2_4bit_decoder_and_table_checkpoint_is_under_0_30x_of_fp16(smollm2, make_context):
    """RTN 4-bit g128 on the decoder Linears plus embed-rtn 4-bit g128 (tied head): the
    checkpoint saved as the storage metric does with dtype float16 is <= 0.30x of the fp16
    dense one; perplexity on two embedded windows stays close to decoder-only RTN."""
    from paqbench.measure.perplexity import window_nlls, windows
    from paqbench_plugins.methods.quant.rtn import RTN
    from paqbench_plugins.metrics.storage import Storage

    model, tokenizer = smollm2
    ctx = make_context(tokenizer=tokenizer)
    fp16 = Storage.Params(dtype="float16")
    dense_bytes = next(iter(Storage().measure(model, fp16, ctx))).value
    assert dense_bytes >= count_parameters(model)[0] * 2  # the tied table is saved once, in fp16
    batches = windows(tokenizer(ctx.dataset("embedded", "test").text, return_tensors="pt").input_ids, 256, limit=2)
    quant = copy.deepcopy(model)  # the session model stays dense for other tests
    RTN().apply(quant, RTN.Params(bits=4, group_size=128), ctx)
    decoder_bytes = next(iter(Storage().measure(quant, fp16, ctx))).value
    decoder_nll = sum(window_nlls(quant, batches)) / len(batches)
    info = EmbedRTN().apply(quant, EmbedRTN.Params(bits=4, group_size=128), ctx)
    assert info["tied_head"] and isinstance(quant.lm_head, TiedQuantizedHead)
    full_bytes = next(iter(Storage().measure(quant, fp16, ctx))).value
    full_nll = sum(window_nlls(quant, batches)) / len(batches)
    ratio = full_bytes / dense_bytes
    print(
        f"smollm2 fp16 checkpoint {dense_bytes / 1e6:.1f} MB; rtn4 decoder {decoder_bytes / 1e6:.1f} MB "
        f"({decoder_bytes / dense_bytes:.3f}x); + embed-rtn4 {full_bytes / 1e6:.1f} MB ({ratio:.3f}x); "
        f"ppl over 2 windows: rtn4 {math.exp(decoder_nll):.2f}, + embed-rtn4 {math.exp(full_nll):.2f}"
    )
    assert ratio <= 0.30 < decoder_bytes / dense_bytes
    assert math.isfinite(full_nll) and full_nll < decoder_nll + 0.2
