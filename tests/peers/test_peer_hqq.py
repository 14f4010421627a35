"""hqq-lib: the hqq package's HQQLinear as a step, held as dense weights bit for bit."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("hqq", reason="hqq is not installed (CI installs it: pip install 'paqbench[hqq]')")

from paqbench.layers import layer_kind, select_targets
from paqbench.layers.kinds import UnsupportedLayerError
from paqbench_plugins.methods.peers.hqq_peer import HQQLib
from paqbench_plugins.methods.prune.magnitude import Magnitude

pytestmark = pytest.mark.usefixtures("one_thread")


def hqq_reference(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """HQQLinear's dequantized weight of one Linear, quantized outside paqbench."""
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data.copy_(weight)
    layer = HQQLinear(linear, BaseQuantizeConfig(nbits=bits, group_size=group_size), compute_dtype=weight.dtype,
                      device="cpu")
    return layer.dequantize().reshape(weight.shape)


@pytest.mark.parametrize(("bits", "group_size"), [(4, 16), (3, 32)])
def test_hqq_lib_layers_hold_hqqs_weights_bit_for_bit(tiny_llama, make_context, bits, group_size):
    original = {name: m.weight.detach().clone() for name, m in select_targets(tiny_llama).items()}
    info = HQQLib().apply(tiny_llama, HQQLib.Params(bits=bits, group_size=group_size), make_context())
    conversion = info["conversion"]
    assert info["peer"] == "hqq" and info["peer_version"]
    assert conversion["exact"] and conversion["formats"] == {"dense": 14}
    assert "dense weights" in conversion["notes"][0]
    assert info["peer_storage_bits_per_weight"] == bits + 64 / group_size  # float32 scale and zero per group
    for name, layer in select_targets(tiny_llama).items():
        assert layer_kind(layer) == "dense"
        reference = hqq_reference(original[name], bits, group_size)
        assert torch.equal(layer.weight, reference), name
        assert len(torch.unique(layer.weight[0, :group_size])) <= 2**bits  # one group: at most 2**bits levels
        assert not torch.equal(layer.weight, original[name])


def test_groups_running_across_rows_are_named(tiny_llama, make_context):
    info = HQQLib().apply(tiny_llama, HQQLib.Params(group_size=128), make_context())
    assert info["groups_across_rows"] and all("down_proj" in n or "o_proj" in n or "proj" in n
                                               for n in info["groups_across_rows"])
    widths = {n: m.in_features for n, m in select_targets(tiny_llama).items()}
    assert set(info["groups_across_rows"]) == {n for n, w in widths.items() if w % 128}


def test_pruned_layers_are_refused_not_unpruned(tiny_llama, make_context):
    ctx = make_context()
    Magnitude().apply(tiny_llama, Magnitude.Params(sparsity=0.5), ctx)
    with pytest.raises(UnsupportedLayerError, match="it is pruned"):
        HQQLib().apply(tiny_llama, HQQLib.Params(), ctx)
