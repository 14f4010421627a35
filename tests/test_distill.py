"""Distillation: the KD loss against its definition, the training loop's bookkeeping
(masks, frozen packed layers, restored flags, released teacher), and recovery measured on
held-out windows after pruning a tiny Llama."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from paqbench.distill import batches, cosine_with_warmup, kd_loss, next_token_loss
from paqbench.layers import get_mask, kernels_in_use, select_targets
from paqbench.models.embedded import tiny_random_llama
from paqbench.quant.linear import QuantizedLinear
from paqbench.registry import get_registry
from paqbench_plugins.methods.distill.distill import Distill
from paqbench_plugins.methods.prune.magnitude import Magnitude
from paqbench_plugins.methods.prune.structured import Structured
from paqbench_plugins.methods.quant.cast import Cast
from paqbench_plugins.methods.quant.embedding import EmbedRTN
from paqbench_plugins.methods.quant.rtn import RTN
from tests.helpers import needs_int4

pytestmark = pytest.mark.usefixtures("one_thread")


def original() -> torch.nn.Module:
    """The teacher: the same seeded tiny Llama the ``tiny_llama`` fixture builds."""
    return tiny_random_llama(seed=0)


@torch.no_grad()
def held_out_kd(student, teacher, windows) -> float:
    return sum(kd_loss(student(w).logits, teacher(w).logits).item() for w in windows) / len(windows)


# ------------------------------------------------------------------------------- the loss


def test_kd_loss_is_the_token_mean_of_kl_teacher_to_student():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    p, q = t.softmax(-1), s.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    assert kd_loss(s, t).item() == pytest.approx(expected.item(), rel=1e-5)
    # T^2 * KL at temperature T
    T = 2.0
    p, q = (t / T).softmax(-1), (s / T).softmax(-1)
    expected = T**2 * (p * (p.log() - q.log())).sum(-1).mean()
    assert kd_loss(s, t, temperature=T).item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_loss_is_zero_when_logits_agree_up_to_a_shift_and_checks_the_vocabulary():
    t = torch.randn(1, 4, 9)
    assert kd_loss(t + 3.0, t).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(torch.randn(1, 4, 9), t).item() > 0
    with pytest.raises(ValueError, match="same vocabulary"):
        kd_loss(torch.randn(1, 4, 8), t)


def test_next_token_loss_matches_the_models_own_lm_loss(tiny_llama):
    ids = torch.randint(0, 260, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = tiny_llama(input_ids=ids, labels=ids)
    assert next_token_loss(out.logits, ids).item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_schedule_and_batches():
    assert cosine_with_warmup(0, 10, 0) == 1.0 and cosine_with_warmup(5, 10, 0) == pytest.approx(0.5)
    assert cosine_with_warmup(0, 10, 3) == 0.25 and cosine_with_warmup(3, 10, 3) == 1.0
    windows = [torch.full((1, 4), i) for i in range(5)]
    drawn = [b[:, 0].tolist() for b in batches(windows, 2, 5, seed=0)]
    flat = [i for b in drawn for i in b]
    assert all(len(b) == 2 for b in drawn)
    assert sorted(flat[:5]) == [0, 1, 2, 3, 4] and sorted(flat[5:]) == [0, 1, 2, 3, 4]  # whole passes
    assert drawn == [b[:, 0].tolist() for b in batches(windows, 2, 5, seed=0)]


# ------------------------------------------------------------------------------- the method


def test_registered_with_its_family(tiny_llama):
    assert get_registry().method("distill") is Distill
    assert Distill.family == "distill" and Distill.needs_calibration


def test_distilling_the_unchanged_model_starts_at_zero_loss(tiny_llama, make_context):
    ctx = make_context(teacher=original)
    info = Distill().apply(tiny_llama, Distill.Params(steps=2, lr=1e-3), ctx)
    assert info["loss_first"] == pytest.approx(0.0, abs=1e-6)
    assert ctx._teacher is None  # released: later metrics do not pay for it


def peaky() -> torch.nn.Module:
    """A tiny Llama with larger random weights: its next-token distributions are far from
    uniform (at the default init every logit is near 0 and there is little to distil)."""
    return tiny_random_llama(seed=0, initializer_range=0.2)


def test_recovers_a_pruned_model_and_keeps_the_sparsity_pattern(make_context):
    student, teacher = peaky(), peaky()
    Magnitude().apply(student, Magnitude.Params(sparsity=0.6), make_context())
    masks = {n: get_mask(m).clone() for n, m in select_targets(student).items()}
    # windows of the same text, drawn with another seed than the training windows
    other = make_context(n_samples=4, seqlen=64, seed=99).calibration_batches()
    before = held_out_kd(student, teacher, other)

    flags = {n: p.requires_grad for n, p in student.named_parameters()}
    ctx = make_context(teacher=peaky, n_samples=16, seqlen=64)
    info = Distill().apply(student, Distill.Params(steps=40, lr=3e-3, batch_size=2), ctx)

    after = held_out_kd(student, teacher, other)
    assert after < 0.75 * before, (before, after)  # measured: 1.64 -> 1.00
    assert info["loss_last"] < 0.75 * info["loss_first"]
    for name, module in select_targets(student).items():
        assert torch.equal(get_mask(module), masks[name])
        assert torch.count_nonzero(module.weight[~masks[name]]) == 0  # pruned weights stay exactly 0
    assert info["masked_tensors"] == len(masks) and info["frozen_layers"] == {}
    assert {n: p.requires_grad for n, p in student.named_parameters()} == flags
    assert not student.training
    assert all(p.grad is None for p in student.parameters())


def test_packed_layers_stay_frozen_and_norms_learn(tiny_llama, make_context):
    RTN().apply(tiny_llama, RTN.Params(bits=4, group_size=32), make_context())
    targets = select_targets(tiny_llama)
    codes = {n: m.qweight.clone() for n, m in targets.items()}
    norm = tiny_llama.model.norm.weight.detach().clone()
    info = Distill().apply(tiny_llama, Distill.Params(steps=3, lr=1e-2), make_context(teacher=original))
    assert info["frozen_layers"] == {"quantized": len(targets)}
    assert info["trained_parameters"] == sum(
        p.numel() for n, p in tiny_llama.named_parameters() if "norm" in n
    )
    assert all(isinstance(m, QuantizedLinear) and torch.equal(m.qweight, codes[n]) for n, m in targets.items())
    assert not torch.equal(tiny_llama.model.norm.weight, norm)
    with pytest.raises(ValueError, match=r"nothing to train.*quantized"):
        Distill().apply(tiny_llama, Distill.Params(steps=1, norms=False), make_context(teacher=original))


def test_structurally_pruned_student_with_other_shapes(make_context):
    student, teacher = peaky(), peaky()
    Structured().apply(student, Structured.Params(ratio=0.5, importance="l2"), make_context())
    assert student.model.layers[0].mlp.up_proj.out_features < teacher.model.layers[0].mlp.up_proj.out_features
    other = make_context(n_samples=2, seqlen=64, seed=99).calibration_batches()
    before = held_out_kd(student, teacher, other)
    Distill().apply(student, Distill.Params(steps=20, lr=3e-3), make_context(teacher=peaky))
    assert held_out_kd(student, teacher, other) < 0.9 * before


def test_limit_caps_the_steps_and_other_training_text(tiny_llama, make_context):
    ctx = make_context(teacher=original, limit=2)
    info = Distill().apply(tiny_llama, Distill.Params(steps=50, n_samples=4, seqlen=32), ctx)
    assert info["steps"] == 2 and info["windows"] == 2 and info["tokens_per_step"] == 32


def test_mixing_in_cross_entropy_changes_the_objective(make_context):
    a, b = original(), original()
    Magnitude().apply(a, Magnitude.Params(sparsity=0.5), make_context())
    Magnitude().apply(b, Magnitude.Params(sparsity=0.5), make_context())
    kd = Distill().apply(a, Distill.Params(steps=1, lr=1e-9), make_context(teacher=original))
    mixed = Distill().apply(b, Distill.Params(steps=1, lr=1e-9, alpha=0.5), make_context(teacher=original))
    assert math.isfinite(mixed["loss_first"]) and mixed["loss_first"] != pytest.approx(kd["loss_first"])
    # alpha = 0.5: half the KD plus half the cross-entropy, which for a random model is ~log(vocab)
    assert mixed["loss_first"] > 0.5 * kd["loss_first"] + 0.5 * 0.5 * math.log(260)


def test_needs_a_way_to_load_the_original(tiny_llama, make_context):
    with pytest.raises(RuntimeError, match="original model"):
        Distill().apply(tiny_llama, Distill.Params(steps=1), make_context())


def test_a_packed_token_table_stays_frozen_while_the_decoder_trains(make_context):
    student = peaky()
    EmbedRTN().apply(student, EmbedRTN.Params(bits=4, group_size=32), make_context())
    table = student.get_input_embeddings().qweight.clone()
    info = Distill().apply(student, Distill.Params(steps=2), make_context(teacher=peaky))
    assert info["frozen_layers"] == {} and info["trained_parameters"] > 0
    assert torch.equal(student.get_input_embeddings().qweight, table)
    with pytest.raises(ValueError, match=r"float nn\.Embedding"):
        Distill().apply(student, Distill.Params(steps=1, embeddings=True), make_context(teacher=peaky))


def test_embeddings_train_only_when_asked(make_context):
    plain, with_table = peaky(), peaky()
    Magnitude().apply(plain, Magnitude.Params(sparsity=0.5), make_context())
    Magnitude().apply(with_table, Magnitude.Params(sparsity=0.5), make_context())
    table = plain.get_input_embeddings().weight.detach().clone()
    a = Distill().apply(plain, Distill.Params(steps=2, lr=1e-2), make_context(teacher=peaky))
    b = Distill().apply(with_table, Distill.Params(steps=2, lr=1e-2, embeddings=True), make_context(teacher=peaky))
    assert torch.equal(plain.get_input_embeddings().weight, table)
    assert not torch.equal(with_table.get_input_embeddings().weight, table)
    assert b["trained_parameters"] == a["trained_parameters"] + table.numel()


def test_gradient_checkpointing_gives_the_same_step_and_is_switched_off_after(make_context):
    plain, checkpointed = peaky(), peaky()
    a = Distill().apply(plain, Distill.Params(steps=2, lr=1e-3), make_context(teacher=peaky))
    b = Distill().apply(checkpointed, Distill.Params(steps=2, lr=1e-3, gradient_checkpointing=True),
                        make_context(teacher=peaky))
    assert b["loss_last"] == pytest.approx(a["loss_last"], rel=1e-4)  # recomputation, same math
    flag = "is_activation_checkpointing" if hasattr(type(checkpointed), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    assert not getattr(checkpointed, flag)


@needs_int4
def test_packed_layers_on_an_integer_kernel_take_the_differentiable_path(make_context):
    """The int4 kernel has no derivative: while training, packed layers dequantize."""
    student = peaky()
    Cast().apply(student, Cast.Params(dtype="bfloat16"), make_context())
    RTN().apply(student, RTN.Params(bits=4, group_size=32), make_context())
    with torch.no_grad():
        student(torch.randint(0, 260, (1, 8)))
    assert kernels_in_use(student).get("int4-cpu")
    info = Distill().apply(student, Distill.Params(steps=3, lr=1e-3), make_context(teacher=peaky))
    assert info["frozen_layers"] == {"quantized": len(select_targets(student))} and info["loss_first"] > 0
    with torch.no_grad():
        student(torch.randint(0, 260, (1, 8)))
    assert kernels_in_use(student).get("int4-cpu")  # inference is back on the kernel


# ---------------------------------------------------------------------------- real model


@pytest.mark.realmodel
def test_distilling_magnitude_pruned_smollm2_lowers_held_out_perplexity(smollm2, make_context):
    """SmolLM2-135M at 50% magnitude sparsity, then a few KD steps on windows of the
    embedded train split: perplexity on the embedded test split falls and the 50% stays."""
    from paqbench.measure.perplexity import window_nlls, windows

    model, tokenizer = smollm2
    ctx = make_context(tokenizer=tokenizer, n_samples=16, seqlen=128, teacher=lambda: model)
    student = copy.deepcopy(model)  # the session model stays dense: it is the teacher here
    Magnitude().apply(student, Magnitude.Params(sparsity=0.5), ctx)
    test = windows(tokenizer(ctx.dataset("embedded", "test").text, return_tensors="pt").input_ids, 256, limit=4)
    pruned = math.exp(sum(window_nlls(student, test)) / len(test))
    info = Distill().apply(student, Distill.Params(steps=12, lr=1e-4), ctx)
    recovered = math.exp(sum(window_nlls(student, test)) / len(test))
    print(f"smollm2 magnitude 50%: ppl {pruned:.2f} -> {recovered:.2f} after {info['steps']} KD steps "
          f"({info['seconds_per_step']:.2f} s/step); loss {info['loss_first']:.3f} -> {info['loss_last']:.3f}")
    assert recovered < 0.8 * pruned
    targets = select_targets(student)
    zeros = sum(int((m.weight == 0).sum()) for m in targets.values())
    assert zeros >= 0.5 * sum(m.weight.numel() for m in targets.values())
