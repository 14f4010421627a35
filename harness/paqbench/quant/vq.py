"""Vector quantization with a small codebook per layer (or per group of rows).

Each row of the weight is cut into vectors of ``dim`` consecutive input weights; a
codebook of ``K = 2**bits`` float16 vectors is fitted by k-means (k-means++ seeding,
seeded; Lloyd iterations) over all the layer's vectors (or those of each group of
``rows_per_codebook`` rows), and every vector stores the ``bits``-bit index of its
nearest codeword. The idea of AQLM / QuIP# / GPTVQ in its plainest form: ``dim = 2,
K = 256`` spends 4 bits per weight, ``dim = 4, K = 256`` 2 bits.

``W[o, i] = codebooks[r_idx[o], code[o, col[i] // dim], col[i] % dim] * mask[o, i]``

Layout (persistent buffers):

==========  =======  ===================================================================
qweight     uint8    ``[out, ceil(nv * bits / 8)]`` codeword indices (``nv`` vectors per row)
codebooks   float16  ``[C, K, dim]``
r_idx       int32    ``[out]`` the codebook of each row
col_index   int32    ``[in]`` where each input column sits in the stored ``nv * dim`` columns
qmask       uint8    ``[out, ceil(in / 8)]`` keep bitmap, only present once weights are pruned
vq_meta     int32    ``[bits, dim, in_features, out_features, nv, rows_per_codebook]``
==========  =======  ===================================================================

Bits per weight: ``bits / dim + 16 * K * dim * C / (out * in)`` (the codebooks)
``+ 32 * (out + in) / (out * in)`` (``r_idx``, ``col_index``), plus 1 once a keep bitmap
exists. E.g. 4.04 for ``dim = 2, K = 256`` on a 576x1536 layer.

Zeros: a codeword cannot hold every pattern of pruned positions inside a vector, so
pruned weights are kept exactly zero by a packed 1-bit keep bitmap (``qmask``), added
when a recorded pruning mask exists at quantization time (the fit ignores the pruned
coordinates) or when ``zero_weights`` is called; it costs 1 bit per weight and is
reported in the storage. Exact zeros without a recorded mask are not preserved (that
would cost the bitmap for a handful of accidental zeros).

Input slicing (structured pruning of input columns) never re-encodes: vectors that keep
at least one column stay stored whole and ``col_index`` picks the kept columns out of
them, so the result equals slicing the dequantized weight exactly; vectors with no kept
column are dropped. A partly kept vector still costs its full ``bits`` (pruning whole
groups of ``dim`` aligned columns saves the most).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Unpack

import torch
from torch import nn

from paqbench.layers.contract import LayerOptions
from paqbench.layers.sparsity import get_mask, record_mask
from paqbench.quant.codebook import CodebookLinear, assign, kmeans, used_and_inverse
from paqbench.quant.packing import pack, packed_length, unpack

TABLE_DTYPE = torch.float16


class VQLinear(CodebookLinear):
    """A linear layer stored as indices into codebooks of weight vectors."""

    name = "vq"
    description = "Vector quantization: codes index a table of fp16 vectors of consecutive input weights."
    state_marker = "vq_meta"

    meta_fields = ("bits", "dim", "in_features", "out_features", "n_vectors", "rows_per_codebook")
    format_floats = ("codebooks",)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int = 8,
        dim: int = 2,
        rows_per_codebook: int = -1,
        *,
        n_vectors: int | None = None,
        n_codebooks: int | None = None,
        masked: bool = False,
        **options: Unpack[LayerOptions],
    ) -> None:
        """An empty layer of the given layout (ready for ``load_state_dict``); use
        :meth:`from_weight` or :meth:`from_linear` to fill one."""
        super().__init__()
        device = options.get("device")
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be between 1 and 8, got {bits}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if n_vectors is None:
            if in_features % dim:
                raise ValueError(f"vectors of {dim} columns do not tile {in_features} input columns")
            n_vectors = in_features // dim
        rows = out_features if rows_per_codebook == -1 else rows_per_codebook
        if rows < 1:
            raise ValueError(f"rows_per_codebook must be positive or -1, got {rows_per_codebook}")
        r_idx = (torch.arange(out_features, device=device) // rows).to(torch.int32)
        codebooks = n_codebooks if n_codebooks is not None else int(r_idx.max()) + 1
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.dim, self.rows_per_codebook, self.n_vectors = bits, dim, rows_per_codebook, n_vectors
        self.register_buffer("qweight", torch.zeros(out_features, packed_length(n_vectors, bits),
                                                    dtype=torch.uint8, device=device))
        self.register_buffer("codebooks", torch.zeros(codebooks, 1 << bits, dim, dtype=TABLE_DTYPE, device=device))
        self.register_buffer("r_idx", r_idx.clamp_max(codebooks - 1))
        self.register_buffer("col_index", torch.arange(in_features, dtype=torch.int32, device=device))
        qmask = torch.ones(out_features, packed_length(in_features, 1), dtype=torch.uint8, device=device)
        self.register_buffer("qmask", qmask if masked else None)
        self._init_layout(**options)

    # ------------------------------------------------------------------ building

    @classmethod
    @torch.no_grad()
    def from_weight(
        cls,
        weight: torch.Tensor,
        bits: int = 8,
        dim: int = 2,
        rows_per_codebook: int = -1,
        *,
        bias: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        importance: torch.Tensor | None = None,
        iterations: int = 10,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        on_iteration: Callable[[int, torch.Tensor], None] | None = None,
    ) -> VQLinear:
        """Fit the codebooks of ``weight`` ``[out, in]`` and encode it.

        ``keep`` (a pruning keep-mask): False weights are ignored by the fit and stored
        as exact zeros through the bitmap. ``importance`` ``[in]`` weighs each input
        column's squared error (None: all equal). ``seed`` seeds k-means++.
        """
        weight = weight.detach().float()
        out_features, in_features = weight.shape
        device = weight.device
        if keep is not None:
            keep = keep.to(device=device, dtype=torch.bool)
            if bool(keep.all()):
                keep = None
        layer = cls(in_features, out_features, bits, dim, rows_per_codebook, masked=keep is not None,
                    **cls._options_for(weight, bias, dtype))
        coordinate_weight = torch.ones_like(weight)
        if importance is not None:
            column = importance.to(device=device, dtype=torch.float32).clamp_min(0)
            coordinate_weight = coordinate_weight * (column + 1e-6 * column.mean().clamp_min(1e-30))
        if keep is not None:
            weight = weight * keep
            coordinate_weight = coordinate_weight * keep
        generator = torch.Generator().manual_seed(seed)
        codes = torch.zeros(out_features, layer.n_vectors, dtype=torch.long, device=device)
        books = torch.zeros_like(layer.codebooks, dtype=torch.float32)
        for book in range(layer.codebooks.shape[0]):
            rows = torch.nonzero(layer.r_idx == book).flatten()
            points = weight.index_select(0, rows).reshape(-1, dim)
            weights = coordinate_weight.index_select(0, rows).reshape(-1, dim)
            centers, _ = kmeans(points, weights, 1 << bits, iterations, generator, on_iteration)
            books[book] = centers.to(TABLE_DTYPE).float()  # encode against what is stored
            found, _ = assign(points, weights, books[book])
            codes[rows] = found.view(rows.numel(), -1)
        layer.codebooks = books.to(TABLE_DTYPE)
        layer.qweight = pack(codes.to(torch.uint8), bits)
        if keep is not None:
            layer.qmask = pack(keep.to(torch.uint8), 1)
        layer._carry_over(bias, keep)
        return layer

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, bits: int = 8, dim: int = 2, rows_per_codebook: int = -1, *,
        importance: torch.Tensor | None = None, iterations: int = 10, seed: int = 0,
    ) -> VQLinear:
        """Fit ``linear``; its recorded pruning mask stays exactly zero (keep bitmap)."""
        return cls.from_weight(
            linear.weight, bits, dim, rows_per_codebook, bias=linear.bias, keep=get_mask(linear),
            importance=importance, iterations=iterations, seed=seed, dtype=linear.weight.dtype,
        )

    # ------------------------------------------------------------------ reading

    def unpack_codes(self) -> torch.Tensor:
        """The codeword indices, uint8 ``[out, nv]``."""
        return unpack(self.qweight, self.bits, self.n_vectors)

    def keep_bitmap(self) -> torch.Tensor | None:
        """The stored keep bitmap, bool ``[out, in]``, or None when nothing is pruned."""
        if self.qmask is None:
            return None
        return unpack(self.qmask, 1, self.in_features).to(torch.bool)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``[out, in]``."""
        books = self.codebooks.float()
        vectors = books[self.r_idx.long().unsqueeze(1), self.unpack_codes().long()]  # [out, nv, dim]
        weight = vectors.reshape(self.out_features, -1).index_select(1, self.col_index.long())
        keep = self.keep_bitmap()
        return weight if keep is None else weight * keep

    # ------------------------------------------------------------------ editing (pruning)

    @torch.no_grad()
    def zero_weights(self, keep: torch.Tensor) -> None:
        """Unstructured pruning: clear the pruned weights' bits in the keep bitmap
        (created on first use: +1 bit per weight); the mask is recorded."""
        keep = self._combined_keep(keep)
        stored = self.keep_bitmap()
        if stored is not None:
            keep = keep & stored
        self.qmask = pack(keep.to(torch.uint8), 1)
        record_mask(self, keep)
        self._invalidate()

    @torch.no_grad()
    def select_input_features(self, index: torch.Tensor) -> None:
        """Keep the input columns ``index`` (in that order) without re-encoding: vectors
        with a kept column stay whole, ``col_index`` points into them, the rest are dropped."""
        index = self._check_index(index, "input")
        columns = self.col_index.long().index_select(0, index)
        used, vector = used_and_inverse(columns // self.dim)
        codes = self.unpack_codes().index_select(1, used)
        self.col_index = (vector.long() * self.dim + columns % self.dim).to(torch.int32)
        keep = self.keep_bitmap()
        if keep is not None:
            self.qmask = pack(keep.index_select(1, index).to(torch.uint8), 1)
        self.n_vectors = int(used.numel())
        self.qweight = pack(codes, self.bits)
        self._finish_slice(index, "input")

    @torch.no_grad()
    def select_output_features(self, index: torch.Tensor) -> None:
        """Keep the output rows ``index`` (in that order); codebooks no row uses are dropped."""
        self._select_rows(index, ("qweight", "r_idx", "qmask"))
        self._compact("r_idx", codebooks=0)  # codebooks no kept row uses

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, dim={self.dim}, "
            f"codebooks={self.codebooks.shape[0]}, masked={self.qmask is not None}, bias={self.bias is not None}, "
            f"kernel={self.kernel}"
        )

    # ------------------------------------------------------------------ loading

    @classmethod
    def empty_from_state(cls, state_dict: Mapping[str, torch.Tensor], name: str, device: torch.device) -> VQLinear:
        """An empty layer of the layout saved under ``name``."""
        bits, dim, in_features, out_features, n_vectors, rows = cls._saved_meta(state_dict, name)
        return cls(in_features, out_features, bits, dim, rows, n_vectors=n_vectors,
                   n_codebooks=state_dict[f"{name}.codebooks"].shape[0], masked=f"{name}.qmask" in state_dict,
                   device=device, **cls._saved_bias(state_dict, name))

