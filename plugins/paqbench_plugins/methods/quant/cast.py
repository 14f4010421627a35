"""cast: run the model in float16 or bfloat16 (weights and activations).

The simplest precision reduction, and the one deployments apply anyway: dense weights
take half the bytes of float32, and packed low-bit layers get half-precision
activations, which is what the CPU int4/int8 kernels need
(:mod:`paqbench.quant.kernels`: with float32 activations they are slower than a dense
matmul, so the reference path runs instead). Placed after a quantizer in a pipeline,
this turns "4-bit codes dequantized on every call" into "a real int4 matmul".

Packed layers keep their float16 scales (they are part of the stored format); only their
bias and the dtype of what they return follow the cast.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import torch
from pydantic import Field

from paqbench import Method, Params, RunContext, hookimpl
from paqbench.text import prose

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class CastParams(Params):
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="floating dtype of the weights and activations after this step"
    )


def _float_dtypes(model: torch.nn.Module) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for parameter in model.parameters():
        if parameter.is_floating_point():
            counts[str(parameter.dtype).removeprefix("torch.")] += parameter.numel()
    return dict(counts)


class Cast(Method):
    name = "cast"
    family = "quantize"
    description = prose("""
        Cast the model to `dtype` (bfloat16, float16 or float32): dense weights, biases and activations. Packed
        quantized layers keep their codes and float16 scales; with half-precision activations they can use the CPU
        int4/int8 kernels. The transformers config's dtype follows, so a saved checkpoint reloads in it. Cost: one pass
        over the weights.
    """)
    Params = CastParams
    accepts = frozenset({"dense", "pruned", "quantized"})

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, params: CastParams, ctx: RunContext) -> dict[str, Any] | None:
        dtype = _DTYPES[params.dtype]
        before = _float_dtypes(model)
        model.to(dtype=dtype)
        config = getattr(model, "config", None)
        if config is not None:
            # transformers >= 4.56 calls it ``dtype``; older versions ``torch_dtype``.
            setattr(config, "dtype" if hasattr(config, "dtype") else "torch_dtype", dtype)
        return {"from": before, "to": params.dtype}


@hookimpl
def paqbench_register_methods(register):
    register(Cast)
