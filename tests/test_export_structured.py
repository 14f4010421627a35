"""Structured pruning exports as an ordinary checkpoint: a model whose blocks all shrank
alike (fewer heads, a narrower MLP) is written with the changed sizes in config.json and
reloads in transformers (compressed-tensors target) and llama.cpp (GGUF, with explicit
key/value lengths) computing the same model; per-block sizes are unavailable, with why."""

from __future__ import annotations

import json

import pytest

from paqbench.export.run import export_model
from paqbench.models.embedded import byte_tokenizer, tiny_random_llama
from paqbench.registry import get_registry
from tests.export_helpers import needs_compressed_tensors, window_ids

pytestmark = needs_compressed_tensors


def _shrunk(make_context, **extra):
    model = tiny_random_llama(seed=0)
    cls = get_registry().method("structured")
    params = {"ratio": 0.25, "attention_ratio": 0.5, "importance": "l1", **extra}
    cls().apply(model, cls.Params.model_validate(params), make_context())
    return model


def test_uniformly_shrunk_model_round_trips_in_transformers_with_its_new_sizes(make_context, tmp_path):
    model = _shrunk(make_context)
    outcome = export_model(model, byte_tokenizer(), ["compressed-tensors"], tmp_path, ids=window_ids(2, 32))
    [record] = outcome.records
    assert record.status == "ok", record.reason
    config = json.loads((tmp_path / "compressed-tensors" / "config.json").read_text())
    assert (config["intermediate_size"], config["num_attention_heads"], config["num_key_value_heads"]) == (
        132, 2, 1)
    assert config["head_dim"] == 16  # no longer hidden_size / num_attention_heads
    values = {m.name: m.value for m in outcome.measurements}
    assert values["compressed-tensors/check"] == 1.0, record.extra.get("agreement")


def test_uniformly_shrunk_model_round_trips_in_llama_cpp(make_context, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed; CI installs it")
    import gguf

    model = _shrunk(make_context)
    outcome = export_model(model, byte_tokenizer(), ["gguf"], tmp_path, ids=window_ids(2, 32))
    [record] = outcome.records
    assert record.status == "ok", record.reason
    fields = gguf.GGUFReader(tmp_path / "gguf" / "model.gguf").fields
    read = {key: int(fields[key].parts[-1][0]) for key in (
        "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
        "llama.attention.key_length")}
    assert read == {"llama.feed_forward_length": 132, "llama.attention.head_count": 2,
                    "llama.attention.head_count_kv": 1, "llama.attention.key_length": 16}
    assert {m.name: m.value for m in outcome.measurements}["gguf/check"] == 1.0, record.extra.get("agreement")


def test_per_block_sizes_are_unavailable_in_both_targets_with_the_reason(make_context, tmp_path):
    model = _shrunk(make_context, skip_first=1)  # block 0 keeps its sizes: no uniform config
    records = export_model(model, byte_tokenizer(), ["compressed-tensors", "gguf"], tmp_path).records
    for record in records:
        assert record.status == "unavailable" and "per-block sizes" in record.reason, record
