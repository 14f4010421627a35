"""Peer adapters are always registered; a missing peer is listed as unavailable with the
exact install command, and its step fails with that one line (runs in every environment)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from paqbench.peers import Peer, PeerUnavailable
from paqbench.peers.convert import ConversionError, ConversionRecord, LayerConversion, integer_weight
from paqbench.registry import get_registry

PEERS = {"torchao": "torchao", "hqq-lib": "hqq", "auto-round": "auto-round", "llmcompressor": "llmcompressor"}
#: llm-compressor recipes prune, quantize or both.
FAMILIES = {"torchao": "quantize", "hqq-lib": "quantize", "auto-round": "quantize", "llmcompressor": "other"}
#: Parameters without a default.
REQUIRED = {"llmcompressor": {"recipe": {"GPTQModifier": {"scheme": "W4A16"}}}}


@pytest.mark.parametrize("name", sorted(PEERS))
def test_every_peer_is_registered_with_its_extra(name):
    cls = get_registry().method(name)
    assert cls.peer.extra == PEERS[name]
    assert cls.peer.install_command.startswith(f"pip install 'paqbench[{PEERS[name]}]'")
    assert cls.family == FAMILIES[name]


@pytest.mark.parametrize("name", sorted(PEERS))
def test_a_missing_peer_is_listed_unavailable_and_its_step_says_how_to_install(name, monkeypatch, tiny_llama,
                                                                                make_context):
    cls = get_registry().method(name)
    missing = dataclasses.replace(cls.peer, module="paqbench_no_such_peer_module")
    monkeypatch.setattr(cls, "peer", missing)
    assert not missing.available()
    assert cls.summary().startswith(f"[unavailable: {missing.install_command}]")
    plugin_module = __import__(cls.__module__, fromlist=["PEER"])
    monkeypatch.setattr(plugin_module, "PEER", missing)
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    with pytest.raises(PeerUnavailable, match=r"is not installed; install it with: pip install 'paqbench\["):
        cls().apply(tiny_llama, cls.Params(**REQUIRED.get(name, {})), make_context())
    after = tiny_llama.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing touched


def test_the_install_command_names_the_extra_and_the_note():
    peer = Peer(module="x", distribution="x-lib", extra="x", note="pins transformers 5.17: use tox -e peer-x")
    assert peer.install_command == "pip install 'paqbench[x]' (pins transformers 5.17: use tox -e peer-x)"


def test_integer_codes_convert_exactly_with_float16_scales():
    generator = torch.Generator().manual_seed(0)
    q = torch.randint(-8, 8, (6, 32), generator=generator, dtype=torch.int8)
    scale = (torch.rand(6, 4, generator=generator) * 0.01 + 1e-3).half()
    zero = torch.randint(-8, 8, (6, 4), generator=generator, dtype=torch.int8)
    weight, note = integer_weight(q, scale, zero, 4, -8)
    expected = (q.float() - zero.float().repeat_interleave(8, 1)) * scale.float().repeat_interleave(8, 1)
    assert note == "" and torch.equal(weight.dequantize(), expected)
    assert weight.config.group_size == 8 and not weight.config.symmetric
    sym, _ = integer_weight(q, scale, None, 4, -8)
    assert sym.config.symmetric and int(sym.zeros.unique()) == 8


def test_float32_scales_are_recorded_and_non_integer_zeros_refused():
    q = torch.zeros(2, 4, dtype=torch.int8)
    _, note = integer_weight(q, torch.tensor([[0.1], [0.2]]), None, 8, -128)
    assert note == "float32 scales stored as float16"
    with pytest.raises(ConversionError, match="not integers"):
        integer_weight(q, torch.ones(2, 1), torch.full((2, 1), 0.5), 8, -128)
    with pytest.raises(ConversionError, match="outside the 4-bit range"):
        integer_weight(torch.full((2, 4), 9, dtype=torch.int8), torch.ones(2, 1), None, 4, -8)
    with pytest.raises(ConversionError, match="do not divide"):
        integer_weight(torch.zeros(2, 5, dtype=torch.int8), torch.ones(2, 2), None, 4, -8)


def test_require_exact_refuses_an_inexact_conversion_naming_the_layer():
    record = ConversionRecord([LayerConversion("a", "packed", True, 0.0),
                               LayerConversion("b", "packed", False, 2e-5, "float32 scales stored as float16")])
    assert record.to_dict()["exact"] is False and record.to_dict()["inexact_layers"] == 1
    record.check(False, "peer")  # recorded, not refused
    with pytest.raises(ConversionError, match="b: float32 scales stored as float16"):
        record.check(True, "peer")


def test_llmcompressor_recipes_are_checked_before_anything_runs():
    from pydantic import ValidationError

    cls = get_registry().method("llmcompressor")
    assert cls.Params(recipe="GPTQModifier: {scheme: W4A16}").recipe == {"GPTQModifier": {"scheme": "W4A16"}}
    for bad in ("[1, 2", "- a list", {}):
        with pytest.raises(ValidationError, match="recipe"):
            cls.Params(recipe=bad)


def test_a_suite_naming_a_missing_peer_runs_the_others_and_says_why_in_one_line(tmp_path, monkeypatch):
    import json

    from paqbench.planner import build_plan
    from paqbench.runner.session import run_plan
    from paqbench.suite import load_suite
    from paqbench_plugins.methods.peers import torchao_peer
    from tests.helpers import TINY_SUITE, write_suite

    missing = dataclasses.replace(torchao_peer.PEER, module="paqbench_no_such_peer_module")
    monkeypatch.setattr(torchao_peer, "PEER", missing)
    text = TINY_SUITE + """
  - name: peer
    steps:
      - torchao: {scheme: int4-weight-only, group_size: 16}
"""
    plan = build_plan(load_suite(write_suite(tmp_path, text)), get_registry())
    out = tmp_path / "out"
    run_plan(plan, out, registry=get_registry(), isolation="in-process", echo=lambda m: None)
    records = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert {n: r["status"] for n, r in records.items()} == {
        "baseline": "ok", "magnitude[sparsity=0.25]": "ok", "magnitude[sparsity=0.5]": "ok", "peer": "failed"}
    peer = records["peer"]
    message = peer["error"]["message"]
    assert message == ("step 1 (torchao) failed: torchao is not installed; install it with: "
                       "pip install 'paqbench[torchao]'")
    assert {m["metric"] for m in peer["measurements"]} == {"params", "perplexity"}
    assert all(m["value"] is None and "pip install 'paqbench[torchao]'" in m["unavailable"]
               for m in peer["measurements"])
