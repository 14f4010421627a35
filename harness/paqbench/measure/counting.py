"""Parameter, storage-bit and MAC counts of a model, packed and pruned layers included.

Library code rather than part of the ``params`` metric: pruning methods report the
parameter count before and after, and the ``storage`` metric divides by it, so every
caller counts the same way without importing a plugin.
"""

from __future__ import annotations

import torch

from paqbench.layers.contract import CompressedLayer, accounted_layers


def linear_macs(model: torch.nn.Module) -> tuple[int, int]:
    """(dense, nonzero) multiply-accumulates of all linear layers for one token.

    Counts every layer that computes a matmul (``nn.Linear`` and layer formats, which say
    what they compute with ``paqbench_macs``: an embedding 0, a tied head its logits), the
    LM head included, by the size of the matmul it really computes: a structurally pruned
    layer counts its smaller weight (a wrapper is a container; its inner layer counts)."""
    dense = nonzero = 0
    for module in model.modules():
        if isinstance(module, CompressedLayer):
            if module.container:
                continue
            module_dense, module_nonzero = module.paqbench_macs()
            dense += int(module_dense)
            nonzero += int(module_nonzero)
        elif isinstance(module, torch.nn.Linear):
            dense += module.weight.numel()
            nonzero += int(torch.count_nonzero(module.weight))
    return dense, nonzero


def attention_macs(config, seqlen: int) -> int:
    """Score and value MACs of causal self-attention per token, averaged over a sequence
    of ``seqlen`` tokens: token i attends to i+1 positions, so the mean context is
    (seqlen + 1) / 2; QK^T and AV each cost heads x head_dim per position."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    structure = getattr(config, "paqbench_structure", None)  # per-block heads after structured pruning
    total_heads = sum(structure["num_attention_heads"]) if structure else layers * heads
    return round(2 * total_heads * head_dim * (seqlen + 1) / 2)


def count_parameters(model: torch.nn.Module) -> tuple[int, int, int]:
    """(total, nonzero, storage bits) over the unique parameters.

    Tied weights count once. A layer format (:class:`paqbench.CompressedLayer`) reports
    its logical size itself (``paqbench_numel()``, ``paqbench_nonzero()``,
    ``paqbench_storage_bits()``: packed codes, scales and zero points are buffers, not
    parameters); then its own tensors are not counted again. A structured-pruning wrapper
    is a container: its inner layer is counted.
    """
    total = nonzero = bits = 0
    custom = accounted_layers(model)
    covered: set[int] = set()
    for module in custom:
        total += int(module.paqbench_numel())
        nonzero += int(module.paqbench_nonzero())
        bits += int(module.paqbench_storage_bits())
        for tensor in list(module.parameters()) + list(module.buffers()):
            covered.add(id(tensor))
    seen: set[int] = set()
    for tensor in model.parameters():
        if id(tensor) in seen or id(tensor) in covered:
            continue
        seen.add(id(tensor))
        total += tensor.numel()
        nonzero += int(torch.count_nonzero(tensor))
        bits += tensor.numel() * tensor.element_size() * 8
    return total, nonzero, bits


def layer_counts(module: torch.nn.Module) -> tuple[int, int, int]:
    """(logical weights, zero weights, storage bits) of one target layer."""
    if isinstance(module, CompressedLayer):
        numel = int(module.paqbench_numel())
        return numel, numel - int(module.paqbench_nonzero()), int(module.paqbench_storage_bits())
    weight = module.weight
    zeros = int(weight.numel() - torch.count_nonzero(weight))
    return weight.numel(), zeros, weight.numel() * weight.element_size() * 8


def layer_shape(module: torch.nn.Module) -> list[int]:
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return list(weight.shape)
    return [int(getattr(module, "out_features", 0)), int(getattr(module, "in_features", 0))]
