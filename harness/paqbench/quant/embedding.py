"""The quantized token embedding, and an LM head tied to it through the same codes.

In small models the token table is a large share of the weights (SmolLM2-135M: 28M of
134M parameters, shared with the LM head), so quantizing only the decoder's Linears
leaves the checkpoint far from 4 bits per weight. :class:`QuantizedEmbedding` stores the
table in the buffers of :class:`~paqbench.quant.linear.QuantizedLinear` (``qweight``,
``qzeros``, ``scales``, ``g_idx``; see its table), one row per token (``vocab`` rows, the
layout's "output rows") and groups along the hidden dimension (``dim`` columns), plus
``emeta`` int32 ``[bits, group_size, symmetric, vocab, dim, padding_idx, tied]``
(``padding_idx`` -1: none).

Its forward gathers the packed rows of the requested tokens and dequantizes only those.

:class:`TiedQuantizedHead` replaces an LM head whose weight was the embedding table. It
holds no tensor of its own (the embedding is referenced, not registered as a child), so
``state_dict`` and ``save_pretrained`` store the codes once, under the embedding's name;
its forward dequantizes the table a chunk of vocabulary rows at a time, or, for
float16/bfloat16 activations on a CPU with torch's int4 kernel, multiplies by the codes
directly (:mod:`paqbench.quant.kernels`, the same probe and policy as the Linears). The
head is the largest single matmul of a small model (SmolLM2: 49152 x 576), so this is
where a 4-bit table pays off at decode time.

Loading: ``emeta`` marks the format (its ``state_marker``, registered as a layer format), and
its ``tied`` entry tells :func:`~paqbench.quant.linear.load_quantized` (through a load
hook) to put a :class:`TiedQuantizedHead` on the model's output embeddings again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paqbench.export.capability import Capability
from paqbench.export.grid import integer_grid_capability
from paqbench.layers.contract import CompressedLayer
from paqbench.quant import kernels
from paqbench.quant.linear import replace_module
from paqbench.quant.packing import pack, packed_length, unpack
from paqbench.quant.quantizer import SCALE_DTYPE, QuantConfig, QuantizedWeight, dequantize, quantize_rtn

#: Vocabulary rows the tied head dequantizes at once (SmolLM2: 16384 x 576 float32 = 38 MB).
DEFAULT_CHUNK_ROWS = 16384


class QuantizedEmbedding(CompressedLayer):
    """A token embedding whose table is stored as packed low-bit codes."""

    name = "quantized-embedding"
    description = "Token table as packed integer codes with fp16 scales and zero points; rows dequantized on gather."
    paqbench_layer_kind = "quantized-embedding"
    state_marker = "emeta"
    kernel = None  # a gather, not a matmul: no kernel to choose (kernels_in_use skips it)
    meta_fields = ("bits", "group_size", "symmetric", "num_embeddings", "embedding_dim", "padding_idx", "tied")
    format_floats = ("scales",)  # float16 is the stored format, whatever the output dtype

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        bits: int,
        group_size: int = -1,
        symmetric: bool = False,
        *,
        padding_idx: int | None = None,
        tied: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """An empty table of the given layout (codes zero, scales one), ready for
        ``load_state_dict``; use :meth:`from_embedding` to fill one. ``dtype`` is what the
        forward returns (the model's dtype)."""
        super().__init__()
        config = QuantConfig(bits=bits, group_size=group_size, symmetric=symmetric)
        groups = config.n_groups(embedding_dim)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.bits = bits
        self.group_size = group_size
        self.symmetric = symmetric
        self.padding_idx = padding_idx
        self.tied = tied
        #: The dtype of the embeddings the forward returns; follows ``model.to(dtype)``.
        self.output_dtype = dtype
        self.register_buffer(
            "qweight",
            torch.zeros(num_embeddings, packed_length(embedding_dim, bits), dtype=torch.uint8, device=device),
        )
        self.register_buffer(
            "qzeros", torch.zeros(num_embeddings, packed_length(groups, bits), dtype=torch.uint8, device=device)
        )
        self.register_buffer("scales", torch.ones(num_embeddings, groups, dtype=SCALE_DTYPE, device=device))
        self.register_buffer("g_idx", config.group_index(embedding_dim, device=device))
        self._register_meta()

    # ------------------------------------------------------------------ building

    @classmethod
    def from_quantized(
        cls, quantized: QuantizedWeight, *, padding_idx: int | None = None, tied: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> QuantizedEmbedding:
        """Pack ``quantized`` (rows = tokens, columns = hidden dim) into a table."""
        num_embeddings, embedding_dim = quantized.codes.shape
        config = quantized.config
        device = quantized.codes.device
        table = cls(
            num_embeddings, embedding_dim, config.bits, config.group_size, config.symmetric,
            padding_idx=padding_idx, tied=tied, device=device, dtype=dtype,
        )
        if quantized.scales.shape[1] != table.n_groups:
            raise ValueError(f"{quantized.scales.shape[1]} groups do not match {table.n_groups} of the layout")
        table.qweight = pack(quantized.codes, config.bits)
        table.qzeros = pack(quantized.zeros.to(device), config.bits)
        table.scales = quantized.scales.to(device=device, dtype=SCALE_DTYPE).contiguous()
        table.g_idx = quantized.g_idx.to(device=device, dtype=torch.int32).contiguous()
        return table

    @classmethod
    @torch.no_grad()
    def from_embedding(cls, embedding: nn.Embedding, config: QuantConfig, *, tied: bool = False) -> QuantizedEmbedding:
        """Round-to-nearest quantization of ``embedding``'s table. Exact zeros (e.g. the
        padding row) stay exactly zero: 0.0 is on every group's grid."""
        weight = embedding.weight
        quantized = quantize_rtn(weight, config)
        return cls.from_quantized(quantized, padding_idx=embedding.padding_idx, tied=tied, dtype=weight.dtype)

    # ------------------------------------------------------------------ reading

    @property
    def n_groups(self) -> int:
        return self.scales.shape[1]

    @property
    def config(self) -> QuantConfig:
        return QuantConfig(self.bits, self.group_size, self.symmetric)

    def unpack_codes(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The codes of the token ``rows`` (all when None), uint8 ``[rows, dim]``."""
        packed = self.qweight if rows is None else self.qweight.index_select(0, rows)
        return unpack(packed, self.bits, self.embedding_dim)

    def unpack_zeros(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The zero points (codes) of the token ``rows`` (all when None), uint8 ``[rows, G]``."""
        packed = self.qzeros if rows is None else self.qzeros.index_select(0, rows)
        return unpack(packed, self.bits, self.n_groups)

    def reference_forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """What the forward must equal: a gather from the dequantized table."""
        return F.embedding(input_ids, self.dequantize().to(self.output_dtype))

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The float32 table rows ``rows`` (all when None) the codes stand for."""
        scales = self.scales if rows is None else self.scales.index_select(0, rows)
        return dequantize(self.unpack_codes(rows), scales, self.unpack_zeros(rows), self.g_idx)

    def dequantize_range(self, start: int, stop: int) -> torch.Tensor:
        """The float32 table rows ``start:stop`` (slices, no gather)."""
        codes = unpack(self.qweight[start:stop], self.bits, self.embedding_dim)
        zeros = unpack(self.qzeros[start:stop], self.bits, self.n_groups)
        return dequantize(codes, self.scales[start:stop], zeros, self.g_idx)

    def quantized_weight(self) -> QuantizedWeight:
        """The unpacked codes, scales, zeros and group index of the whole table."""
        return QuantizedWeight(self.unpack_codes(), self.scales, self.unpack_zeros(), self.g_idx, self.config)

    def export_capability(self, target: str) -> Capability:
        """How this table goes into export ``target`` (:mod:`paqbench.export`): GGUF holds
        a quantized token table; compressed-tensors gets it dequantized."""
        return integer_grid_capability(self, target, packed_in_ct=False)

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Gather the packed rows of ``input_ids`` and dequantize only those: the float
        table never exists."""
        flat = input_ids.reshape(-1).to(device=self.qweight.device, dtype=torch.long)
        rows = self.dequantize(flat).to(self.output_dtype)
        return rows.reshape(*input_ids.shape, self.embedding_dim)

    def _meta_values(self) -> list[int]:
        padding = -1 if self.padding_idx is None else self.padding_idx
        return [self.bits, self.group_size, int(self.symmetric), self.num_embeddings, self.embedding_dim,
                padding, int(self.tied)]

    def _read_meta(self, values: list[int]) -> None:
        super()._read_meta(values)
        self.padding_idx = None if values[5] < 0 else values[5]

    # ------------------------------------------------------------------ accounting

    def paqbench_numel(self) -> int:
        """Logical parameters: the table this module stands for (counted once even when
        the LM head is tied to it)."""
        return self.num_embeddings * self.embedding_dim

    @torch.no_grad()
    def paqbench_nonzero(self) -> int:
        """Table entries that dequantize to a nonzero value (code != zero point)."""
        nonzero = 0
        for start in range(0, self.num_embeddings, DEFAULT_CHUNK_ROWS):
            stop = min(start + DEFAULT_CHUNK_ROWS, self.num_embeddings)
            codes = unpack(self.qweight[start:stop], self.bits, self.embedding_dim)
            zeros = unpack(self.qzeros[start:stop], self.bits, self.n_groups).index_select(1, self.g_idx.long())
            nonzero += int((codes != zeros).sum())
        return nonzero

    def paqbench_macs(self) -> tuple[int, int]:
        """An embedding is a gather, not a matmul: no multiply-accumulates."""
        return 0, 0

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, group_size={self.group_size}, "
            f"symmetric={self.symmetric}, padding_idx={self.padding_idx}, tied={self.tied}"
        )

    def _apply(self, fn: Any, recurse: bool = True) -> QuantizedEmbedding:
        """``model.to(dtype)`` / ``.half()`` change the output dtype (the scales keep theirs,
        see :attr:`format_floats`)."""
        device = self.scales.device
        result = super()._apply(fn, recurse)
        self.output_dtype = fn(torch.empty(0, dtype=self.output_dtype, device=device)).dtype
        return result

    # ------------------------------------------------------------------ loading

    @classmethod
    def empty_from_state(
        cls, state_dict: Mapping[str, torch.Tensor], name: str, device: torch.device
    ) -> QuantizedEmbedding:
        """An empty table of the layout saved under ``name`` in ``state_dict``."""
        bits, group_size, symmetric, vocab, dim, padding, tied = cls._saved_meta(state_dict, name)
        return cls(
            vocab, dim, bits, group_size, bool(symmetric), padding_idx=None if padding < 0 else padding,
            tied=bool(tied), device=device,
        )



class TiedQuantizedHead(CompressedLayer):
    """An LM head tied to a :class:`QuantizedEmbedding`: logits against the dequantized
    table, so the codes are stored once. Holds no tensors (the embedding is a plain
    reference, not a child module, so it is neither saved nor counted twice)."""

    name = "tied-quantized-head"
    description = "LM head computing logits against a QuantizedEmbedding's table (stored once, by the table)."
    paqbench_layer_kind = "tied-quantized-head"

    def __init__(self, embedding: QuantizedEmbedding, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        super().__init__()
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        object.__setattr__(self, "embedding", embedding)  # not registered: no second copy in state_dict
        self.chunk_rows = chunk_rows
        #: The forward path in use: "reference" or a fast kernel's name.
        self.kernel = kernels.REFERENCE
        self._kernel: kernels.Kernel | None = None
        self._kernel_key: tuple[Any, ...] | None = None

    @property
    def in_features(self) -> int:
        return self.embedding.embedding_dim

    @property
    def out_features(self) -> int:
        return self.embedding.num_embeddings

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``F.linear(hidden, table)``: a fast kernel on the codes where one applies, else
        the table dequantized ``chunk_rows`` rows at a time."""
        table = self.embedding
        key = (hidden.device, hidden.dtype, table.qweight.data_ptr(), table.qweight._version,
               table.scales.data_ptr(), table.scales._version)
        if self._kernel_key != key:
            self._select_kernel(hidden.device, hidden.dtype, key)
        if self._kernel is not None and not kernels.needs_backward(hidden):
            flat = hidden.reshape(-1, self.in_features)
            return self._kernel.run(flat).reshape(*hidden.shape[:-1], self.out_features)
        vocab = table.num_embeddings
        if vocab <= self.chunk_rows:
            return F.linear(hidden, table.dequantize_range(0, vocab).to(hidden.dtype))
        parts = [
            F.linear(hidden, table.dequantize_range(start, min(start + self.chunk_rows, vocab)).to(hidden.dtype))
            for start in range(0, vocab, self.chunk_rows)
        ]
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def _select_kernel(self, device: torch.device, dtype: torch.dtype, key: tuple[Any, ...]) -> None:
        self._kernel = kernels.select_kernel(_TableAsLinear(self.embedding), torch.device(device), dtype)
        self._kernel_key = key
        self.kernel = self._kernel.name if self._kernel is not None else kernels.REFERENCE

    def dequantize(self) -> torch.Tensor:
        """The table the logits are computed against, float32 ``[vocab, dim]``."""
        return self.embedding.dequantize()

    @property
    def bits(self) -> int:
        return self.embedding.bits

    def quantized_weight(self) -> QuantizedWeight:
        """The table's grid (what an export writes once, for both)."""
        return self.embedding.quantized_weight()

    def select_kernel(self, device: torch.device | str, dtype: torch.dtype) -> None:
        table = self.embedding
        self._select_kernel(torch.device(device), dtype, (torch.device(device), dtype, table.qweight.data_ptr(),
                                                           table.qweight._version, table.scales.data_ptr(),
                                                           table.scales._version))

    def paqbench_numel(self) -> int:
        """Nothing of its own: the table is counted once, by the embedding."""
        return 0

    def paqbench_nonzero(self) -> int:
        return 0

    def paqbench_storage_bits(self) -> int:
        return 0

    @classmethod
    def after_load(cls, model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
        """A saved table marked ``tied`` gets its LM head back."""
        for module in list(model.modules()):
            if isinstance(module, QuantizedEmbedding) and module.tied:
                tie_quantized_head(model, module)

    def paqbench_macs(self) -> tuple[int, int]:
        """The logits matmul: ``vocab x dim`` MACs per token (the table is stored, and
        counted as parameters, once: by the embedding)."""
        dense = self.out_features * self.in_features
        return dense, int(self.embedding.paqbench_nonzero())

    def export_capability(self, target: str) -> Capability:
        """Tied: the target stores the table once and the engine reuses it as the head."""
        table = self.embedding.export_capability(target)
        return Capability(table.level, f"tied to the token table ({table.how})", table.reason)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, chunk_rows={self.chunk_rows}"


class _TableAsLinear:
    """A :class:`QuantizedEmbedding` seen as the ``[vocab, dim]`` linear layer the tied
    head computes: the attributes :func:`paqbench.quant.kernels.select_kernel` reads."""

    def __init__(self, table: QuantizedEmbedding) -> None:
        self.bits = table.bits
        self.in_features = table.embedding_dim
        self.out_features = table.num_embeddings
        self.scales = table.scales
        self.g_idx = table.g_idx
        self.unpack_codes = table.unpack_codes
        self.unpack_zeros = table.unpack_zeros
        self.dequantize = table.dequantize


def tie_quantized_head(model: nn.Module, embedding: QuantizedEmbedding) -> TiedQuantizedHead:
    """Put a :class:`TiedQuantizedHead` on ``embedding`` where ``model``'s output
    embeddings (``get_output_embeddings()``, the LM head) are."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (LM head) to tie to the quantized table")
    name = next((n for n, m in model.named_modules() if m is head), None)
    if name is None:
        raise ValueError("the LM head is not a submodule of the model")
    tied = TiedQuantizedHead(embedding)
    replace_module(model, name, tied)
    return tied
