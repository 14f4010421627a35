"""Write a paqbench model as a compressed-tensors checkpoint that
``AutoModelForCausalLM.from_pretrained`` (and vLLM) load.

Integer-grid ``QuantizedLinear`` layers whose groups tile the width go in packed
(:mod:`.packed`), E4M3 layers as ``float-quantized`` (:mod:`.float8`); every other
layer is written as a float16 weight (dense, pruned, and the formats compressed-tensors
has no type for). The rest of the state dict (norms) is written as stored. A tied LM
head is not written; config.json says the embeddings are tied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from paqbench.export.capability import capability_of
from paqbench.export.compressed.config import quantization_config
from paqbench.export.compressed.float8 import FP8Scheme, fp8_scheme, fp8_tensors
from paqbench.export.compressed.packed import Scheme, packed_tensors, scheme_for, vllm_note
from paqbench.export.grid import grid_of
from paqbench.export.layers import dense_bias, dense_weight, export_units
from paqbench.export.record import ExportRecord, LayerRecord
from paqbench.quant.embedding import TiedQuantizedHead
from paqbench.quant.linear import QuantizedLinear

TARGET = "compressed-tensors"
WEIGHTS_FILE = "model.safetensors"


class UnsupportedCheckpoint(ValueError):
    """The model cannot be written as a checkpoint transformers loads."""


def export_compressed(model: nn.Module, tokenizer: Any, directory: Path) -> ExportRecord:
    """Write ``model`` (and ``tokenizer``) into ``directory``."""
    config = model.config
    if getattr(config, "paqbench_structure", None):
        raise UnsupportedCheckpoint("per-block sizes (config.paqbench_structure): from_pretrained cannot build it")
    directory.mkdir(parents=True, exist_ok=True)
    record = ExportRecord(target=TARGET, status="ok", path=str(directory))
    tensors: dict[str, torch.Tensor] = {}
    schemes: dict[Scheme | FP8Scheme, list[str]] = {}
    tied, done = _write_units(model, tensors, schemes, record)
    _write_rest(model, tensors, done)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    _write_config(model, directory, schemes, tied)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    record.bytes = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
    record.extra["weights_bytes"] = (directory / WEIGHTS_FILE).stat().st_size
    record.extra["vllm"] = "the format vLLM loads; untested on hardware (no GPU run yet)"
    return record


def _write_units(
    model: nn.Module, tensors: dict[str, torch.Tensor], schemes: dict[Scheme | FP8Scheme, list[str]],
    record: ExportRecord,
) -> tuple[bool, set[str]]:
    embed = model.get_input_embeddings()
    tied = False
    done: set[str] = set()
    for name, module in export_units(model):
        done.add(name)
        capability = capability_of(module, TARGET)
        if capability.level == "unavailable":
            raise UnsupportedCheckpoint(f"{name} ({type(module).__name__}): {capability.reason}")
        layer = LayerRecord(name, type(module).__name__, f"{name}.weight", capability.level, capability.how,
                            capability.reason)
        record.layers.append(layer)
        if isinstance(module, TiedQuantizedHead) or (module is not embed and _shares_weight(module, embed)):
            tied = True
            layer.tensor = "(tied: embedding)"
            continue
        scheme = _packable(module, capability.level)
        float8 = fp8_scheme(module) if capability.level == "exact" else None
        if float8 is not None:
            tensors.update({f"{name}.{key}": value for key, value in fp8_tensors(module, float8).items()})
            schemes.setdefault(float8, []).append(name)
        elif scheme is None:
            tensors[f"{name}.weight"] = dense_weight(module).to(torch.float16)
        else:
            grid = grid_of(module)
            for key, value in packed_tensors(grid, scheme).items():
                tensors[f"{name}.{key}"] = value
            schemes.setdefault(scheme, []).append(name)
            note = vllm_note(scheme, module.group_size, module.in_features)
            if note:
                record.notes.append(f"{name}: {note}")
            layer.tensor = f"{name}.weight_packed"
        bias = dense_bias(module)
        if bias is not None:
            tensors[f"{name}.bias"] = bias.to(torch.float16)
    return tied, done


def _packable(module: nn.Module, level: str) -> Scheme | None:
    if level != "exact" or not isinstance(module, QuantizedLinear):
        return None
    return scheme_for(grid_of(module))


def _shares_weight(module: nn.Module, embed: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight is getattr(embed, "weight", None)


def _write_rest(model: nn.Module, tensors: dict[str, torch.Tensor], done: set[str]) -> None:
    for key, tensor in model.state_dict().items():
        module = key.rpartition(".")[0]
        if any(module == name or module.startswith(name + ".") for name in done):
            continue
        tensors[key] = tensor.detach().clone()


def _write_config(model: nn.Module, directory: Path, schemes: dict[Scheme | FP8Scheme, list[str]],
                  tied: bool) -> None:
    data = model.config.to_dict()
    data["tie_word_embeddings"] = tied
    data["dtype"] = "float16"
    data.pop("torch_dtype", None)
    if schemes:
        data["quantization_config"] = quantization_config(schemes)
    else:
        data.pop("quantization_config", None)
    (directory / "config.json").write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
