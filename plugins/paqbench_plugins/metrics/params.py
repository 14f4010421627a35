"""Parameter counts: total, nonzero, sparsity, and bits per weight, overall and per
module, so a method that silently skipped layers shows up in the report."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from pydantic import Field

from paqbench import Measurement, Metric, Params, RunContext, hookimpl
from paqbench.layers import layer_kind, select_targets
from paqbench.measure.counting import attention_macs, count_parameters, layer_counts, layer_shape, linear_macs


class ParamsParams(Params):
    per_module: bool = Field(True, description="record sparsity and bits of each targeted layer")
    seqlen: int = Field(2048, gt=0, description="sequence length for MACs per token")


class ParamsMetric(Metric):
    name = "params"
    description = (
        "Total and nonzero parameters, overall sparsity, sparsity of the targeted linear layers, bits per weight, "
        "and MACs per token (linear layers incl. LM head + causal attention averaged over seqlen)."
    )
    Params = ParamsParams

    @torch.no_grad()
    def measure(self, model: torch.nn.Module, params: ParamsParams, ctx: RunContext) -> Iterator[Measurement]:
        total, nonzero, bits = count_parameters(model)
        yield self.make("total", total, "params", None)
        yield self.make("nonzero", nonzero, "params", "lower")
        yield self.make("sparsity", 1 - nonzero / total, "fraction", None)
        targets = select_targets(model)
        per_module = {}
        t_total = t_zero = 0
        for name, module in targets.items():
            numel, zeros, layer_bits = layer_counts(module)
            t_total += numel
            t_zero += zeros
            per_module[name] = {
                "kind": layer_kind(module),
                "format": type(module).__name__,
                **({"kernel": module.kernel} if isinstance(getattr(module, "kernel", None), str) else {}),
                "shape": layer_shape(module),
                "sparsity": zeros / numel,
                "bits": layer_bits / numel,
            }
        yield self.make(
            "linear_sparsity", t_zero / t_total, "fraction", None,
            details={"per_module": per_module} if params.per_module else {},
        )
        yield self.make("bits_per_weight", bits / total, "bits", "lower")
        dense_macs, nonzero_macs = linear_macs(model)
        attention = attention_macs(model.config, params.seqlen) if hasattr(model, "config") else 0
        details = {"seqlen": params.seqlen, "linear": dense_macs, "attention": attention}
        yield self.make("macs_per_token", dense_macs + attention, "MACs", "lower", details=details)
        yield self.make("nonzero_macs_per_token", nonzero_macs + attention, "MACs", "lower",
                        details={"seqlen": params.seqlen, "note": "zeros skipped, as a sparse kernel could"})


@hookimpl
def paqbench_register_metrics(register):
    register(ParamsMetric)
