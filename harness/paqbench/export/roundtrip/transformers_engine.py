"""transformers on CPU: logits of a compressed-tensors checkpoint on given token ids."""

from __future__ import annotations

from pathlib import Path

import torch

from paqbench.export.roundtrip.compare import model_logits


def logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    """Load ``directory`` with ``AutoModelForCausalLM.from_pretrained`` (compressed-tensors
    decompresses the packed layers) in float32 on CPU and run each window."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, device_map="cpu")
    model.eval()
    try:
        return model_logits(model, ids)
    finally:
        del model
