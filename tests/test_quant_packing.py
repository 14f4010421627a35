"""Bit packing: exact round trips and the documented byte layout, for every width."""

from __future__ import annotations

import math

import pytest
import torch

from paqbench.quant.packing import pack, packed_length, unpack

WIDTHS = [1, 2, 3, 4, 5, 6, 7, 8]
LENGTHS = [1, 3, 7, 8, 13, 64, 577]


def python_pack(row: list[int], bits: int) -> list[int]:
    """Oracle: the row as one little-endian integer bit stream, cut into bytes."""
    stream = sum(code << (j * bits) for j, code in enumerate(row))
    return list(stream.to_bytes(math.ceil(len(row) * bits / 8), "little"))


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("n", LENGTHS)
def test_pack_unpack_round_trip_is_exact(bits, n):
    generator = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 1 << bits, (5, n), generator=generator, dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (5, packed_length(n, bits)) == (5, math.ceil(n * bits / 8))
    assert torch.equal(unpack(packed, bits, n), codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packed_bytes_follow_the_little_endian_bit_stream(bits):
    generator = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (3, 21), generator=generator, dtype=torch.uint8)
    packed = pack(codes, bits)
    for row, packed_row in zip(codes.tolist(), packed.tolist(), strict=True):
        assert packed_row == python_pack(row, bits)


def test_three_bit_codes_straddle_bytes():
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]], dtype=torch.uint8)
    # 8 codes x 3 bits = exactly 3 bytes, worked out by hand from the bit stream
    assert pack(codes, 3).tolist() == [[209, 88, 31]]


def test_four_bit_packs_low_nibble_first():
    codes = torch.tensor([[0x1, 0xF, 0x7]], dtype=torch.uint8)
    assert pack(codes, 4).tolist() == [[0xF1, 0x07]]


def test_leading_dimensions_are_kept_and_int_dtypes_accepted():
    codes = torch.randint(0, 8, (2, 3, 11), dtype=torch.int64)
    packed = pack(codes, 3)
    assert packed.shape == (2, 3, 5)
    assert torch.equal(unpack(packed, 3, 11), codes.to(torch.uint8))


def test_out_of_range_codes_and_bad_widths_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        pack(torch.tensor([[16]]), 4)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        pack(torch.tensor([[-1]]), 4)
    with pytest.raises(TypeError):
        pack(torch.tensor([[1.0]]), 4)
    with pytest.raises(ValueError, match="between 1 and 8"):
        pack(torch.tensor([[1]]), 9)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack(torch.zeros(1, 2, dtype=torch.uint8), 3, 8)
