"""Load a model paqbench saved after compression, from its directory alone.

Sits above :mod:`paqbench.structure` and :mod:`paqbench.quant`: loading needs both
(shrunk blocks, then quantized layers, via :func:`paqbench.quant.linear.load_quantized`),
and neither of them needs this module.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from paqbench.quant.linear import load_quantized


def load_structured(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> nn.Module:
    """Load a causal LM saved after structured pruning (and any quantization): build it
    from its saved config, shrink blocks to their recorded sizes, load the weights.
    Uniformly pruned or layer-dropped models also load with plain ``from_pretrained``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path))
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = AutoModelForCausalLM.from_config(config, **kwargs)
    if device is not None:
        model.to(device)
    load_quantized(model, path)
    return model.eval()
