"""auto-round as a step: its scales and zero points packed as QuantizedLinear codes, bit
for bit the weights auto-round left; the layers it skips stay dense and are listed."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip(
    "auto_round", reason="auto-round is not installed (CI installs it: pip install 'paqbench[auto-round]')",
    exc_type=ImportError,
)

from paqbench.layers import layer_kind, select_targets
from paqbench.models.embedded import tiny_random_llama
from paqbench.quant.linear import QuantizedLinear
from paqbench_plugins.methods.peers.auto_round_peer import AutoRoundPeer

pytestmark = pytest.mark.usefixtures("one_thread")

FEW = {"group_size": 16, "iters": 1, "batch_size": 2}


def test_auto_round_codes_are_packed_bit_for_bit(make_context):
    model = tiny_random_llama(seed=0, intermediate_size=192)  # every width a multiple of 32: all quantized
    original = {name: m.weight.detach().clone() for name, m in select_targets(model).items()}
    info = AutoRoundPeer().apply(model, AutoRoundPeer.Params(symmetric=True, **FEW),
                                 make_context(n_samples=4, seqlen=32))
    conversion = info["conversion"]
    assert info["peer"] == "auto-round" and info["peer_version"] and info["calibration_windows"] == 4
    assert conversion["exact"] and conversion["formats"] == {"packed": 14} and not info["left_dense_by_auto_round"]
    assert "model_cast" not in info and next(model.parameters()).dtype == torch.float32
    for name, layer in select_targets(model).items():
        assert isinstance(layer, QuantizedLinear) and layer.bits == 4 and layer.symmetric and layer.group_size == 16
        codes = layer.unpack_codes()
        assert int(codes.max()) <= 15
        weight = layer.dequantize()
        assert not torch.equal(weight, original[name])
        # within a group, at most 16 levels, and auto-round's clipping keeps each weight near its original
        assert len(torch.unique(weight[0, :16])) <= 16
        step = layer.scales.float().abs().repeat_interleave(16, dim=1)  # auto-round's symmetric scales may be < 0
        assert bool(((weight - original[name]).abs() <= 1.5 * step + 1e-6).all()), name
    logits = model(torch.randint(0, 200, (1, 8))).logits
    assert torch.isfinite(logits).all()


def test_layers_auto_round_skips_stay_dense_and_are_listed(tiny_llama, make_context):
    widths = {n: m.weight.shape for n, m in select_targets(tiny_llama).items()}
    info = AutoRoundPeer().apply(tiny_llama, AutoRoundPeer.Params(symmetric=False, **FEW),
                                 make_context(n_samples=4, seqlen=32))
    skipped = set(info["left_dense_by_auto_round"])
    assert skipped == {n for n, (o, i) in widths.items() if o % 32 or i % 32}  # the 176-wide MLPs
    assert info["conversion"]["exact"] and info["conversion"]["layers"] == 14 - len(skipped) > 0
    for name, layer in select_targets(tiny_llama).items():
        assert layer_kind(layer) == ("dense" if name in skipped else "quantized")
        if name not in skipped:
            assert not layer.symmetric
