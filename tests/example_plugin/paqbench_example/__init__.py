"""A third-party paqbench plugin, packaged on its own and found through the
``paqbench`` entry point. The README's plugin guide walks through this file."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from pydantic import Field

from paqbench import Measurement, Method, Metric, NoParams, Params, RunContext, hookimpl
from paqbench.layers import check_supported, select_targets


class NoiseParams(Params):
    sigma: float = Field(0.01, ge=0.0, description="noise std, relative to each layer's weight std")
    targets: str | None = Field(None, description="regex over module names (default: decoder linears)")


class GaussianNoise(Method):
    """Adds seeded Gaussian noise to the targeted weights: a control that shows how
    much damage a metric notices."""

    name = "gaussian-noise"
    family = "other"
    description = "Add seeded Gaussian noise (sigma x the layer's weight std) to each targeted weight."
    Params = NoiseParams
    accepts = frozenset({"dense"})

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, params: NoiseParams, ctx: RunContext) -> dict[str, int]:
        targets = select_targets(model, params.targets)
        check_supported(targets, self.accepts, self.name, ctx.current_step)
        generator = torch.Generator().manual_seed(ctx.seed)
        for module in targets.values():
            weight = module.weight
            noise = torch.randn(weight.shape, generator=generator) * weight.float().std() * params.sigma
            weight.add_(noise.to(weight.dtype).to(weight.device))
        return {"layers": len(targets)}


class WeightNorm(Metric):
    name = "weight-norm"
    description = "Frobenius norm of all targeted linear weights (a cheap fingerprint of the model)."

    @torch.no_grad()
    def measure(self, model: torch.nn.Module, params: NoParams, ctx: RunContext) -> Iterator[Measurement]:
        total = sum(float(m.weight.float().pow(2).sum()) for m in select_targets(model).values())
        yield self.make("frobenius", total**0.5, "", None)


@hookimpl
def paqbench_register_methods(register):
    register(GaussianNoise)


@hookimpl
def paqbench_register_metrics(register):
    register(WeightNorm)
