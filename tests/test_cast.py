"""The cast method: half-precision weights and activations, packed layers untouched,
and the CPU int4/int8 kernels picked up by the layers that fit them."""

from __future__ import annotations

import pytest
import torch

from paqbench.layers import kernels_in_use
from paqbench.models.embedded import tiny_random_llama
from paqbench.quant import load_quantized
from paqbench.quant.linear import QuantizedLinear
from paqbench.registry import get_registry
from paqbench_plugins.methods.quant.cast import Cast
from paqbench_plugins.methods.quant.embedding import EmbedRTN
from paqbench_plugins.methods.quant.rtn import RTN
from paqbench_plugins.metrics.latency import Latency
from tests.helpers import needs_int4

pytestmark = pytest.mark.usefixtures("one_thread")


def ids() -> torch.Tensor:
    return torch.randint(0, 260, (2, 12), generator=torch.Generator().manual_seed(0))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_cast_is_registered_and_accepts_every_layer_kind():
    assert get_registry().method("cast") is Cast
    assert Cast.family == "quantize" and not Cast.needs_calibration
    assert {"dense", "pruned", "quantized"} <= Cast.accepts
    with pytest.raises(ValueError):
        Cast.Params(dtype="int8")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dense_model_casts_weights_activations_and_config(tiny_llama, make_context, dtype):
    with torch.no_grad():
        expected = tiny_llama(ids()).logits
    info = Cast().apply(tiny_llama, Cast.Params(dtype=dtype), make_context())
    target = getattr(torch, dtype)
    assert info == {"from": {"float32": sum(p.numel() for p in tiny_llama.parameters())}, "to": dtype}
    assert {p.dtype for p in tiny_llama.parameters()} == {target}
    assert tiny_llama.config.dtype == target
    with torch.no_grad():
        logits = tiny_llama(ids()).logits
    assert logits.dtype == target
    assert 0 < relative_error(logits, expected) < 0.02  # rounded, not broken


def test_packed_layers_keep_codes_and_float16_scales(tiny_llama, make_context):
    RTN().apply(tiny_llama, RTN.Params(bits=4, group_size=32), make_context())
    EmbedRTN().apply(tiny_llama, EmbedRTN.Params(bits=4, group_size=32), make_context())
    packed = {name: (m.qweight.clone(), m.scales.clone()) for name, m in tiny_llama.named_modules()
              if hasattr(m, "qweight")}
    with torch.no_grad():
        expected = tiny_llama(ids()).logits
    Cast().apply(tiny_llama, Cast.Params(), make_context())
    for name, (qweight, scales) in packed.items():
        module = tiny_llama.get_submodule(name)
        assert torch.equal(module.qweight, qweight) and module.scales.dtype == torch.float16
        assert torch.equal(module.scales, scales)
    with torch.no_grad():
        logits = tiny_llama(ids()).logits
    assert logits.dtype == torch.bfloat16 and relative_error(logits, expected) < 0.03


@needs_int4
def test_half_precision_activations_reach_the_int4_kernel_and_latency_reports_it(tiny_llama, make_context):
    """float32 activations: every packed layer on the reference path; after the cast the
    layers whose layout fits the int4 kernel run it, and the
    latency metric records which paths its timed calls used."""
    RTN().apply(tiny_llama, RTN.Params(bits=4, group_size=32), make_context())
    ctx = make_context()
    params = Latency.Params(prompt_tokens=8, new_tokens=4, warmup=1, min_iterations=1, min_seconds=0)
    before = {m.name: m for m in Latency().measure(tiny_llama, params, ctx)}
    assert before["tpot"].details["kernels"] == {"reference": 14}
    Cast().apply(tiny_llama, Cast.Params(), ctx)
    after = {m.name: m for m in Latency().measure(tiny_llama, params, ctx)}
    # the kernel needs out_features % 16 == 0 and groups on whole 32-column chunks: the
    # 176-wide down_proj (5 x 32 + 16) keeps the reference path
    fits = sum(1 for m in tiny_llama.modules()
               if isinstance(m, QuantizedLinear) and m.out_features % 16 == 0 and m.in_features % 32 == 0)
    assert fits == 12
    assert after["tpot"].details["kernels"].get("int4-cpu") == fits == kernels_in_use(tiny_llama)["int4-cpu"]


def test_a_cast_checkpoint_reloads_in_the_cast_dtype(tiny_llama, make_context, tmp_path):
    RTN().apply(tiny_llama, RTN.Params(bits=4, group_size=32), make_context())
    Cast().apply(tiny_llama, Cast.Params(), make_context())
    tiny_llama.save_pretrained(tmp_path)
    fresh = tiny_random_llama(seed=1).to(torch.bfloat16)
    load_quantized(fresh, tmp_path)
    with torch.no_grad():
        assert torch.equal(fresh(ids()).logits, tiny_llama(ids()).logits)
