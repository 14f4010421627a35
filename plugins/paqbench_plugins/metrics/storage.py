"""Storage: the bytes of the model as the run saves it (safetensors), and bits per
weight. The ratio to the baseline is in the report's change column."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Literal

import torch
from pydantic import Field

from paqbench import Measurement, Metric, Params, RunContext, hookimpl
from paqbench.measure.counting import count_parameters

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class StorageParams(Params):
    dtype: Literal["model", "float16", "bfloat16", "float32"] = Field(
        "model", description="save floating-point tensors in this dtype (model: as they are)"
    )


class Storage(Metric):
    name = "storage"
    description = "Bytes on disk of the model saved with save_pretrained (safetensors), and bits per weight."
    Params = StorageParams

    def measure(self, model: torch.nn.Module, params: StorageParams, ctx: RunContext) -> Iterator[Measurement]:
        target = ctx.scratch_dir / "storage-checkpoint"
        began = time.perf_counter()
        state_dict = None
        if params.dtype != "model":
            dtype = _DTYPES[params.dtype]
            state_dict = _cast_once(model.state_dict(), dtype)
        model.save_pretrained(target, safe_serialization=True, state_dict=state_dict)
        seconds = time.perf_counter() - began
        files = sorted(target.glob("*.safetensors"))
        weight_bytes = sum(f.stat().st_size for f in files)
        total_params, _, _ = count_parameters(model)
        details = {"files": [f.name for f in files], "save_seconds": seconds, "dtype": params.dtype}
        yield self.make("checkpoint", weight_bytes, "bytes", "lower", details=details)
        yield self.make("bits_per_weight", weight_bytes * 8 / total_params, "bits", "lower")
        shutil.rmtree(target, ignore_errors=True)


def _cast_once(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Float tensors of 16 bits or more cast to ``dtype``, each shared tensor kept once
    (under its first name): casting makes copies, and save_pretrained would then store a
    tied LM head and its embedding twice. Narrower floats (FP8 weights, e8m0 scales) are
    already a storage format, not float weights: widening them would double their bytes."""
    seen: set[tuple[int, tuple[int, ...]]] = set()
    cast = {}
    for key, tensor in state_dict.items():
        identity = (tensor.data_ptr(), tuple(tensor.shape))
        if tensor.numel() and identity in seen:
            continue
        seen.add(identity)
        cast[key] = tensor.to(dtype) if tensor.is_floating_point() and tensor.element_size() >= 2 else tensor
    return cast


@hookimpl
def paqbench_register_metrics(register):
    register(Storage)
