"""layer-drop: Block Influence and angular distance computed as the papers define them,
exactly the lowest-scoring blocks removed, and the shorter model runs, caches, saves and
loads like an ordinary checkpoint."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from paqbench.measure.counting import count_parameters
from paqbench.models.embedded import tiny_random_llama
from paqbench.structure.drop import angular_distances, block_influence
from paqbench_plugins.methods.prune.layer_drop import LayerDrop, LayerDropParams


def apply(model, ctx, **params):
    return LayerDrop().apply(model, LayerDropParams(**params), ctx)


def tokens(n=24, batch=2):
    return torch.randint(0, 256, (batch, n), generator=torch.Generator().manual_seed(1))


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@torch.no_grad()
def make_identity(model, *indices):
    """A block whose attention and MLP write nothing to the residual stream."""
    for i in indices:
        block = model.model.layers[i]
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()


@torch.no_grad()
def reference_states(model, batches):
    """Every block's input and output hidden states, from forward hooks on a full forward."""
    ins, outs = [], []
    handles = []
    for i, block in enumerate(model.model.layers):
        ins.append([])
        outs.append([])

        def hook(module, args, kwargs, output, i=i):
            hidden = args[0] if args else kwargs["hidden_states"]
            ins[i].append(hidden)
            outs[i].append(output[0] if isinstance(output, tuple) else output)

        handles.append(block.register_forward_hook(hook, with_kwargs=True))
    for batch in batches:
        model(batch, use_cache=False)
    for h in handles:
        h.remove()
    return ins, outs


def test_block_influence_matches_the_definition(make_context):
    model = tiny_random_llama(num_hidden_layers=4)
    batches = make_context(n_samples=3, seqlen=32).calibration_batches()
    ins, outs = reference_states(model, batches)
    expected = [
        1 - torch.cat([F.cosine_similarity(a, b, dim=-1).flatten() for a, b in zip(ins[i], outs[i], strict=True)])
        .mean().item()
        for i in range(4)
    ]
    torch.testing.assert_close(block_influence(model, batches), torch.tensor(expected, dtype=torch.float64),
                               atol=1e-5, rtol=1e-4)
    # angular, n = 2: input of block l vs input of block l + 2 (= output of block l + 1)
    expected_angle = [
        (torch.arccos(torch.cat([F.cosine_similarity(a, b, dim=-1).flatten().clamp(-1, 1)
                                 for a, b in zip(ins[i], outs[i + 1], strict=True)])) / torch.pi).mean().item()
        for i in range(3)
    ]
    torch.testing.assert_close(angular_distances(model, batches, 2),
                               torch.tensor(expected_angle, dtype=torch.float64), atol=1e-5, rtol=1e-4)


def test_an_identity_block_is_dropped_first_and_changes_nothing(make_context):
    model = tiny_random_llama(num_hidden_layers=4)
    make_identity(model, 2)
    ids = tokens()
    before = logits(model, ids)
    info = apply(model, make_context(n_samples=2, seqlen=32), n_blocks=1)
    assert info["scores"][2] == pytest.approx(0.0, abs=1e-6)
    assert min(info["scores"][i] for i in (0, 1)) > 1e-3
    assert info["dropped"] == [2]
    torch.testing.assert_close(logits(model, ids), before, atol=1e-5, rtol=1e-5)


def test_exactly_the_n_lowest_blocks_are_removed(make_context):
    model = tiny_random_llama(num_hidden_layers=5)
    original = copy.deepcopy(model)
    ctx = make_context(n_samples=2, seqlen=32)
    scores = block_influence(original, ctx.calibration_batches())
    info = apply(model, ctx, n_blocks=2, keep_last=0)
    lowest = sorted(torch.argsort(scores)[:2].tolist())
    assert info["dropped"] == lowest
    kept = [i for i in range(5) if i not in lowest]
    assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 3
    for new, old in enumerate(kept):  # the right blocks, in order, re-indexed for the KV cache
        assert torch.equal(model.model.layers[new].mlp.up_proj.weight, original.model.layers[old].mlp.up_proj.weight)
        assert model.model.layers[new].self_attn.layer_idx == new
    removed = sum(p.numel() for i in lowest for p in original.model.layers[i].parameters())
    assert info["params_before"] - info["params_after"] == removed
    assert count_parameters(model)[0] == count_parameters(original)[0] - removed


def test_keep_first_and_last_protect_blocks(make_context):
    model = tiny_random_llama(num_hidden_layers=4)
    make_identity(model, 0, 3)
    info = apply(model, make_context(n_samples=2, seqlen=32), n_blocks=1, keep_first=1, keep_last=1)
    assert info["dropped"] in ([1], [2])


def test_angular_drops_the_closest_consecutive_run(make_context):
    model = tiny_random_llama(num_hidden_layers=5)
    make_identity(model, 1, 2)
    ids = tokens()
    before = logits(model, ids)
    info = apply(model, make_context(n_samples=2, seqlen=32), n_blocks=2, importance="angular")
    assert info["scores"][1] == pytest.approx(0.0, abs=1e-3)
    assert info["dropped"] == [1, 2]
    torch.testing.assert_close(logits(model, ids), before, atol=1e-5, rtol=1e-5)


def test_ratio_and_validation(make_context):
    model = tiny_random_llama(num_hidden_layers=4)
    info = apply(model, make_context(n_samples=2, seqlen=32), ratio=0.5, keep_last=0)
    assert len(info["dropped"]) == 2 and model.config.num_hidden_layers == 2
    with pytest.raises(ValidationError):
        LayerDropParams()
    with pytest.raises(ValidationError):
        LayerDropParams(n_blocks=1, ratio=0.2)
    with pytest.raises(ValueError, match=r"cannot remove 1 block.*only 0 of 2"):
        apply(model, make_context(), n_blocks=1, keep_first=1, keep_last=1)
    assert len(model.model.layers) == 2  # refused before any change


def test_shorter_model_generates_with_cache_and_round_trips(tiny_tokenizer, make_context, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_random_llama(num_hidden_layers=4)
    apply(model, make_context(n_samples=2, seqlen=32), n_blocks=2)
    prompt = tiny_tokenizer("The quick brown fox", return_tensors="pt")
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    cached = model.generate(**prompt, use_cache=True, **kwargs)
    assert torch.equal(cached, model.generate(**prompt, use_cache=False, **kwargs))
    ids = tokens()
    expected = logits(model, ids)
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert json.loads((tmp_path / "config.json").read_text())["num_hidden_layers"] == 2
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(loaded, ids), expected)
    assert torch.equal(loaded.generate(**prompt, **kwargs), cached)


def test_qwen2_layer_types_follow(make_context):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=260, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
                         use_sliding_window=True, sliding_window=8)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    make_identity(model, 1)
    info = apply(model, make_context(n_samples=2, seqlen=32), n_blocks=1)
    assert info["dropped"] == [1]
    assert model.config.layer_types == ["full_attention", "full_attention", "sliding_attention"]
    out = model.generate(tokens(8, 1), max_new_tokens=12, do_sample=False)
    assert out.shape[1] == 20


def test_structured_then_layer_drop_keeps_per_block_sizes(make_context, tmp_path):
    from paqbench.models.saved import load_structured
    from paqbench.structure import block_parts
    from paqbench_plugins.methods.prune.structured import Structured, StructuredParams

    model = tiny_random_llama(num_hidden_layers=4)
    ctx = make_context(n_samples=2, seqlen=32)
    Structured().apply(model, StructuredParams(ratio=0.25, importance="l1", skip_first=1), ctx)
    make_identity(model, 2)
    apply(model, ctx, n_blocks=1)
    assert model.config.paqbench_structure["intermediate_size"] == [176, 132, 132]
    ids = tokens()
    expected = logits(model, ids)
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_structured(tmp_path)
    assert [p.intermediate for p in block_parts(loaded)] == [176, 132, 132]
    assert torch.equal(logits(loaded, ids), expected)
