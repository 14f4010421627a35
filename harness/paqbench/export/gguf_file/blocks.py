"""GGML's Q4_0, Q4_1 and Q8_0 blocks built from paqbench's codes, without re-rounding.

A block is 32 consecutive input columns of one row (ggml-common.h, gguf-py quants.py):

- Q4_0: ``d`` (float16), 16 bytes of nibbles (byte ``j`` = element ``j`` in the low
  nibble, element ``j + 16`` in the high one); value ``(q - 8) * d``.
- Q4_1: ``d``, ``m`` (float16 each), the same nibbles; value ``q * d + m``.
- Q8_0: ``d`` (float16), 32 int8; value ``q * d``.

paqbench's ``(code - zero) * scale`` maps onto these with ``d = scale`` (already float16)
and ``q = code`` (Q4_0, zero 8), ``q = code - 128`` (Q8_0, zero 128) or ``m = -zero *
scale`` rounded to float16 (Q4_1: the only rounding added).
"""

from __future__ import annotations

import numpy as np
import torch

from paqbench.export.grid import GGUF_BLOCK, IntegerGrid, block_groups, per_block


def _blocks(grid: IntegerGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes ``[out, nb, 32]`` and the block's scale and zero ``[out, nb]``."""
    groups = block_groups(grid.g_idx, GGUF_BLOCK)
    if groups is None:
        raise ValueError("the groups do not cover whole 32-column blocks")
    out, width = grid.codes.shape
    codes = grid.codes.view(out, width // GGUF_BLOCK, GGUF_BLOCK)
    return codes, per_block(grid.scales, groups), per_block(grid.zeros, groups)


def _nibbles(codes: torch.Tensor) -> np.ndarray:
    low, high = codes[..., :16], codes[..., 16:]
    return (low | (high << 4)).to(torch.uint8).numpy()


def _f16_bytes(values: torch.Tensor) -> np.ndarray:
    return values.to(torch.float16).contiguous().numpy().view(np.uint8).reshape(*values.shape, 2)


def q4_0(grid: IntegerGrid) -> np.ndarray:
    """``[out, nb * 18]`` bytes of a symmetric 4-bit grid (every zero is 8)."""
    codes, scales, zeros = _blocks(grid)
    if grid.bits != 4 or not bool((zeros == 8).all()):
        raise ValueError("Q4_0 holds 4-bit codes with zero point 8 only")
    rows = np.concatenate([_f16_bytes(scales), _nibbles(codes)], axis=-1)
    return rows.reshape(codes.shape[0], -1)


def q4_1(grid: IntegerGrid) -> np.ndarray:
    """``[out, nb * 20]`` bytes of a 4-bit grid: ``m = -zero * scale`` rounded to float16."""
    codes, scales, zeros = _blocks(grid)
    if grid.bits != 4:
        raise ValueError("Q4_1 holds 4-bit codes only")
    minimum = -zeros.float() * scales.float()
    rows = np.concatenate([_f16_bytes(scales), _f16_bytes(minimum), _nibbles(codes)], axis=-1)
    return rows.reshape(codes.shape[0], -1)


def q8_0(grid: IntegerGrid) -> np.ndarray:
    """``[out, nb * 34]`` bytes of a symmetric 8-bit grid (every zero is 128)."""
    codes, scales, zeros = _blocks(grid)
    if grid.bits != 8 or not bool((zeros == 128).all()):
        raise ValueError("Q8_0 holds 8-bit codes with zero point 128 only")
    signed = (codes.to(torch.int16) - 128).to(torch.int8).numpy().view(np.uint8)
    rows = np.concatenate([_f16_bytes(scales), signed], axis=-1)
    return rows.reshape(codes.shape[0], -1)


WRITERS = {"Q4_0": q4_0, "Q4_1": q4_1, "Q8_0": q8_0}
