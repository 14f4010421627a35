"""torchao: ``quantize_`` with its int4 / int8 weight-only and int8 dynamic-activation configs.

torchao quantizes the targeted Linears in place (tensor-subclass weights); each is then
converted into paqbench's layers (:mod:`paqbench.peers.convert`): weight-only schemes into
packed QuantizedLinear codes, int8 dynamic activation into Int8DynamicLinear, each checked
bitwise against torchao's own dequantized weight and the outcome recorded.

What runs on CPU with torch 2.13 / torchao 0.18 (docs/peers.md): ``Int4WeightOnlyConfig``
does not (its plain and preshuffled layouts need ``mslk``, the others CUDA), and its
tinygemm grid has float zero points that packed codes cannot hold; so ``int4-weight-only``
is ``IntxWeightOnlyConfig(weight_dtype=torch.int4)``, torchao's CPU path, with float16
scales (bitwise exact in QuantizedLinear). ``int8-weight-only`` and
``int8-dynamic-activation`` are ``Int8WeightOnlyConfig`` and
``Int8DynamicActivationInt8WeightConfig`` (float32 scales: recorded as not exact).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from paqbench import Params, RunContext, hookimpl
from paqbench.blockwise.steps import checked_targets
from paqbench.peers import ConversionRecord, Peer, PeerMethod
from paqbench.peers.convert import (
    install_int8_dynamic,
    install_packed,
    int8_activation_note,
    integer_weight,
    layer_facts,
)
from paqbench.peers.params import RequireExact, RowGroupSize
from paqbench.quant.params import Targets
from paqbench.text import prose

PEER = Peer(module="torchao", distribution="torchao", extra="torchao")



class TorchAOParams(Params):
    scheme: Literal["int4-weight-only", "int8-weight-only", "int8-dynamic-activation"] = Field(
        "int4-weight-only", description="torchao config: int4-weight-only (IntxWeightOnlyConfig int4, the CPU "
        "path), int8-weight-only (Int8WeightOnlyConfig), int8-dynamic-activation "
        "(Int8DynamicActivationInt8WeightConfig)"
    )
    group_size: RowGroupSize = Field(
        128, ge=-1, description="input columns per scale (int4 and int8 weight-only); -1: one per output row. "
        "int8-dynamic-activation is always per row. Must divide every targeted layer's width"
    )
    symmetric: bool = Field(
        True, description="int4-weight-only: symmetric grid (MappingType.SYMMETRIC), else asymmetric"
    )
    require_exact: RequireExact = False
    targets: Targets = None


def torchao_config(torchao: Any, params: TorchAOParams, in_features: int) -> Any:
    """The torchao config object for ``params`` (one per layer width: -1 groups = the width)."""
    q = torchao.quantization
    group = in_features if params.group_size == -1 else params.group_size
    if params.scheme == "int4-weight-only":
        mapping = q.MappingType.SYMMETRIC if params.symmetric else q.MappingType.ASYMMETRIC
        return q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=q.PerGroup(group),
                                      mapping_type=mapping, scale_dtype=torch.float16)
    if params.scheme == "int8-weight-only":
        return q.Int8WeightOnlyConfig(granularity=q.PerGroup(group) if params.group_size != -1 else q.PerRow())
    return q.Int8DynamicActivationInt8WeightConfig()


def peer_weight(weight: Any) -> torch.Tensor:
    """torchao's dequantized weight in float32 (what its own ``dequantize`` computes before
    casting to the layer's dtype), for Int8Tensor and IntxUnpackedToInt8Tensor alike."""
    from torchao.quantization.quant_primitives import _DTYPE_TO_QVALUE_BOUNDS, dequantize_affine

    qmin, qmax = _DTYPE_TO_QVALUE_BOUNDS[getattr(weight, "target_dtype", torch.int8)]
    return dequantize_affine(weight.qdata, list(weight.block_size), weight.scale, weight.zero_point, torch.int8,
                             qmin, qmax, output_dtype=torch.float32)


class TorchAO(PeerMethod):
    name = "torchao"
    family = "quantize"
    peer = PEER
    description = prose("""
        torchao's quantize_ (peer implementation) with int4-weight-only (IntxWeightOnlyConfig int4, group-wise, float16
        scales), int8-weight-only or int8-dynamic-activation configs; each layer is converted into paqbench's packed
        QuantizedLinear / Int8DynamicLinear and checked bitwise against torchao's dequantized weight (record:
        conversion.exact, differences and why). Needs torchao (pip install 'paqbench[torchao]'). Cost: one
        round-to-nearest pass, seconds.
    """)
    Params = TorchAOParams
    accepts = frozenset({"dense", "pruned"})

    @torch.no_grad()
    def apply(self, model: nn.Module, params: TorchAOParams, ctx: RunContext) -> dict[str, Any]:
        torchao = PEER.load()
        targets = checked_targets(model, params.targets, self, ctx)
        widths = {name: module.in_features for name, module in targets.items()}
        grouped = params.group_size != -1 and params.scheme != "int8-dynamic-activation"
        for name, width in widths.items():
            if grouped and width % params.group_size:
                common = math.gcd(*widths.values())
                raise ValueError(f"torchao needs group_size to divide every width; {name} has {width} input "
                                 f"columns, not a multiple of {params.group_size} (every width here is a "
                                 f"multiple of {common})")
        facts = {name: layer_facts(module) for name, module in targets.items()}
        del targets
        record = ConversionRecord()
        for name in ctx.progress(list(widths), "torchao", total=len(widths)):
            bias, mask, dtype = facts.pop(name)
            holder = nn.Sequential(model.get_submodule(name))  # quantize_ replaces weights of this Linear only
            torchao.quantization.quantize_(holder, torchao_config(torchao, params, widths[name]))
            record.add(self._convert(model, name, holder[0].weight, params, bias, mask, dtype))
            del holder
        record.check(params.require_exact, "torchao")
        return {**PEER.facts(), "scheme": params.scheme, "group_size": params.group_size, **record.summary()}

    @staticmethod
    def _convert(model: nn.Module, name: str, weight: Any, params: TorchAOParams, bias, mask, dtype):
        reference = peer_weight(weight)
        if params.scheme == "int8-dynamic-activation":
            return install_int8_dynamic(model, name, weight.qdata, weight.scale, reference,
                                        int8_activation_note("torchao"), bias, mask, dtype)
        bits = 4 if params.scheme == "int4-weight-only" else 8
        quantized, note = integer_weight(weight.qdata, weight.scale, weight.zero_point, bits, -(1 << (bits - 1)))
        return install_packed(model, name, quantized, reference, note, bias, mask, dtype)


@hookimpl
def paqbench_register_methods(register):
    register(TorchAO)
