"""Bit packing of integer codes into bytes.

Codes of ``bits`` bits (1 to 8) are packed along the last dimension into ``uint8``,
little-endian in bit order: code ``j`` of a row occupies bits ``j*bits .. j*bits+bits-1``
of the row's bit stream, and bit ``b`` of the stream lies in byte ``b // 8`` at position
``b % 8``. Widths that divide 8 (1, 2, 4, 8) never straddle a byte; the others (3, 5,
6, 7) do, so a row of ``n`` codes takes exactly ``ceil(n * bits / 8)`` bytes and a 3-bit
model really is 3 bits per weight on disk. Each row is packed on its own, so slicing
rows never needs repacking.
"""

from __future__ import annotations

import math

import torch

SUPPORTED_BITS = frozenset(range(1, 9))


def packed_length(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits take in one packed row."""
    _check_bits(bits)
    return math.ceil(n * bits / 8)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer ``codes`` (values in ``[0, 2**bits)``) along the last dimension into
    ``uint8``; the result's last dimension is :func:`packed_length`."""
    _check_bits(bits)
    if codes.is_floating_point() or codes.is_complex():
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    n = codes.shape[-1]
    lead = codes.shape[:-1]
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {1 << bits}) for {bits}-bit packing")
    codes = codes.to(torch.uint8)
    if bits == 8:
        return codes.contiguous()
    if 8 % bits == 0:
        per_byte = 8 // bits
        padded = _pad_last(codes, math.ceil(n / per_byte) * per_byte)
        parts = padded.view(*lead, -1, per_byte)
        out = torch.zeros(parts.shape[:-1], dtype=torch.uint8, device=codes.device)
        for j in range(per_byte):
            out |= parts[..., j] << (bits * j)
        return out
    # Widths that straddle bytes: spell every code out as bits, then regroup by 8.
    positions = torch.arange(bits, device=codes.device, dtype=torch.uint8)
    stream = ((codes.unsqueeze(-1) >> positions) & 1).reshape(*lead, n * bits)
    stream = _pad_last(stream, packed_length(n, bits) * 8).view(*lead, -1, 8)
    weights = torch.arange(8, device=codes.device, dtype=torch.uint8)
    return (stream << weights).sum(dim=-1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``n`` codes of each row, as ``uint8``."""
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed codes must be uint8, got {packed.dtype}")
    if packed.shape[-1] != packed_length(n, bits):
        raise ValueError(
            f"{packed.shape[-1]} bytes per row cannot hold {n} codes of {bits} bits "
            f"(expected {packed_length(n, bits)})"
        )
    lead = packed.shape[:-1]
    if bits == 8:
        return packed.clone()
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        per_byte = 8 // bits
        shifts = torch.arange(0, 8, bits, device=packed.device, dtype=torch.uint8)
        codes = (packed.unsqueeze(-1) >> shifts) & mask
        return codes.reshape(*lead, packed.shape[-1] * per_byte)[..., :n].contiguous()
    positions = torch.arange(8, device=packed.device, dtype=torch.uint8)
    stream = ((packed.unsqueeze(-1) >> positions) & 1).reshape(*lead, -1)[..., : n * bits]
    weights = torch.arange(bits, device=packed.device, dtype=torch.uint8)
    return (stream.reshape(*lead, n, bits) << weights).sum(dim=-1, dtype=torch.uint8)


def _pad_last(tensor: torch.Tensor, length: int) -> torch.Tensor:
    extra = length - tensor.shape[-1]
    if extra == 0:
        return tensor.contiguous()
    pad = torch.zeros(*tensor.shape[:-1], extra, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([tensor, pad], dim=-1)


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be between 1 and 8, got {bits}")
