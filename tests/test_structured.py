"""structured (LLM-Pruner style): the shrunk model computes exactly what the unpruned
model computes with the same channels / KV groups zeroed, sizes and config follow, and
saved models load back, quantized layers included."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from paqbench.layers import UnsupportedLayerError
from paqbench.measure.counting import count_parameters
from paqbench.models.embedded import tiny_random_llama
from paqbench.models.saved import load_structured
from paqbench.quant import QuantConfig, QuantizedLinear
from paqbench.structure import block_parts
from paqbench.structure.importance import weight_gradients
from paqbench_plugins.methods.prune.l1_structured import L1Structured, L1StructuredParams
from paqbench_plugins.methods.prune.structured import Structured, StructuredParams, allocate

HD = 16  # tiny Llama: hidden 64, 4 heads of 16, 2 KV heads, intermediate 176


def apply(model, ctx, **params):
    return Structured().apply(model, StructuredParams(**params), ctx)


def tokens(n=24, batch=2, seed=1):
    return torch.randint(0, 256, (batch, n), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def l1_scores(block):
    """The test's own group L1 scores: MLP channel and KV group sums of |W|."""
    mlp, attn = block.mlp, block.self_attn
    mlp_s = mlp.gate_proj.weight.abs().sum(1) + mlp.up_proj.weight.abs().sum(1) + mlp.down_proj.weight.abs().sum(0)
    kv = attn.k_proj.weight.shape[0] // HD
    rep = attn.q_proj.weight.shape[0] // HD // kv
    attn_s = torch.stack([
        attn.q_proj.weight[g * rep * HD:(g + 1) * rep * HD].abs().sum()
        + attn.k_proj.weight[g * HD:(g + 1) * HD].abs().sum()
        + attn.v_proj.weight[g * HD:(g + 1) * HD].abs().sum()
        + attn.o_proj.weight[:, g * rep * HD:(g + 1) * rep * HD].abs().sum()
        for g in range(kv)
    ])
    return mlp_s, attn_s


@torch.no_grad()
def mask_in_place(block, removed_channels, removed_groups, rep=2):
    """Zero gate/up rows and down columns of removed channels; q/k/v rows and o columns
    (and q/k/v biases) of removed KV groups."""
    mlp, attn = block.mlp, block.self_attn
    for c in removed_channels:
        mlp.gate_proj.weight[c] = 0
        mlp.up_proj.weight[c] = 0
        mlp.down_proj.weight[:, c] = 0
    for g in removed_groups:
        q = slice(g * rep * HD, (g + 1) * rep * HD)
        kv = slice(g * HD, (g + 1) * HD)
        attn.q_proj.weight[q] = 0
        attn.k_proj.weight[kv] = 0
        attn.v_proj.weight[kv] = 0
        attn.o_proj.weight[:, q] = 0
        for proj, rows in ((attn.q_proj, q), (attn.k_proj, kv), (attn.v_proj, kv)):
            if proj.bias is not None:
                proj.bias[rows] = 0


def bottom(scores, n_removed):
    return set(torch.argsort(scores)[:n_removed].tolist())


# --- the pruned model equals the masked model -------------------------------------------


def test_pruned_model_equals_masking_the_same_channels_and_groups(tiny_llama, make_context):
    ids = tokens()
    reference = copy.deepcopy(tiny_llama)
    for block in reference.model.layers:
        mlp_s, attn_s = l1_scores(block)
        mask_in_place(block, bottom(mlp_s, 44), bottom(attn_s, 1))  # 176 * 0.25 = 44; 2 * 0.5 = 1
    dense = logits(tiny_llama, ids)
    apply(tiny_llama, make_context(), ratio=0.25, attention_ratio=0.5, importance="l1")
    for block in tiny_llama.model.layers:
        assert type(block.mlp.gate_proj) is nn.Linear
        assert block.mlp.gate_proj.weight.shape == (132, 64)
        assert block.mlp.down_proj.weight.shape == (64, 132)
        assert block.self_attn.q_proj.weight.shape == (2 * HD, 64)
        assert block.self_attn.k_proj.weight.shape == (HD, 64)
        assert block.self_attn.o_proj.weight.shape == (64, 2 * HD)
    pruned = logits(tiny_llama, ids)
    torch.testing.assert_close(pruned, logits(reference, ids), atol=1e-5, rtol=1e-4)
    assert (pruned - dense).abs().max() > 1e-3  # the function really changed


def test_biased_projections_qwen2_layout(make_context):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=260, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for block in model.model.layers:  # nonzero q/k/v biases, so the slicing of biases matters
            for proj in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj):
                proj.bias.normal_()
    reference = copy.deepcopy(model)
    for block in reference.model.layers:
        mlp_s, attn_s = l1_scores(block)
        mask_in_place(block, bottom(mlp_s, 24), bottom(attn_s, 1))
    ids = tokens()
    apply(model, make_context(), ratio=0.25, attention_ratio=0.5, importance="l1")
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), atol=1e-5, rtol=1e-4)
    assert model.model.layers[0].self_attn.k_proj.bias.shape == (HD,)


# --- sizes, params, config ---------------------------------------------------------------


def test_params_fall_by_the_exact_count(tiny_llama, make_context):
    before = count_parameters(tiny_llama)[0]
    info = apply(tiny_llama, make_context(), ratio=0.25, attention_ratio=0.5, importance="l2")
    # per block: 44 MLP channels x (gate row + up row + down column of 64); one KV group:
    # 2 query heads' q rows and o columns, one head's k and v rows (x 64 each)
    per_block = 44 * 3 * 64 + (2 * HD * 64) * 2 + (HD * 64) * 2
    assert before - count_parameters(tiny_llama)[0] == 2 * per_block
    assert info["params_before"] - info["params_after"] == 2 * per_block
    config = tiny_llama.config
    assert (config.intermediate_size, config.num_attention_heads, config.num_key_value_heads) == (132, 2, 1)
    assert config.head_dim == HD and not hasattr(config, "paqbench_structure")


def test_round_to_and_parts(tiny_llama, make_context):
    apply(tiny_llama, make_context(), ratio=0.1, round_to=8, parts="mlp", importance="l1")
    for parts in block_parts(tiny_llama):
        assert parts.intermediate == 152  # 176 - 18 = 158, rounded down to a multiple of 8
        assert (parts.n_heads, parts.n_kv_heads) == (4, 2)  # attention untouched


def test_attention_only_keeps_the_mlp(tiny_llama, make_context):
    apply(tiny_llama, make_context(), ratio=0.5, parts="attention", importance="l1")
    for parts in block_parts(tiny_llama):
        assert (parts.intermediate, parts.n_heads, parts.n_kv_heads) == (176, 2, 1)


def test_skip_first_last_leave_blocks_untouched_and_record_per_block_sizes(make_context, tmp_path):
    model = tiny_random_llama(num_hidden_layers=4)
    untouched = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("model.layers.0.",
                                                                                      "model.layers.3."))}
    apply(model, make_context(), ratio=0.25, attention_ratio=0.5, importance="l1", skip_first=1, skip_last=1)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in untouched.items())
    assert model.config.paqbench_structure == {
        "intermediate_size": [176, 132, 132, 176],
        "num_attention_heads": [4, 2, 2, 4],
        "num_key_value_heads": [2, 1, 1, 2],
    }
    assert model.config.intermediate_size == 176  # the uniform fields still build the unpruned layout


def test_global_scope_removes_the_lowest_normalised_scores(make_context):
    model = tiny_random_llama(num_hidden_layers=3)
    with torch.no_grad():  # one block with 10x larger MLP weights: raw scores would spare it
        for proj in ("gate_proj", "up_proj", "down_proj"):
            getattr(model.model.layers[1].mlp, proj).weight.mul_(10)
    scores = [l1_scores(block)[0] for block in model.model.layers]
    normalized = torch.cat([s / s.mean() for s in scores])
    info = apply(model, make_context(), ratio=0.3, parts="mlp", scope="global", importance="l1")
    kept_sizes = [b["intermediate_size"][1] for b in info["blocks"]]
    assert sum(176 - k for k in kept_sizes) == round(0.3 * 3 * 176)
    assert len(set(kept_sizes)) > 1  # blocks differ
    threshold = torch.sort(normalized).values[round(0.3 * 3 * 176) - 1]
    kept = [normalized[i * 176:(i + 1) * 176] for i in range(3)]
    for i, block in enumerate(model.model.layers):
        assert block.mlp.gate_proj.weight.shape[0] == int((kept[i] > threshold).sum())
    assert model.config.paqbench_structure["intermediate_size"] == kept_sizes


def test_allocate_global_keeps_a_floor_per_block():
    scores = {0: torch.tensor([1.0, 1.0, 1.0, 1.0]), 1: torch.tensor([0.0, 0.0, 0.0, 100.0])}
    kept = allocate(scores, 0.5, "global", 1, "x")
    assert sum(k.numel() for k in kept.values()) == 4
    assert kept[1].tolist() == [3]  # its three normalised zeros go first, then one channel of block 0
    assert kept[0].numel() == 3
    kept = allocate(scores, 0.75, "global", 2, "x")
    assert all(k.numel() >= 2 for k in kept.values())


# --- errors -----------------------------------------------------------------------------------


def test_refusals_happen_before_any_change(tiny_llama, make_context):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    with pytest.raises(ValueError, match="all 2 KV groups"):
        apply(tiny_llama, make_context(), ratio=0.1, attention_ratio=0.9, importance="l1")
    with pytest.raises(ValueError, match="leaves none"):
        apply(tiny_llama, make_context(), skip_first=1, skip_last=1, importance="l1")
    after = tiny_llama.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(ValidationError):
        StructuredParams(ratio=1.0)
    with pytest.raises(ValidationError):
        StructuredParams(importance="l3")
    with pytest.raises(ValidationError):
        StructuredParams(parts="mlp", attention_ratio=0.5)


def test_a_wrapped_layer_is_refused_naming_it(tiny_llama, make_context):
    ctx = make_context()
    L1Structured().apply(tiny_llama, L1StructuredParams(ratio=0.25, targets=r"layers\.1\.mlp\.up_proj"), ctx)
    with pytest.raises(UnsupportedLayerError, match=r"model\.layers\.1\.mlp\.up_proj"):
        apply(tiny_llama, ctx, importance="l1")


# --- running: forward, generate with cache ---------------------------------------------------------


def test_pruned_model_generates_with_and_without_cache_alike(tiny_llama, tiny_tokenizer, make_context):
    apply(tiny_llama, make_context(n_samples=2, seqlen=32), ratio=0.3, attention_ratio=0.5, importance="taylor")
    prompt = tiny_tokenizer("The quick brown fox", return_tensors="pt")
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    cached = tiny_llama.generate(**prompt, use_cache=True, **kwargs)
    uncached = tiny_llama.generate(**prompt, use_cache=False, **kwargs)
    assert cached.shape[1] == prompt.input_ids.shape[1] + 8
    assert torch.equal(cached, uncached)


# --- taylor importance -------------------------------------------------------------------------------


def test_hook_gradients_equal_autograd(tiny_llama, make_context):
    batches = make_context(n_samples=2, seqlen=32).calibration_batches()
    names = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    modules = {n: tiny_llama.get_submodule(n) for n in names}
    grads = weight_gradients(tiny_llama, batches, modules)
    assert all(p.grad is None for p in tiny_llama.parameters())  # the model's own grads untouched
    reference = copy.deepcopy(tiny_llama)
    reference.zero_grad()
    for batch in batches:
        (reference(input_ids=batch, labels=batch).loss / len(batches)).backward()
    for name in names:
        expected = reference.get_submodule(name).weight.grad
        torch.testing.assert_close(grads[name], expected, atol=1e-6, rtol=1e-4)
        assert expected.abs().max() > 0


def test_taylor_ranks_a_large_channel_without_gradient_last(make_context):
    model = tiny_random_llama()
    dead = 7
    with torch.no_grad():
        for block in model.model.layers:
            block.mlp.gate_proj.weight[dead] = 0  # silu(0) = 0: the channel never contributes
            block.mlp.up_proj.weight[dead] *= 50  # ... but its weights are the largest
            block.mlp.down_proj.weight[:, dead] *= 50
    dead_rows = [block.mlp.up_proj.weight[dead].clone() for block in model.model.layers]
    l1_model = copy.deepcopy(model)
    ctx = make_context(n_samples=2, seqlen=32)
    apply(l1_model, ctx, ratio=0.25, parts="mlp", importance="l1")
    apply(model, ctx, ratio=0.25, parts="mlp", importance="taylor")

    def survives(block, row):
        return bool((block.mlp.up_proj.weight == row).all(dim=1).any())

    for row, block_l1, block_taylor in zip(dead_rows, l1_model.model.layers, model.model.layers, strict=True):
        assert survives(block_l1, row)  # l1: the largest norm, kept
        assert not survives(block_taylor, row)  # taylor: |W * dL/dW| is exactly 0, removed
    # and the two importances choose different channels beyond that one
    l1_first, taylor_first = l1_model.model.layers[0].mlp.gate_proj.weight, model.model.layers[0].mlp.gate_proj.weight
    assert not torch.equal(l1_first, taylor_first)


# --- save / load -----------------------------------------------------------------------------------------


def test_uniform_pruning_loads_with_plain_from_pretrained(tiny_llama, make_context, tmp_path):
    from transformers import AutoModelForCausalLM

    apply(tiny_llama, make_context(), ratio=0.25, attention_ratio=0.5, importance="l1")
    ids = tokens()
    expected = logits(tiny_llama, ids)
    tiny_llama.save_pretrained(tmp_path, safe_serialization=True)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["intermediate_size"], saved["num_attention_heads"], saved["num_key_value_heads"],
            saved["head_dim"]) == (132, 2, 1, HD)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(loaded, ids), expected)


@pytest.mark.parametrize("kwargs", [
    dict(skip_first=1, skip_last=1),
    dict(scope="global", importance="taylor"),
])
def test_per_block_sizes_round_trip(make_context, tmp_path, kwargs):
    model = tiny_random_llama(num_hidden_layers=4)
    params = {**dict(ratio=0.3, attention_ratio=0.5, importance="l1"), **kwargs}
    apply(model, make_context(n_samples=2, seqlen=32), **params)
    ids = tokens()
    expected = logits(model, ids)
    model.save_pretrained(tmp_path, safe_serialization=True)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["paqbench_structure"]["intermediate_size"] == [p.intermediate for p in block_parts(model)]
    loaded = load_structured(tmp_path)
    assert [(p.intermediate, p.n_heads) for p in block_parts(loaded)] == [
        (p.intermediate, p.n_heads) for p in block_parts(model)]
    assert torch.equal(logits(loaded, ids), expected)


# --- quantize, then prune -------------------------------------------------------------------------------


def _quantize(model, bits=4, group_size=32):
    for parts in block_parts(model):
        for name, module in parts.projections().items():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child,
                    QuantizedLinear.from_linear(module, QuantConfig(bits=bits, group_size=group_size)))


def _dequantized_copy(model):
    dense = copy.deepcopy(model)
    for parts in block_parts(dense):
        for name, module in parts.projections().items():
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(module.dequantize())
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(dense.get_submodule(parent), child, linear)
    return dense


def test_quantize_then_prune_equals_dequantize_then_slice(make_context, tmp_path):
    model = tiny_random_llama(num_hidden_layers=3)
    _quantize(model)
    dense = _dequantized_copy(model)
    ctx = make_context()
    params = dict(ratio=0.25, attention_ratio=0.5, importance="l1", skip_first=1)
    apply(model, ctx, **params)
    apply(dense, ctx, **params)
    for q_parts, d_parts in zip(block_parts(model), block_parts(dense), strict=True):
        for (name, q), d in zip(q_parts.projections().items(), d_parts.projections().values(), strict=True):
            assert isinstance(q, QuantizedLinear), name
            assert (q.out_features, q.in_features) == tuple(d.weight.shape), name
            assert q.qweight.shape[0] == q.out_features and q.g_idx.numel() == q.in_features
            assert torch.equal(q.dequantize(), d.weight), name  # exactly the sliced dequantized weight
    ids = tokens()
    expected = logits(model, ids)
    torch.testing.assert_close(expected, logits(dense, ids), atol=1e-5, rtol=1e-4)
    # the quantized, per-block-shrunk model saves and loads back
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_structured(tmp_path)
    assert isinstance(loaded.model.layers[1].mlp.down_proj, QuantizedLinear)
    assert torch.equal(logits(loaded, ids), expected)


def test_taylor_on_quantized_layers_uses_the_dequantized_weight(make_context):
    model = tiny_random_llama()
    _quantize(model, bits=8, group_size=-1)
    dense = _dequantized_copy(model)
    ctx = make_context(n_samples=2, seqlen=32)
    batches = ctx.calibration_batches()
    names = list(block_parts(model)[0].projections(("mlp",)))
    q_grads = weight_gradients(model, batches, {n: model.get_submodule(n) for n in names})
    d_grads = weight_gradients(dense, batches, {n: dense.get_submodule(n) for n in names})
    for name in names:
        torch.testing.assert_close(q_grads[name], d_grads[name], atol=1e-6, rtol=1e-4)


# --- the real model ------------------------------------------------------------------------------------------


@pytest.mark.realmodel
def test_smollm2_shrinks_by_the_expected_count(smollm2, make_context):
    model, tokenizer = smollm2
    model = copy.deepcopy(model)
    before = count_parameters(model)[0]
    ctx = make_context(tokenizer=tokenizer)
    # 1536 - round(0.2 * 1536) = 1229 MLP channels; 3 - round(0.34 * 3) = 2 of 3 KV groups
    apply(model, ctx, ratio=0.2, attention_ratio=0.34, importance="l1")
    removed_mlp = 307 * 3 * 576
    removed_attn = (3 * 64 * 576) * 2 + (64 * 576) * 2  # 3 query heads (q rows, o cols), 1 KV head (k, v rows)
    assert before - count_parameters(model)[0] == 30 * (removed_mlp + removed_attn)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads, model.config.head_dim) == (6, 2, 64)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == prompt.input_ids.shape[1] + 4
