"""Pick the device and dtype a suite asked for ('auto' picks what the machine has), and
find where a loaded model takes its input ids."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for, but torch sees no CUDA device here")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def input_device(model: torch.nn.Module) -> torch.device:
    """Where input ids must go: the input embedding's device (also right for models that
    accelerate spreads over several devices; a packed token table has only buffers)."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embedding is not None:
        for tensor in (*embedding.parameters(), *embedding.buffers()):
            return tensor.device
    return next(model.parameters()).device
