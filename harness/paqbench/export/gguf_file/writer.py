"""Write a paqbench Llama model as a GGUF file with gguf-py's ``GGUFWriter``.

Layers on an integer grid whose groups cover whole 32-column blocks go in as Q4_0, Q4_1
or Q8_0 blocks built from the codes (:mod:`.blocks`); every other weight is written
dequantized as F16, and 1-D tensors (norms, biases) as F32, as llama.cpp expects. A tied
LM head is not written: llama.cpp uses ``token_embd`` when ``output.weight`` is absent.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from torch import nn

from paqbench.export.capability import capability_of
from paqbench.export.gguf_file.blocks import WRITERS
from paqbench.export.gguf_file.metadata import (
    UnsupportedModel,
    add_hyperparameters,
    add_tokenizer,
    check_llama,
    copy_from_gguf,
)
from paqbench.export.gguf_file.names import heads_for, qk_row_order, tensor_name
from paqbench.export.grid import gguf_type, grid_of
from paqbench.export.layers import dense_bias, dense_weight, export_units
from paqbench.export.record import ExportRecord, LayerRecord
from paqbench.quant.embedding import TiedQuantizedHead

TARGET = "gguf"
_FILE_TYPES = {
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
}


def export_gguf(
    model: nn.Module, tokenizer: Any, path: Path, source_gguf: Path | None = None
) -> ExportRecord:
    """Write ``model`` to ``path``; the tokenizer comes from ``source_gguf`` when the model
    was loaded from one, else from ``tokenizer``. Raises :class:`UnsupportedModel` for
    what GGUF cannot hold here."""
    config = model.config
    check_llama(config)
    writer = gguf.GGUFWriter(str(path), "llama")
    add_hyperparameters(writer, config)
    if source_gguf is not None:
        copy_from_gguf(writer, source_gguf)
    record = ExportRecord(target=TARGET, status="ok", path=str(path))
    if source_gguf is None and not add_tokenizer(writer, tokenizer):
        record.notes.append("no vocabulary written (a BPE tokenizer without merges): token ids only")
    counts: Counter[str] = Counter()
    written = _write_units(model, writer, record, counts)
    _write_rest(model, writer, written)
    writer.add_file_type(_FILE_TYPES[counts.most_common(1)[0][0]] if counts else gguf.LlamaFileType.ALL_F32)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    record.bytes = path.stat().st_size
    return record


def _write_units(model: nn.Module, writer: gguf.GGUFWriter, record: ExportRecord, counts: Counter[str]) -> set[str]:
    """Write every export unit; returns the module names written (their tensors are done)."""
    config = model.config
    blocks = config.num_hidden_layers
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    done: set[str] = set()
    for name, module in export_units(model):
        done.add(name)
        capability = capability_of(module, TARGET)
        target = tensor_name(f"{name}.weight", blocks)
        if target is None:
            raise UnsupportedModel(f"{name} has no tensor in GGUF's llama layout")
        if capability.level == "unavailable":
            raise UnsupportedModel(f"{name} ({type(module).__name__}): {capability.reason}")
        layer = LayerRecord(name, type(module).__name__, target, capability.level, capability.how, capability.reason)
        record.layers.append(layer)
        if isinstance(module, TiedQuantizedHead) or _is_tied_plain(module, embed):
            layer.tensor = "(tied: token_embd.weight)"
            continue
        heads = heads_for(target, config.num_attention_heads, config.num_key_value_heads)
        data, kind = _tensor_data(module)
        if heads is not None:
            data = data[qk_row_order(data.shape[0], heads).numpy()]
        writer.add_tensor(target, np.ascontiguousarray(data), raw_dtype=_raw(kind))
        counts[kind] += 1
        bias = dense_bias(module)
        if bias is not None:
            values = bias.numpy().astype(np.float32)
            if heads is not None:
                values = values[qk_row_order(values.shape[0], heads).numpy()]
            writer.add_tensor(target.removesuffix(".weight") + ".bias", values)
    return done


def _is_tied_plain(module: nn.Module, embed: nn.Module | None) -> bool:
    weight = getattr(module, "weight", None)
    return (
        embed is not None and module is not embed and isinstance(weight, torch.Tensor)
        and weight is getattr(embed, "weight", None)
    )


def _tensor_data(module: nn.Module) -> tuple[np.ndarray, str]:
    """The bytes (block types) or float16 values of one weight, and its GGML type name."""
    if callable(getattr(module, "quantized_weight", None)) and hasattr(module, "bits"):
        grid = grid_of(module)
        kind = gguf_type(grid)
        if kind is not None:
            return WRITERS[kind](grid), kind
    return dense_weight(module).to(torch.float16).numpy(), "F16"


def _raw(kind: str) -> gguf.GGMLQuantizationType | None:
    return None if kind == "F16" else gguf.GGMLQuantizationType[kind]


def _write_rest(model: nn.Module, writer: gguf.GGUFWriter, done: set[str]) -> None:
    """Norms and any other tensor outside the export units, in float32 (1-D) or float16."""
    blocks = model.config.num_hidden_layers
    for key, tensor in model.state_dict().items():
        module = key.rpartition(".")[0]
        if any(module == name or module.startswith(name + ".") for name in done):
            continue
        target = tensor_name(key, blocks)
        if target is None:
            raise UnsupportedModel(f"{key} has no tensor in GGUF's llama layout")
        values = tensor.detach().float()
        writer.add_tensor(target, (values if values.dim() == 1 else values.half()).numpy())
