"""NF4: 4-bit NormalFloat with blockwise absmax and double quantization (QLoRA).

Dettmers et al. 2023 ("QLoRA") store each weight as a 4-bit index into 16 fixed values
spaced at quantiles of a standard normal (:data:`NF4_TABLE`, the exact table of
bitsandbytes; code 7 is exactly 0.0), scaled by the absolute maximum of its block of
``block_size`` (64) weights. *Double quantization* stores those absmax constants
themselves in 8 bits: their mean is subtracted (one fp32 offset per layer), each tile of
``dq_block`` (256) absmax values gets an fp32 scale (its own absmax), and each value
becomes an index into bitsandbytes' signed 8-bit dynamic map (:func:`dynamic_map`).

``W[o, i] = NF4_TABLE[code[o, i]] * absmax[o, g_idx[i]]`` with, under double quant,
``absmax[o, b] = DYNAMIC[qabsmax[o, b]] * absmax2[r_idx[o], c_idx[b]] + absmax_offset``.

Layout (persistent buffers, so ``save_pretrained`` writes them):

==============  =======  ==========================================================
buffer          dtype    shape and meaning
==============  =======  ==========================================================
qweight         uint8    ``[out, in/2]`` codes, two per byte, packed along the input dim
g_idx           int32    ``[in]`` absmax block of each input column
qabsmax         uint8    ``[out, nb]`` 8-bit absmax codes (double quant)
absmax2         float32  ``[R, C]`` second-level scales, one per tile (double quant)
absmax_offset   float32  ``[1]`` the mean subtracted before double quant
r_idx, c_idx    int32    ``[out]``, ``[nb]`` the tile row / column of each row / block
absmax          float32  ``[out, nb]`` the absmax itself (without double quant)
nf4_meta        int32    ``[block_size, double_quant, in, out, dq_block]``
==============  =======  ==========================================================

Departures from bitsandbytes, and why:

- Blocks run along each row (the last one shorter when ``block_size`` does not divide
  the width) instead of over the flattened tensor, and double-quant tiles are 2-D
  (``max(1, dq_block // nb)`` rows x ``min(nb, dq_block)`` blocks) instead of runs of the
  flattened absmax. When ``block_size`` divides the width and ``nb`` divides
  ``dq_block`` (every Llama projection) this is exactly bitsandbytes' grouping; the
  point is that pruning can slice rows and columns and the result is still exact:
  ``g_idx``, ``r_idx``, ``c_idx`` follow the slices as ``QuantizedLinear.g_idx`` does.
- Codes are chosen against the *stored* (double-quantized) absmax, so what is saved is
  exactly what was optimised; bitsandbytes rounds against the exact absmax.

Storage: ``4 + 8/block_size + 32/(block_size*dq_block)`` bits per weight (4.127 at
64/256) plus ``32*(in + out + nb)`` bits of indices per layer (``32/out + 32/in`` per
weight: 0.016 for a 4096x4096 layer) and the metadata; without double quant
``4 + 32/block_size`` (4.5).

Forward: dequantize, then ``F.linear`` (``kernel == "reference"``). On CUDA, when
``bitsandbytes`` is importable, the layout is bitsandbytes-compatible (contiguous blocks,
a width ``block_size`` divides, a block size it supports) and a probe on random inputs
agrees with the reference, ``bitsandbytes.matmul_4bit`` runs instead
(``kernel == "bitsandbytes-nf4"``), with the dequantized absmax handed over in fp32.
That path is not exercised by paqbench's tests (bitsandbytes is not a dependency).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Unpack

import torch
import torch.nn.functional as F
from torch import nn

from paqbench.layers.contract import LayerOptions
from paqbench.layers.sparsity import get_mask, record_mask
from paqbench.quant import kernels
from paqbench.quant.codebook import CodebookLinear
from paqbench.quant.grouped import GroupedCodes
from paqbench.quant.packing import pack
from paqbench.quant.quantizer import QuantConfig, keep_mask

#: The 16 NormalFloat4 values, exactly as bitsandbytes' ``dDequantizeNF4`` returns them.
NF4_TABLE = torch.tensor(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=torch.float32,
)
#: The code of exactly 0.0.
ZERO_CODE = 7
BITSANDBYTES = "bitsandbytes-nf4"
_BNB_BLOCKS = frozenset({64, 128, 256, 512, 1024, 2048, 4096})


def dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic quantization map (``create_dynamic_map(signed=True,
    max_exponent_bits=7, total_bits=8)``): 256 sorted values in [-0.993, 1], with 0 and 1
    exact; finer near zero (Dettmers 2015, "8-Bit Approximations")."""
    data: list[float] = []
    for i in range(7):
        boundaries = torch.linspace(0.1, 1, 2**i + 1)
        means = ((boundaries[:-1] + boundaries[1:]) / 2.0).tolist()
        data += [10 ** (-6 + i) * m for m in means]
        data += [-(10 ** (-6 + i)) * m for m in means]
    data += [0.0, 1.0]
    return torch.tensor(sorted(data), dtype=torch.float32)


DYNAMIC_MAP = dynamic_map()


def _nearest(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of the sorted ``table``; a value exactly between two
    entries goes to the lower one (bitsandbytes' ``x > midpoint`` thresholds)."""
    table = table.to(values.device)
    return torch.bucketize(values, (table[1:] + table[:-1]) / 2, right=False)


def tiles(out_features: int, n_blocks: int, dq_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r_idx, c_idx)`` of the double-quant tiles: ``min(nb, dq_block)`` blocks wide,
    ``max(1, dq_block // that)`` rows tall, so each holds at most ``dq_block`` absmax."""
    width = min(n_blocks, dq_block)
    height = max(1, dq_block // width)
    r_idx = (torch.arange(out_features) // height).to(torch.int32)
    c_idx = (torch.arange(n_blocks) // width).to(torch.int32)
    return r_idx, c_idx


class NF4Linear(GroupedCodes, CodebookLinear):
    """A linear layer stored as NF4 codes with blockwise (double-quantized) absmax."""

    name = "nf4"
    description = "NormalFloat4 codes times a blockwise (optionally double-quantized) absmax."
    state_marker = "nf4_meta"
    bits = 4
    meta_fields = ("block_size", "double_quant", "in_features", "out_features", "dq_block")
    format_floats = ("absmax2", "absmax_offset", "absmax")
    repr_fields = ("in_features", "out_features", "block_size", "double_quant")

    def __init__(
        self, in_features: int, out_features: int, block_size: int = 64, double_quant: bool = True,
        dq_block: int = 256, *, n_blocks: int | None = None, n_tiles: tuple[int, int] | None = None,
        **options: Unpack[LayerOptions],
    ) -> None:
        """An empty layer of the layout, ready for ``load_state_dict`` (``n_blocks`` and
        ``n_tiles``: the saved counts, after slicing dropped some)."""
        if block_size < 1 or dq_block < 1:
            raise ValueError(f"block_size and dq_block must be positive, got {block_size} and {dq_block}")
        # plain attributes (allowed before Module.__init__), read by _register_groups
        self.block_size, self.double_quant, self.dq_block, self._n_tiles = block_size, double_quant, dq_block, n_tiles
        super().__init__(in_features, out_features, QuantConfig(4, block_size), n_groups=n_blocks, **options)
        self._bnb: Any = None
        self._bnb_key: tuple[torch.device, torch.dtype] | None = None

    def _register_groups(self, config: QuantConfig, groups: int, device: torch.device | str | None) -> None:
        """Block absmax one: plain float32, or double-quantized (8-bit codes, tile scales, offset)."""
        self.register_buffer("g_idx", config.group_index(self.in_features, device=device).clamp_max(groups - 1))
        if not self.double_quant:
            self.register_buffer("absmax", torch.ones(self.out_features, groups, dtype=torch.float32, device=device))
            return
        r_idx, c_idx = tiles(self.out_features, groups, self.dq_block)
        rows, cols = self._n_tiles if self._n_tiles is not None else (int(r_idx.max()) + 1, int(c_idx.max()) + 1)
        self.register_buffer("qabsmax", torch.zeros(self.out_features, groups, dtype=torch.uint8, device=device))
        self.register_buffer("absmax2", torch.ones(rows, cols, dtype=torch.float32, device=device))
        self.register_buffer("absmax_offset", torch.zeros(1, dtype=torch.float32, device=device))
        self.register_buffer("r_idx", r_idx.clamp_max(rows - 1).to(device))
        self.register_buffer("c_idx", c_idx.clamp_max(cols - 1).to(device))

    # ------------------------------------------------------------------ building

    @classmethod
    @torch.no_grad()
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        *,
        block_size: int = 64,
        double_quant: bool = True,
        dq_block: int = 256,
        mask: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> NF4Linear:
        """Quantize ``weight`` ``[out, in]``. Where ``keep`` is False the code is 7
        (exactly 0.0); ``mask`` (a recorded pruning mask) is carried over for later steps."""
        weight = weight.detach().float()
        out_features, in_features = weight.shape
        device = weight.device
        if keep is not None:
            keep = keep.to(device=device, dtype=torch.bool)
            weight = weight * keep
        options = cls._options_for(weight, bias, dtype)
        layer = cls(in_features, out_features, block_size, double_quant, dq_block, **options)
        nb = -(-in_features // block_size)
        index = layer.g_idx.long().unsqueeze(0).expand_as(weight)
        absmax = torch.zeros(out_features, nb, device=device).scatter_reduce(
            1, index, weight.abs(), "amax", include_self=True
        )
        if double_quant:
            offset = absmax.mean()
            centered = absmax - offset
            tile = layer.r_idx.long().unsqueeze(1) * layer.absmax2.shape[1] + layer.c_idx.long().unsqueeze(0)
            scale2 = torch.zeros(layer.absmax2.numel(), device=device).scatter_reduce(
                0, tile.flatten(), centered.abs().flatten(), "amax", include_self=True
            )
            scale2 = torch.where(scale2 > 0, scale2, torch.ones_like(scale2)).view_as(layer.absmax2)
            layer.absmax2 = scale2
            layer.absmax_offset = offset.reshape(1)
            layer.qabsmax = _nearest(centered / layer._tile_scale(), DYNAMIC_MAP).to(torch.uint8)
        else:
            layer.absmax = absmax
        stored = layer.absmax_values()
        divisor = stored.index_select(1, layer.g_idx.long())
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
        codes = _nearest((weight / divisor).clamp(-1, 1), NF4_TABLE)
        if keep is not None:
            codes = torch.where(keep, codes, torch.full_like(codes, ZERO_CODE))
        layer.qweight = pack(codes.to(torch.uint8), 4)
        layer._carry_over(bias, mask)
        return layer

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, block_size: int = 64, double_quant: bool = True, dq_block: int = 256
    ) -> NF4Linear:
        """NF4 of ``linear``; its recorded mask or exact zeros stay exactly zero."""
        return cls.from_weight(
            linear.weight, linear.bias, keep_mask(linear), block_size=block_size, double_quant=double_quant,
            dq_block=dq_block, mask=get_mask(linear), dtype=linear.weight.dtype,
        )

    # ------------------------------------------------------------------ reading

    @property
    def n_blocks(self) -> int:
        return (self.qabsmax if self.double_quant else self.absmax).shape[1]

    def _tile_scale(self) -> torch.Tensor:
        return self.absmax2[self.r_idx.long().unsqueeze(1), self.c_idx.long().unsqueeze(0)]

    def absmax_values(self) -> torch.Tensor:
        """The absmax each block is dequantized with, float32 ``[out, nb]``."""
        if not self.double_quant:
            return self.absmax.float()
        code = DYNAMIC_MAP.to(self.qabsmax.device)[self.qabsmax.long()]
        return code * self._tile_scale() + self.absmax_offset

    def dequantize(self) -> torch.Tensor:
        """The float32 weight: ``NF4_TABLE[code] * absmax[:, g_idx]``."""
        values = NF4_TABLE.to(self.qweight.device)[self.unpack_codes().long()]
        return values * self.absmax_values().index_select(1, self.g_idx.long())

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and kernels.policy() != kernels.REFERENCE:
            if self._bnb_key != (x.device, x.dtype):
                self._bnb = _prepare_bitsandbytes(self, x.device, x.dtype)
                self._bnb_key = (x.device, x.dtype)
                self.kernel = BITSANDBYTES if self._bnb is not None else kernels.REFERENCE
            if self._bnb is not None:
                return self._bnb(x)
        else:
            self.kernel = kernels.REFERENCE
        return super().forward(x)

    def _invalidate(self) -> None:
        self._write_meta()
        self._bnb = None
        self._bnb_key = None
        self.kernel = kernels.REFERENCE

    # ------------------------------------------------------------------ editing (pruning)

    @torch.no_grad()
    def zero_weights(self, keep: torch.Tensor) -> None:
        """Unstructured pruning: where ``keep`` is False the code becomes 7 (exactly 0.0).
        The mask is recorded (combined with any earlier one)."""
        keep = self._combined_keep(keep)
        codes = self.unpack_codes()
        self.qweight = pack(torch.where(keep, codes, torch.full_like(codes, ZERO_CODE)), 4)
        record_mask(self, keep)
        self._invalidate()

    @torch.no_grad()
    def select_input_features(self, index: torch.Tensor) -> None:
        """Keep the input columns ``index`` (in that order): codes and ``g_idx`` are
        sliced, absmax blocks (and double-quant tile columns) no column uses are dropped."""
        if self.double_quant:  # blocks no column uses, then tile columns no block uses
            index, _ = self._slice_code_columns(index, qabsmax=1, c_idx=0)
            self._compact("c_idx", absmax2=1)
        else:
            index, _ = self._slice_code_columns(index, absmax=1)
        self._finish_slice(index, "input")

    @torch.no_grad()
    def select_output_features(self, index: torch.Tensor) -> None:
        """Keep the output rows ``index`` (in that order), with their absmax, tiles and bias."""
        self._select_rows(index, ("qweight", "qabsmax", "r_idx") if self.double_quant else ("qweight", "absmax"))
        if self.double_quant:  # tile rows no row uses any more
            self._compact("r_idx", absmax2=0)

    # ------------------------------------------------------------------ loading

    @classmethod
    def empty_from_state(cls, state_dict: Mapping[str, torch.Tensor], name: str, device: torch.device) -> NF4Linear:
        """An empty layer of the layout saved under ``name``."""
        block_size, double_quant, in_features, out_features, dq_block = cls._saved_meta(state_dict, name)
        blocks = state_dict[f"{name}.qabsmax" if double_quant else f"{name}.absmax"].shape[1]
        n_tiles = tuple(state_dict[f"{name}.absmax2"].shape) if double_quant else None
        return cls(in_features, out_features, block_size, bool(double_quant), dq_block, n_blocks=blocks,
                   n_tiles=n_tiles, device=device, **cls._saved_bias(state_dict, name))


def _prepare_bitsandbytes(layer: NF4Linear, device: torch.device, dtype: torch.dtype) -> Any:
    """A forward through ``bitsandbytes.matmul_4bit`` if it applies and passes a probe
    against the reference path; None otherwise. Untested in paqbench's own test suite."""
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import QuantState
    except Exception:  # not installed, or no usable CUDA build
        return None
    bs = layer.block_size
    contiguous = torch.equal(layer.g_idx.long().cpu(), torch.arange(layer.in_features) // bs)
    if bs not in _BNB_BLOCKS or layer.in_features % bs or not contiguous:
        return None
    try:
        with torch.no_grad():
            codes = layer.unpack_codes().reshape(-1)
            packed = ((codes[0::2] << 4) | codes[1::2]).reshape(-1, 1).to(device)  # bitsandbytes: first code high
            state = QuantState(
                absmax=layer.absmax_values().reshape(-1).float().contiguous().to(device),
                shape=torch.Size([layer.out_features, layer.in_features]),
                code=NF4_TABLE.to(device), blocksize=bs, quant_type="nf4", dtype=dtype,
            )

        def run(x: torch.Tensor) -> torch.Tensor:
            bias = None if layer.bias is None else layer.bias.to(x.dtype)
            return bnb.matmul_4bit(x, packed.t(), quant_state=state, bias=bias)

        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(4, layer.in_features, generator=generator).to(device=device, dtype=dtype)
            weight = layer.dequantize().to(device)
            exact = x.float() @ weight.T
            reference = F.linear(x, weight.to(dtype)).float()
            fast = run(x).float() - (0 if layer.bias is None else layer.bias.float().to(device))
            scale = exact.norm().clamp_min(1e-30)
            if float((fast - exact).norm() / scale) > 2 * float((reference - exact).norm() / scale) + 1e-3:
                return None
        return run
    except Exception:  # any failure of the optional path falls back to the reference
        return None

