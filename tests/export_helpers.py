"""Shared builders for the export tests: tiny Llamas with a given layer format."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from paqbench.models.embedded import tiny_random_llama
from paqbench.quant.linear import QuantizedLinear, replace_module
from paqbench.quant.quantizer import QuantConfig

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (pip install 'llama-cpp-python>=0.3'); CI installs it",
)
needs_compressed_tensors = pytest.mark.skipif(
    importlib.util.find_spec("compressed_tensors") is None,
    reason="compressed-tensors is not installed (pip install 'compressed-tensors>=0.20'); CI installs it",
)


def decoder_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n]


def quantize_decoder(model: nn.Module, config: QuantConfig) -> nn.Module:
    """RTN every decoder Linear into a QuantizedLinear."""
    for name, linear in decoder_linears(model):
        replace_module(model, name, QuantizedLinear.from_linear(linear, config))
    return model


def tiny_quantized(bits: int = 4, group_size: int = 32, symmetric: bool = True, **overrides) -> nn.Module:
    return quantize_decoder(tiny_random_llama(seed=0, **overrides), QuantConfig(bits, group_size, symmetric))


def window_ids(n: int = 2, seqlen: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, seqlen), generator=generator)
