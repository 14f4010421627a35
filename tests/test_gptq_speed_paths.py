"""GPTQ's speed paths change no output bit.

Two things make GPTQ faster on a CPU: a column loop with fewer, contiguous tensor
operations (:class:`paqbench.quant.gptq._ColumnSolver`) and, during layer-sequential
calibration, one dequantization per quantized layer and block instead of one per window
(:func:`paqbench.quant.linear.dequantize_once`). Both must give bitwise the codes, scales,
zero points and group index of the plain loop without reuse, kept here as the reference.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import paqbench.blockwise.driver as driver
import paqbench_plugins.methods.quant.gptq as gptq_plugin
from paqbench.models.embedded import tiny_random_llama
from paqbench.quant.gptq import GPTQResult, _inverse_hessian_factor, gptq_quantize, working_copies
from paqbench.quant.linear import QuantizedLinear, dequantize_once
from paqbench.quant.quantizer import (
    QuantConfig,
    QuantizedWeight,
    group_params,
    minmax_params,
    quantize_codes,
    quantize_rtn,
)
from paqbench_plugins.methods.prune.sparsegpt import SparseGPT
from paqbench_plugins.methods.prune.wanda import Wanda
from paqbench_plugins.methods.quant.gptq import GPTQ

pytestmark = pytest.mark.usefixtures("one_thread")


def textbook_gptq(
    weight: torch.Tensor, hessian: torch.Tensor, config: QuantConfig, *, damp: float = 0.01,
    block_size: int = 128, act_order: bool = False, static_groups: bool = False, keep: torch.Tensor | None = None,
) -> GPTQResult:
    """The column loop as it was before the speed work: one column at a time, untransposed,
    per-column grid lookups, codes and loss written per column."""
    device = hessian.device
    W, H = working_copies(weight, hessian)
    rows, cols = W.shape
    maxq = config.maxq
    if keep is not None:
        keep = keep.to(device=device, dtype=torch.bool)
        W *= keep
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    group = cols if config.group_size == -1 else config.group_size
    n_groups = config.n_groups(cols)
    if static_groups:
        static_index = config.group_index(cols, device)
        static_scale, static_zero = group_params(W, static_index, n_groups, config)
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        if keep is not None:
            keep = keep[:, perm]
    U, damp_used = _inverse_hessian_factor(H, damp)
    if static_groups:
        position_group = static_index.long() if perm is None else static_index.long()[perm]
    else:
        position_group = torch.arange(cols, device=device) // group
    codes = torch.zeros(rows, cols, dtype=torch.uint8, device=device)
    scales = torch.ones(rows, n_groups, dtype=torch.float32, device=device)
    zeros = torch.zeros(rows, n_groups, dtype=torch.float32, device=device)
    if static_groups:
        scales, zeros = static_scale, static_zero
    loss = torch.zeros((), dtype=torch.float64, device=device)
    scale = zero = None
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if static_groups:
                g = int(position_group[j])
                scale, zero = scales[:, g], zeros[:, g]
            elif j % group == 0:
                end = min(j + group, cols)
                segment = W1[:, i : min(end, i2) - i1]
                if end > i2:
                    later = W[:, i2:end] - Err1[:, :i] @ U[i1:j, i2:end]
                    segment = torch.cat([segment, later], dim=1)
                if keep is not None:
                    segment = segment * keep[:, j:end]
                scale, zero = minmax_params(segment.min(dim=1).values, segment.max(dim=1).values,
                                            config.bits, config.symmetric)
                g = j // group
                scales[:, g], zeros[:, g] = scale, zero
            w = W1[:, i]
            d = U1[i, i]
            c = quantize_codes(w, scale, zero, maxq)
            if keep is not None:
                c = torch.where(keep[:, j], c, zero)
            q = (c - zero) * scale
            codes[:, j] = c.to(torch.uint8)
            err = (w - q) / d
            loss += (err.double() ** 2).sum() / 2
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    g_idx = position_group
    if perm is not None:
        inverse = torch.argsort(perm)
        codes = codes[:, inverse]
        g_idx = position_group[inverse]
    quantized = QuantizedWeight.from_solver(codes, scales, zeros, g_idx, config)
    return GPTQResult(quantized, float(loss), damp_used, int(dead.sum()))


def assert_same_quantization(got: QuantizedWeight, want: QuantizedWeight) -> None:
    for field in ("codes", "scales", "zeros", "g_idx"):
        a, b = getattr(got, field), getattr(want, field)
        assert a.dtype == b.dtype and torch.equal(a, b), field


def random_problem(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A weight, a Hessian of uneven inputs with one dead column, and a keep-mask."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(300, cols, generator=generator) * torch.rand(cols, generator=generator) * 3
    x[:, 5] = 0.0
    weight = torch.randn(rows, cols, generator=generator)
    keep = torch.rand(rows, cols, generator=generator) > 0.4
    return weight, 2 * x.T @ x / 300, keep


# ---------------------------------------------------------------------------- the column loop


@pytest.mark.parametrize(("config", "act_order", "static", "block_size"), [
    (QuantConfig(4, 32), True, True, 128),  # the method's defaults (act order, static groups)
    (QuantConfig(4, 32), True, False, 7),  # dynamic groups cut by blocks: pending updates applied
    (QuantConfig(4, 128), False, False, 32),  # 176 = 128 + 48: a group spanning several blocks
    (QuantConfig(3, -1), True, False, 64),  # per channel: one grid for all blocks
    (QuantConfig(2, 48, symmetric=True), False, True, 128),
    (QuantConfig(8, 32), True, True, 50),
])
@pytest.mark.parametrize("masked", [False, True])
def test_column_loop_is_bitwise_the_textbook_loop(config, act_order, static, block_size, masked):
    weight, hessian, keep = random_problem(48, 176, seed=block_size)
    keep = keep if masked else None
    if keep is not None:
        weight = weight * keep
    options = dict(act_order=act_order, static_groups=static, block_size=block_size, keep=keep)
    got = gptq_quantize(weight, hessian, config, **options)
    want = textbook_gptq(weight, hessian, config, **options)
    assert_same_quantization(got.quantized, want.quantized)
    assert got.loss == pytest.approx(want.loss, rel=1e-9)  # summed per block: only the rounding differs
    assert (got.damp, got.dead_columns) == (want.damp, want.dead_columns)


# ---------------------------------------------------------------------------- reused dequantized weights


def quantized_layer(seed: int = 0) -> QuantizedLinear:
    weight = torch.randn(24, 64, generator=torch.Generator().manual_seed(seed))
    return QuantizedLinear.from_quantized(quantize_rtn(weight, QuantConfig(4, 32)), dtype=torch.float32)


def count_dequantizations(layer: QuantizedLinear, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = layer.dequantize
    monkeypatch.setattr(layer, "dequantize", lambda: calls.append(1) or real())
    return calls


def test_a_scope_dequantizes_once_until_the_codes_change_and_forgets_on_exit(monkeypatch):
    layer = quantized_layer()
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    calls = count_dequantizations(layer, monkeypatch)
    plain = layer(x)
    with torch.no_grad(), dequantize_once():
        first, second = layer(x), layer(x)
        assert len(calls) == 2 and torch.equal(first, plain) and torch.equal(second, plain)
        layer.zero_weights(torch.rand(24, 64, generator=torch.Generator().manual_seed(2)) > 0.5)  # an edit
        pruned = layer(x)
        assert len(calls) == 3 and not torch.equal(pruned, plain)
        layer.scales.mul_(2)  # an in-place change of a buffer
        assert torch.equal(layer(x), 2 * pruned) and len(calls) == 4
        with dequantize_once():  # nested: the outer scope's weight is reused
            layer(x)
        assert len(calls) == 4
    layer(x)
    layer(x)
    assert len(calls) == 6  # outside a scope: nothing reused


def test_a_scope_reuses_nothing_in_inference_mode(monkeypatch):
    layer = quantized_layer()
    calls = count_dequantizations(layer, monkeypatch)
    with torch.inference_mode(), dequantize_once():
        layer(torch.ones(2, 64))
        layer(torch.ones(2, 64))
    assert len(calls) == 2


# ---------------------------------------------------------------------------- the method, end to end


def no_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver, "dequantize_once", contextlib.nullcontext)


def quantized_state(method, params: dict, ctx, before=None) -> dict[str, torch.Tensor]:
    model = tiny_random_llama(seed=0, num_hidden_layers=3)
    if before is not None:
        before[0]().apply(model, before[0].Params(**before[1]), ctx)
    method().apply(model, method.Params(**params), ctx)
    return {name: value.clone() for name, value in model.state_dict().items()}


def assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].dtype == value.dtype and torch.equal(got[name], value), name


@pytest.mark.parametrize("params", [
    {"bits": 4, "group_size": 32},  # defaults: act order, static groups, true sequential
    {"bits": 3, "group_size": 32, "act_order": False, "block_size": 16},
])
def test_gptq_on_a_tiny_llama_is_bitwise_the_plain_loop_without_reuse(params, make_context, monkeypatch):
    ctx = make_context(n_samples=4, seqlen=32)
    fast = quantized_state(GPTQ, params, ctx)
    no_reuse(monkeypatch)
    monkeypatch.setattr(gptq_plugin, "gptq_quantize", textbook_gptq)
    assert_same_state(fast, quantized_state(GPTQ, params, ctx))


@pytest.mark.parametrize(("method", "params"), [
    (SparseGPT, {"sparsity": 0.5}),
    (Wanda, {"sparsity": 0.5}),
])
def test_pruning_quantized_layers_is_the_same_with_reused_weights(method, params, make_context, monkeypatch):
    """SparseGPT and Wanda on GPTQ's layers (they run on the same driver and edit codes)."""
    ctx = make_context(n_samples=4, seqlen=32)
    gptq = (GPTQ, {"bits": 4, "group_size": 32})
    fast = quantized_state(method, params, ctx, before=gptq)
    no_reuse(monkeypatch)
    assert_same_state(fast, quantized_state(method, params, ctx, before=gptq))
