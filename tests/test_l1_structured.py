"""l1-structured: channels chosen exactly as torch's ln_structured chooses them, and the
really-shrunk model computes exactly what the seed study's masked model computed."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from torch.nn.utils import prune

from paqbench.layers import CompressedLayer, UnsupportedLayerError, get_mask, layer_kind, select_targets
from paqbench.layers.contract import SLICE_INPUTS, SLICE_OUTPUTS
from paqbench.layers.structured import (
    InputSelect,
    OutputScatter,
    kept_count,
    rebuild_structured,
    select_channels,
)
from paqbench.measure.counting import count_parameters
from paqbench.models.embedded import tiny_random_llama
from paqbench_plugins.methods.prune.l1_structured import L1Structured, L1StructuredParams
from paqbench_plugins.methods.prune.magnitude import Magnitude, MagnitudeParams
from paqbench_plugins.metrics.params import ParamsMetric, ParamsParams

TORCH_DIM = {"input": 1, "output": 0}
TORCH_NORM = {"l1": 1, "l2": 2}


def apply(model, ctx, **params):
    return L1Structured().apply(model, L1StructuredParams(**params), ctx)


def masked_reference(model, ratio, dim, norm="l1", zero_bias=False):
    """The seed study's version: torch's ln_structured masks, full-size weights."""
    reference = copy.deepcopy(model)
    for module in select_targets(reference).values():
        prune.ln_structured(module, "weight", amount=ratio, n=TORCH_NORM[norm], dim=TORCH_DIM[dim])
        if zero_bias and module.bias is not None:  # ln_structured leaves the bias alone
            keep_rows = module.weight_mask.any(dim=1)
            module.bias.data.mul_(keep_rows.to(module.bias.dtype))
    return reference


def tokens(n=24, batch=2):
    return torch.randint(0, 256, (batch, n), generator=torch.Generator().manual_seed(1))


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


# --- channel selection ----------------------------------------------------------------


@pytest.mark.parametrize(("channels", "ratio", "kept"), [
    (64, 0.35, 42), (176, 0.35, 114), (176, 0.1, 158), (576, 0.1, 518), (1536, 0.35, 998),
    (10, 0.0, 10), (7, 0.5, 3),
])
def test_kept_count_is_width_minus_rounded_ratio(channels, ratio, kept):
    assert kept_count(channels, ratio) == kept
    assert kept == channels - round(ratio * channels)


@pytest.mark.parametrize(("channels", "ratio", "multiple_of", "kept"), [
    (3072, 0.1, 8, 2760), (576, 0.1, 8, 512), (176, 0.35, 8, 112), (32, 0.35, 8, 16),
    (12, 0.5, 8, 6), (176, 0.0, 8, 176), (100, 0.0, 64, 100), (64, 0.35, 1, 42),
])
def test_multiple_of_rounds_pruned_widths_down(channels, ratio, multiple_of, kept):
    assert kept_count(channels, ratio, multiple_of) == kept


def test_multiple_of_gives_aligned_layers(tiny_llama, make_context):
    apply(tiny_llama, make_context(), ratio=0.1, dim="output", multiple_of=8)
    widths = {m.weight.shape[0] for m in select_targets(tiny_llama).values()}
    assert widths == {56, 24, 152}  # 64, 32, 176 less 10% = 58, 29, 158: rounded down


def test_norm_choice_changes_the_kept_column():
    # column 0: one large weight (L1 3, L2 3); column 1: four small ones (L1 4, L2 2)
    weight = torch.tensor([[3.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert select_channels(weight, "input", 0.5, "l1").tolist() == [1]
    assert select_channels(weight, "input", 0.5, "l2").tolist() == [0]
    assert select_channels(weight, "output", 0.75, "l1").tolist() == [0]  # row L1: 4, 1, 1, 1


def test_removing_every_channel_is_refused():
    with pytest.raises(ValueError, match="remove all"):
        select_channels(torch.randn(4, 8), "input", 0.99)


def test_a_ratio_that_empties_a_layer_is_refused_before_any_change(make_context):
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 2))
    with pytest.raises(ValueError, match=r"all 2 output channels of '1'"):
        apply(model, make_context(), ratio=0.8, dim="output", targets=r"^\d$")
    assert all(type(m) is nn.Linear for m in model)


def test_params_are_validated():
    with pytest.raises(ValidationError):
        L1StructuredParams(ratio=1.0)
    with pytest.raises(ValidationError):
        L1StructuredParams(dim="rows")
    with pytest.raises(ValidationError):
        L1StructuredParams(norm="l3")


@pytest.mark.parametrize("dim", ["input", "output"])
@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_each_layer_keeps_exactly_the_top_norm_channels(tiny_llama, make_context, dim, norm):
    ratio = 0.35
    reference = masked_reference(tiny_llama, ratio, dim, norm)
    originals = {name: m.weight.detach().clone() for name, m in select_targets(tiny_llama).items()}
    apply(tiny_llama, make_context(), ratio=ratio, dim=dim, norm=norm)
    wrapper_type = InputSelect if dim == "input" else OutputScatter
    for name, weight in originals.items():
        wrapper = tiny_llama.get_submodule(name)
        assert type(wrapper) is wrapper_type
        channels = weight.shape[TORCH_DIM[dim]]
        keep = channels - round(ratio * channels)
        # torch's mask says which channels ln_structured keeps
        mask = reference.get_submodule(name).weight_mask
        torch_kept = mask.any(dim=0 if dim == "input" else 1).nonzero().flatten()
        ours = wrapper.index
        assert ours.numel() == keep
        assert torch.equal(ours, torch_kept)
        # and independently: they are the `keep` largest norms
        over = 0 if dim == "input" else 1
        scores = weight.abs().sum(over) if norm == "l1" else weight.norm(dim=over)
        assert set(ours.tolist()) == set(scores.argsort(descending=True)[:keep].tolist())
        small = torch.index_select(weight, TORCH_DIM[dim], ours)
        assert torch.equal(wrapper.layer.weight, small)


# --- the pruned model computes what the masked model computes ----------------------------


def test_input_pruning_equals_zeroed_columns(tiny_llama, make_context):
    ids = tokens()
    reference = masked_reference(tiny_llama, 0.35, "input")
    dense = logits(tiny_llama, ids)
    apply(tiny_llama, make_context(), ratio=0.35, dim="input")
    pruned = logits(tiny_llama, ids)
    torch.testing.assert_close(pruned, logits(reference, ids), atol=1e-5, rtol=1e-4)
    assert (pruned - dense).abs().max() > 1e-3  # the function really changed


def test_output_pruning_equals_zeroed_rows_and_bias(make_context):
    model = tiny_random_llama(attention_bias=True, mlp_bias=True)
    for name, module in select_targets(model).items():  # random, nonzero biases
        module.bias.data.normal_(generator=torch.Generator().manual_seed(len(name)))
    ids = tokens()
    reference = masked_reference(model, 0.35, "output", zero_bias=True)
    apply(model, make_context(), ratio=0.35, dim="output")
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dim", ["input", "output"])
def test_a_biased_layer_keeps_its_bias_semantics(make_context, dim):
    model = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 5))
    x = torch.randn(3, 4, 12)
    weight, bias = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    apply(model, make_context(), ratio=0.25, dim=dim, targets=r"^0$")
    layer = model[0]
    index = layer.index
    if dim == "input":
        assert layer.layer.weight.shape == (9, 9)
        expected = F.linear(x[..., index], weight[:, index], bias)
    else:
        assert layer.layer.weight.shape == (7, 12)
        expected = torch.zeros(3, 4, 9)
        expected[..., index] = F.linear(x, weight[index], bias[index])
        removed = sorted(set(range(9)) - set(index.tolist()))
        assert torch.equal(layer(x)[..., removed], torch.zeros(3, 4, len(removed)))
    torch.testing.assert_close(layer(x), expected)
    assert isinstance(model[2], nn.Linear) and model[2].in_features == 9  # not a target


def test_ratio_zero_is_identity(tiny_llama, make_context):
    ids = tokens()
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    dense = logits(tiny_llama, ids)
    info = apply(tiny_llama, make_context(), ratio=0.0, dim="input")
    assert info["layers_pruned"] == 0 and info["params_after"] == info["params_before"]
    after = tiny_llama.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, (InputSelect, OutputScatter)) for m in tiny_llama.modules())
    assert torch.equal(logits(tiny_llama, ids), dense)


def test_targets_are_respected(tiny_llama, make_context):
    embed, head = tiny_llama.model.embed_tokens.weight, tiny_llama.lm_head.weight
    embed_copy, head_copy = embed.detach().clone(), head.detach().clone()
    attention = {
        n: m.weight.detach().clone() for n, m in select_targets(tiny_llama, r"self_attn").items()
    }
    apply(tiny_llama, make_context(), ratio=0.5, dim="input", targets=r"mlp\.")
    for name, weight in attention.items():
        module = tiny_llama.get_submodule(name)
        assert type(module) is nn.Linear and torch.equal(module.weight, weight)
    for block in tiny_llama.model.layers:
        mlp = block.mlp
        assert all(isinstance(p, InputSelect) for p in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    # default targets: everything in the blocks, never the embeddings or the head
    apply(tiny_llama, make_context(), ratio=0.5, dim="output")
    assert type(tiny_llama.lm_head) is nn.Linear and tiny_llama.lm_head.weight is head
    assert torch.equal(head, head_copy)
    assert torch.equal(tiny_llama.model.embed_tokens.weight, embed_copy)
    assert tiny_llama.model.embed_tokens.weight is embed


def test_later_steps_find_the_smaller_inner_layers(tiny_llama, make_context):
    ctx = make_context()
    apply(tiny_llama, ctx, ratio=0.25, dim="input")
    targets = select_targets(tiny_llama)
    assert len(targets) == 14 and all(name.endswith(".layer") for name in targets)
    assert {layer_kind(m) for m in targets.values()} == {"dense"}
    # a second pass folds into the same wrapper (no stacked gathers) and composes indices
    first = {n: tiny_llama.get_submodule(n.rpartition(".")[0]).index.clone() for n in targets}
    info = apply(tiny_llama, ctx, ratio=0.25, dim="input")
    assert info["layers_pruned"] == 14
    for name, index in first.items():
        wrapper = tiny_llama.get_submodule(name.rpartition(".")[0])
        assert type(wrapper.layer) is nn.Linear
        assert wrapper.index.numel() == kept_count(index.numel(), 0.25)
        assert set(wrapper.index.tolist()) <= set(index.tolist())
        assert wrapper.layer.weight.shape[1] == wrapper.index.numel()


def test_masks_of_a_pruned_layer_are_carried(tiny_llama, make_context):
    ctx = make_context()
    Magnitude().apply(tiny_llama, MagnitudeParams(sparsity=0.5), ctx)
    apply(tiny_llama, ctx, ratio=0.25, dim="input")
    for module in select_targets(tiny_llama).values():
        mask = get_mask(module)
        assert layer_kind(module) == "pruned" and mask.shape == module.weight.shape
        assert torch.equal(module.weight != 0, mask)
    # a later pruning step keeps the old zeros and works on the smaller weight
    Magnitude().apply(tiny_llama, MagnitudeParams(sparsity=0.6), ctx)
    for module in select_targets(tiny_llama).values():
        assert (module.weight == 0).float().mean().item() == pytest.approx(0.6, abs=0.01)


# --- size, storage, generation ----------------------------------------------------------


def test_params_and_checkpoint_really_shrink(tiny_llama, make_context, tmp_path):
    ratio = 0.35
    removed = kept_total = 0
    for module in select_targets(tiny_llama).values():
        out_features, in_features = module.weight.shape
        keep = kept_count(in_features, ratio)
        removed += out_features * (in_features - keep)
        kept_total += keep
    dense_params = count_parameters(tiny_llama)[0]
    tiny_llama.save_pretrained(tmp_path / "dense", safe_serialization=True)
    info = apply(tiny_llama, make_context(), ratio=ratio, dim="input")
    assert count_parameters(tiny_llama)[0] == dense_params - removed
    assert info["params_before"] - info["params_after"] == removed
    assert info["target_weights_before"] - info["target_weights_after"] == removed

    tiny_llama.save_pretrained(tmp_path / "pruned", safe_serialization=True)
    size = {
        d: sum(f.stat().st_size for f in (tmp_path / d).glob("*.safetensors"))
        for d in ("dense", "pruned")
    }
    # float32 weights gone, int64 indices added; the header differs by a few hundred bytes
    expected_saving = removed * 4 - kept_total * 8
    assert abs((size["dense"] - size["pruned"]) - expected_saving) < 4096
    assert size["pruned"] < size["dense"] - 3 * removed  # > 3 of 4 bytes saved per weight
    from safetensors import safe_open

    with safe_open(str(tmp_path / "pruned" / "model.safetensors"), "pt") as f:
        down = "model.layers.0.mlp.down_proj"
        assert f.get_slice(f"{down}.layer.weight").get_shape() == [64, kept_count(176, ratio)]
        assert f.get_slice(f"{down}.input_index").get_shape() == [kept_count(176, ratio)]

    metric = ParamsMetric().measure(tiny_llama, ParamsParams(), make_context())
    measured = {m.name: m for m in metric}
    assert measured["total"].value == dense_params - removed
    per_module = measured["linear_sparsity"].details["per_module"]
    assert per_module["model.layers.0.mlp.down_proj.layer"]["shape"] == [64, kept_count(176, ratio)]


def test_a_saved_pruned_model_loads_back_exactly(tiny_llama, make_context, tmp_path):
    from safetensors.torch import load_file

    ctx = make_context()
    apply(tiny_llama, ctx, ratio=0.35, dim="output", targets=r"mlp\.(up|gate)_proj")
    apply(tiny_llama, ctx, ratio=0.2, dim="input")  # nests an input gather inside two
    ids = tokens()
    expected = logits(tiny_llama, ids)
    tiny_llama.save_pretrained(tmp_path, safe_serialization=True)
    state_dict = load_file(str(tmp_path / "model.safetensors"))
    fresh = tiny_random_llama(seed=7)
    rebuilt = rebuild_structured(fresh, state_dict)
    assert len(rebuilt) == 14 + 4
    fresh.load_state_dict(state_dict, strict=True)
    assert torch.equal(logits(fresh, ids), expected)


@pytest.mark.parametrize("dim", ["input", "output"])
def test_pruned_model_still_generates(tiny_llama, tiny_tokenizer, make_context, dim):
    apply(tiny_llama, make_context(), ratio=0.35, dim=dim)
    prompt = tiny_tokenizer("The quick brown fox", return_tensors="pt")
    out = tiny_llama.generate(**prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.shape[1] == prompt.input_ids.shape[1] + 8


# --- quantized layers ------------------------------------------------------------------


class FakeQuantizedLinear(CompressedLayer):
    """A test double of the quantized-layer editing contract (int8 codes, per-row scale),
    to pin down how l1-structured calls it; the real QuantizedLinear is tested below."""

    paqbench_layer_kind = "quantized"
    capabilities = frozenset({SLICE_INPUTS, SLICE_OUTPUTS})

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        scale = weight.abs().amax(dim=1, keepdim=True) / 127
        self.register_buffer("codes", torch.round(weight / scale).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = linear.bias

    @property
    def in_features(self) -> int:
        return self.codes.shape[1]

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    def dequantize(self) -> torch.Tensor:
        return self.codes.float() * self.scale

    def select_input_features(self, index: torch.Tensor) -> None:
        self.codes = self.codes[:, index]

    def select_output_features(self, index: torch.Tensor) -> None:
        self.codes, self.scale = self.codes[index], self.scale[index]
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias[index])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize(), self.bias)


def _fake_quantize(model):
    for name, module in select_targets(model).items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, FakeQuantizedLinear(module))


@pytest.mark.parametrize("dim", ["input", "output"])
def test_quantized_layers_are_scored_dequantized_and_edited_in_place(tiny_llama, make_context, dim):
    _fake_quantize(tiny_llama)
    layers = select_targets(tiny_llama)
    dequantized = {name: m.dequantize().clone() for name, m in layers.items()}
    x = torch.randn(2, 5, 176)
    apply(tiny_llama, make_context(), ratio=0.35, dim=dim)
    for name, weight in dequantized.items():
        wrapper = tiny_llama.get_submodule(name)
        assert wrapper.layer is layers[name]  # the same quantized layer, edited
        axis = TORCH_DIM[dim]
        scores = weight.abs().sum(0 if dim == "input" else 1)
        keep = kept_count(weight.shape[axis], 0.35)
        assert set(wrapper.index.tolist()) == set(scores.argsort(descending=True)[:keep].tolist())
        assert torch.equal(wrapper.layer.dequantize(), weight.index_select(axis, wrapper.index))
        inputs = x[..., : weight.shape[1]]
        # removed columns read nothing; removed rows produce 0
        expected = F.linear(inputs, weight * _channel_mask(weight, wrapper.index, axis))
        torch.testing.assert_close(wrapper(inputs), expected, atol=1e-5, rtol=1e-4)


def _channel_mask(weight, index, axis):
    mask = torch.zeros(weight.shape[axis])
    mask[index] = 1
    return mask.view(1, -1) if axis == 1 else mask.view(-1, 1)


def test_a_quantized_layer_without_editing_methods_is_refused_before_any_change(
    tiny_llama, make_context
):
    class OpaqueQuantized(nn.Module):
        paqbench_layer_kind = "quantized"

        def forward(self, x):
            return x

    tiny_llama.model.layers[1].mlp.up_proj = OpaqueQuantized()
    where = r"model\.layers\.1\.mlp\.up_proj.*select_input_features"
    with pytest.raises(UnsupportedLayerError, match=where):
        apply(tiny_llama, make_context(), ratio=0.35)
    assert not any(isinstance(m, (InputSelect, OutputScatter)) for m in tiny_llama.modules())


def test_an_unknown_layer_kind_is_refused(tiny_llama, make_context):
    class Exotic(nn.Linear):
        paqbench_layer_kind = "exotic"

    tiny_llama.model.layers[0].self_attn.o_proj = Exotic(64, 64)
    with pytest.raises(UnsupportedLayerError, match=r"o_proj.*exotic"):
        apply(tiny_llama, make_context(), ratio=0.1)


def _rtn_quantized_tiny(ctx):
    """The tiny Llama through the real rtn method: 4-bit codes, groups of 32 columns (176
    columns = five groups and a shorter sixth), so slicing crosses group boundaries."""
    model = tiny_random_llama()
    rtn = ctx.registry.method("rtn")
    rtn().apply(model, rtn.Params(bits=4, group_size=32), ctx)
    assert {layer_kind(m) for m in select_targets(model).values()} == {"quantized"}
    return model


@pytest.mark.parametrize("dim", ["input", "output"])
def test_quantize_then_prune_with_the_real_quantized_linear(make_context, dim):
    ctx = make_context()
    model = _rtn_quantized_tiny(ctx)
    layers = select_targets(model)
    dequantized = {name: m.dequantize().detach().clone() for name, m in layers.items()}
    params_before = count_parameters(model)[0]
    ids = tokens()
    apply(model, ctx, ratio=0.35, dim=dim)
    axis = TORCH_DIM[dim]
    for name, weight in dequantized.items():
        wrapper = model.get_submodule(name)
        assert wrapper.layer is layers[name] and layer_kind(wrapper.layer) == "quantized"
        keep = kept_count(weight.shape[axis], 0.35)
        scores = weight.float().abs().sum(0 if dim == "input" else 1)
        assert set(wrapper.index.tolist()) == set(scores.argsort(descending=True)[:keep].tolist())
        # slicing codes, scales, zeros and group index must give exactly the kept weights
        assert torch.equal(wrapper.layer.dequantize(), weight.index_select(axis, wrapper.index))
        x = torch.randn(3, weight.shape[1])
        expected = F.linear(x, weight * _channel_mask(weight, wrapper.index, axis))
        torch.testing.assert_close(wrapper(x), expected, atol=1e-4, rtol=1e-3)
    assert count_parameters(model)[0] < params_before
    assert torch.isfinite(logits(model, ids)).all()


def test_a_saved_quantized_pruned_model_loads_back_exactly(make_context, tmp_path):
    from safetensors.torch import load_file

    from paqbench.quant.linear import replace_with_quantized

    ctx = make_context()
    model = _rtn_quantized_tiny(ctx)
    apply(model, ctx, ratio=0.35, dim="input", targets=r"self_attn")
    apply(model, ctx, ratio=0.1, dim="output", targets=r"mlp")
    ids = tokens()
    expected = logits(model, ids)
    model.save_pretrained(tmp_path, safe_serialization=True)
    state_dict = load_file(str(tmp_path / "model.safetensors"))
    fresh = tiny_random_llama(seed=7)
    assert len(rebuild_structured(fresh, state_dict)) == 14
    assert len(replace_with_quantized(fresh, state_dict)) == 14
    fresh.load_state_dict(state_dict, strict=True)
    assert torch.equal(logits(fresh, ids), expected)


# --- the real model --------------------------------------------------------------------


@pytest.mark.realmodel
def test_smollm2_input_pruning_matches_the_seed_studys_masked_model(smollm2, make_context):
    """10% input pruning of SmolLM2-135M: perplexity over two windows is finite, and the
    shrunk model's NLL is that of torch's ln_structured-masked model (the seed study's
    version).
    (It is also very high, about 6e6 against 26 dense on the embedded text: L1 column
    norms ignore the activations, and SmolLM2 has channels that carry large ones.)"""
    from paqbench.measure.perplexity import window_nlls, windows

    model, tokenizer = smollm2
    ctx = make_context(tokenizer=tokenizer)
    ids = tokenizer(ctx.dataset("embedded", "test").text, return_tensors="pt").input_ids
    batches = windows(ids, 256, limit=2)
    removed = 0
    for module in select_targets(model).values():
        out_features, in_features = module.weight.shape
        removed += out_features * round(0.1 * in_features)
    reference = masked_reference(model, 0.1, "input")
    reference_nll = window_nlls(reference, batches[:1])  # one window: forwards are slow here
    del reference
    pruned = copy.deepcopy(model)  # the session model stays dense for other tests
    params_before = count_parameters(pruned)[0]
    info = apply(pruned, ctx, ratio=0.1, dim="input")
    assert info["layers_pruned"] == 30 * 7
    assert count_parameters(pruned)[0] == info["params_after"] == params_before - removed
    nlls = window_nlls(pruned, batches)
    assert all(math.isfinite(nll) for nll in nlls)
    assert nlls[:1] == pytest.approx(reference_nll, rel=1e-4)
    assert nlls[0] > window_nlls(model, batches[:1])[0]  # the function really changed
