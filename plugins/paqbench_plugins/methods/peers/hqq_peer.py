"""hqq-lib: the ``hqq`` package's own half-quadratic quantizer (``HQQLinear``) as a step.

paqbench has its own ``hqq`` method (integer zero points, packed codes); this adapter runs
the library's implementation so the two can be compared under one protocol. HQQ's
optimized zero points are floats (``W = (Wq - zero) * scale`` with a fractional ``zero``),
which paqbench's packed integer grid cannot hold, so each layer is converted into a dense
Linear holding exactly ``HQQLinear.dequantize()`` (the weight its forward multiplies by):
quality metrics measure hqq's model bit for bit; storage and speed are the dense model's,
and the record says so, with the storage hqq's own layout would take.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from paqbench import Params, RunContext, hookimpl
from paqbench.blockwise.steps import checked_targets
from paqbench.peers import ConversionRecord, Peer, PeerMethod
from paqbench.peers.convert import install_dense, layer_facts
from paqbench.peers.params import RequireExact
from paqbench.quant.params import Targets
from paqbench.text import prose

PEER = Peer(module="hqq", distribution="hqq", extra="hqq")

DENSE_NOTE = ("hqq's zero points are floats: held as dense weights (quality exact; storage and speed are the dense "
              "model's, see peer_storage_bits_per_weight)")


class HQQLibParams(Params):
    bits: Literal[1, 2, 3, 4, 8] = Field(4, description="bits per weight code (hqq supports 1, 2, 3, 4, 8)")
    group_size: int = Field(
        64, gt=0, description="weights per scale and zero point along `axis` (hqq groups the flattened weight: "
        "a size that does not divide the width makes groups run across rows)"
    )
    axis: Literal[0, 1] = Field(1, description="hqq's grouping axis (1: along input columns, its default)")
    require_exact: RequireExact = False
    targets: Targets = None


class HQQLib(PeerMethod):
    name = "hqq-lib"
    family = "quantize"
    peer = PEER
    description = prose("""
        The hqq package's HQQLinear (peer implementation of half-quadratic quantization; paqbench's own is `hqq`):
        `bits` with `group_size` along `axis`, data-free. hqq's float zero points have no integer code, so each layer
        becomes a dense Linear of HQQLinear.dequantize() exactly (record: conversion, peer_storage_bits_per_weight).
        Needs hqq (pip install 'paqbench[hqq]'). Cost: hqq's proximal iterations, seconds to a minute for a 135M model
        on CPU.
    """)
    Params = HQQLibParams
    accepts = frozenset({"dense"})

    @torch.no_grad()
    def apply(self, model: nn.Module, params: HQQLibParams, ctx: RunContext) -> dict[str, Any]:
        PEER.load()
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        targets = checked_targets(model, params.targets, self, ctx)
        names = list(targets)
        straddling = [n for n, m in targets.items() if params.axis == 1 and m.in_features % params.group_size]
        del targets
        config = BaseQuantizeConfig(nbits=params.bits, group_size=params.group_size, axis=params.axis)
        record = ConversionRecord()
        meta_bits = 0
        for name in ctx.progress(names, "hqq-lib", total=len(names)):
            linear = model.get_submodule(name)
            bias, mask, dtype = layer_facts(linear)
            device = linear.weight.device
            layer = HQQLinear(linear, config, del_orig=False, compute_dtype=dtype, device=str(device))
            weight = layer.dequantize().reshape(linear.out_features, linear.in_features)
            meta_bits = max(meta_bits, sum(8 * layer.meta[k].element_size() for k in ("scale", "zero")))
            record.add(install_dense(model, name, weight, bias, mask, dtype, DENSE_NOTE))
            del layer, linear
        record.check(params.require_exact, "hqq")
        # hqq's own storage: the codes, and a scale and a zero per group in its compute dtype (the model's)
        storage = params.bits + meta_bits / params.group_size
        facts = {**PEER.facts(), "bits": params.bits, "group_size": params.group_size, "axis": params.axis,
                 "peer_storage_bits_per_weight": storage, **record.summary()}
        if straddling:
            facts["groups_across_rows"] = straddling
        return facts


@hookimpl
def paqbench_register_methods(register):
    register(HQQLib)
