"""llamacpp-quantize: llama.cpp's own quantizer (``llama_model_quantize``) as a method.

The model is written as an F16 GGUF (paqbench's GGUF writer, what llama.cpp's converter
would give), quantized by llama.cpp itself to ``type`` (Q4_0 or Q8_0; its own choices
included, such as Q8_0 for a token table whose width no K-quant block divides), and its
blocks are read back into paqbench's packed layers without re-rounding (a Q4_0 block is a
4-bit symmetric group of 32 with a float16 scale, a Q8_0 block the 8-bit one). So the
llama.cpp baseline goes through the same export, round trip and metrics as paqbench's
methods, and exporting it again writes llama.cpp's blocks byte for byte.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
import torch
from pydantic import Field
from torch import nn

from paqbench import Method, Params, RunContext, hookimpl
from paqbench.export.gguf_file.names import heads_for, qk_row_order, tensor_name
from paqbench.export.gguf_file.writer import export_gguf
from paqbench.export.layers import export_units
from paqbench.export.roundtrip.llamacpp import import_llama_cpp
from paqbench.layers import check_supported
from paqbench.quant.embedding import QuantizedEmbedding, tie_quantized_head
from paqbench.quant.linear import QuantizedLinear, replace_module
from paqbench.quant.quantizer import QuantConfig, QuantizedWeight
from paqbench.text import prose

#: Block types whose values paqbench's integer grid holds exactly: bits per code.
IMPORTABLE = {"Q4_0": 4, "Q8_0": 8}
_FTYPES = {"Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


class LlamaCppQuantParams(Params):
    type: Literal["Q4_0", "Q8_0"] = Field("Q4_0", description="llama.cpp's file type to quantize to")
    threads: int | None = Field(None, gt=0, description="quantizer threads; default: torch's thread count")


def read_blocks(raw: np.ndarray, kind: str, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes uint8 ``[rows, columns]`` and float16 scales ``[rows, columns / 32]`` of Q4_0 or
    Q8_0 blocks (``raw``: uint8 ``[rows, bytes]``); a code's value is ``(code - mid) * scale``."""
    rows, blocks = raw.shape[0], columns // 32
    data = np.ascontiguousarray(raw).reshape(rows, blocks, -1)
    scales = torch.from_numpy(data[:, :, :2].copy().view(np.float16).reshape(rows, blocks))
    if kind == "Q4_0":
        packed = data[:, :, 2:18]
        codes = np.concatenate([packed & 0x0F, packed >> 4], axis=2)  # element j and j + 16 of a byte
    else:
        codes = (data[:, :, 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return torch.from_numpy(codes.reshape(rows, columns).copy()), scales


def imported_weight(tensor: Any, shape: tuple[int, int], heads: int | None) -> Any:
    """A :class:`~paqbench.quant.quantizer.QuantizedWeight` of a GGUF tensor (Q/K rows put
    back in transformers' order)."""
    kind = tensor.tensor_type.name
    bits = IMPORTABLE[kind]
    rows, columns = shape
    codes, scales = read_blocks(np.asarray(tensor.data).reshape(rows, -1), kind, columns)
    if heads is not None:
        inverse = torch.argsort(qk_row_order(rows, heads))
        codes, scales = codes[inverse], scales[inverse]
    config = QuantConfig(bits=bits, group_size=32, symmetric=True)
    zeros = torch.full_like(scales, 1 << (bits - 1), dtype=torch.uint8)
    return QuantizedWeight(codes, scales, zeros, config.group_index(columns), config)


def quantize_file(source: Path, target: Path, kind: str, threads: int) -> str:
    """llama.cpp's quantizer from ``source`` to ``target``; returns llama-cpp-python's version."""
    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _FTYPES[kind])
    params.nthread = threads
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if code != 0:
        raise RuntimeError(f"llama_model_quantize returned {code} for {source}")
    return llama_cpp.__version__


class LlamaCppQuantize(Method):
    name = "llamacpp-quantize"
    family = "quantize"
    description = prose("""
        llama.cpp's own quantizer (llama_model_quantize, no importance matrix) to `type` Q4_0 or Q8_0: the model is
        written as an F16 GGUF, quantized by llama.cpp, and its blocks read back into paqbench's packed layers without
        re-rounding (the token table too, in whatever type llama.cpp chose for it). The baseline for paqbench's methods
        in llama.cpp's own format. Needs llama-cpp-python; Llama architecture. Cost: one GGUF write and llama.cpp's
        quantization, seconds.
    """)
    Params = LlamaCppQuantParams
    accepts = frozenset({"dense"})

    @torch.no_grad()
    def apply(self, model: nn.Module, params: LlamaCppQuantParams, ctx: RunContext) -> dict[str, Any]:
        units = dict(export_units(model))
        check_supported({n: m for n, m in units.items() if not isinstance(m, nn.Embedding)}, self.accepts,
                        self.name, ctx.current_step)
        folder = Path(ctx.scratch_dir) / "llamacpp-quantize"
        folder.mkdir(parents=True, exist_ok=True)
        dense, quantized = folder / "f16.gguf", folder / f"{params.type.lower()}.gguf"
        export_gguf(model, ctx.tokenizer, dense)
        began = time.perf_counter()
        version = quantize_file(dense, quantized, params.type, params.threads or torch.get_num_threads())
        seconds = time.perf_counter() - began
        types = install(model, units, gguf.GGUFReader(str(quantized)))
        return {"llama_cpp_version": version, "type": params.type, "quantize_s": seconds,
                "llamacpp_file_bytes": quantized.stat().st_size, "f16_file_bytes": dense.stat().st_size,
                "imported": types}


def install(model: nn.Module, units: dict[str, nn.Module], reader: gguf.GGUFReader) -> dict[str, int]:
    """Replace every unit llama.cpp stored as Q4_0/Q8_0 with paqbench's packed layer of the
    same codes; returns how many units of each type went in (F16/F32 ones stay float)."""
    config = model.config
    tensors = {t.name: t for t in reader.tensors}
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    counts: dict[str, int] = {}
    for name, module in units.items():
        target = tensor_name(f"{name}.weight", config.num_hidden_layers)
        tensor = tensors.get(target or "")
        if tensor is None:  # the tied head: llama.cpp reuses token_embd
            continue
        kind = tensor.tensor_type.name
        counts[kind] = counts.get(kind, 0) + 1
        if kind in ("F16", "F32"):
            continue
        if kind not in IMPORTABLE:
            raise ValueError(f"llama.cpp stored {target} as {kind}, which paqbench's layers cannot hold "
                             f"(importable: {', '.join(IMPORTABLE)})")
        weight = module.weight
        heads = heads_for(target, config.num_attention_heads, config.num_key_value_heads)
        quantized = imported_weight(tensor, tuple(weight.shape), heads)
        if module is embedding:
            table = QuantizedEmbedding.from_quantized(quantized, padding_idx=module.padding_idx, tied=tied,
                                                      dtype=weight.dtype)
            replace_module(model, name, table)
            if tied:
                tie_quantized_head(model, table)
        else:
            replace_module(model, name, QuantizedLinear.from_quantized(quantized, module.bias, dtype=weight.dtype))
    return counts


@hookimpl
def paqbench_register_methods(register):
    register(LlamaCppQuantize)
