"""Weights left on disk: a model whose decoder blocks live in their safetensors files.

``model.offload: disk`` builds the model on the meta device (no weight memory), loads the
tensors outside the decoder blocks (embeddings, final norm, head: needed by every
forward), and attaches a :class:`DiskOffload` to the model. Block weights are read only
while a block runs: the block-sequential driver (:mod:`paqbench.blockwise.driver`) and
evaluation (:mod:`paqbench.blockwise.forward`) call :meth:`DiskOffload.onload` before a
block and :meth:`DiskOffload.offload` after it.

What stays in memory after a block is offloaded: its buffers (a compressed layer's packed
codes and scales, masks), never its float parameters. A parameter the method did not
change is dropped (read again from the checkpoint next time); one it changed or created
(a pruned weight, AWQ's folded scales, a quantized layer's bias) is written to the
offload folder and read from there. Each safetensors file is opened only while a block's
tensors are copied out of it, so its mapped pages leave the process's RSS again.
"""

from __future__ import annotations

import ctypes
import functools
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paqbench.layers import decoder_blocks

#: The attribute on an offloaded model that holds its :class:`DiskOffload`.
OFFLOAD_ATTR = "paqbench_offload"


class OffloadError(ValueError):
    """The model cannot be loaded with its weights left on disk (one line for the user)."""


@dataclass
class _Loaded:
    """A parameter as read from disk: the same object with the same version is unchanged."""

    ident: int
    version: int
    data_ptr: int


@dataclass
class DiskOffload:
    """Where each parameter of an offloaded model lives on disk, and reading it back."""

    #: parameter name -> the checkpoint file that holds it
    checkpoint: dict[str, Path]
    #: folder for parameters a method changed (one safetensors file each)
    folder: Path
    device: torch.device
    dtype: torch.dtype
    #: parameter name -> its file in ``folder`` (a changed parameter)
    changed: dict[str, Path] = field(default_factory=dict)
    _loaded: dict[str, _Loaded] = field(default_factory=dict)
    #: bytes read from disk so far (checkpoint and offload folder)
    bytes_read: int = 0

    def onload(self, module: nn.Module, prefix: str, skip: frozenset[str] = frozenset()) -> None:
        """Read every meta parameter of ``module`` (qualified name ``prefix``) onto the
        execution device, each file opened once; names in ``skip`` stay as they are."""
        wanted = {name: entry for name, entry in _meta_parameters(module, prefix) if name not in skip}
        if not wanted:
            return
        by_file: dict[Path, list[str]] = {}
        for name in wanted:
            path = self.changed.get(name) or self.checkpoint.get(name)
            if path is None:
                raise OffloadError(f"parameter {name!r} is in neither the checkpoint nor the offload folder")
            by_file.setdefault(path, []).append(name)
        from safetensors import safe_open

        with torch.inference_mode(False), torch.no_grad():
            for path, names in by_file.items():
                with safe_open(str(path), framework="pt", device="cpu") as handle:
                    for name in names:
                        key = "tensor" if name in self.changed else name
                        tensor = handle.get_tensor(key)
                        self.bytes_read += tensor.numel() * tensor.element_size()
                        owner, attr, old = wanted[name]
                        target = old.dtype if name in self.changed else self.dtype
                        value = nn.Parameter(tensor.to(device=self.device, dtype=target), old.requires_grad)
                        owner._parameters[attr] = value
                        self._loaded[name] = _Loaded(id(value), value._version, value.data_ptr())

    def offload(self, module: nn.Module, prefix: str) -> None:
        """Turn every parameter of ``module`` back into a meta tensor; one a method changed
        or created is first written to the offload folder."""
        from safetensors.torch import save_file

        with torch.inference_mode(False), torch.no_grad():
            for name, (owner, attr, param) in _parameters(module, prefix):
                if param.is_meta:
                    continue
                if not self._unchanged(name, param):
                    path = self.folder / f"{_file_name(name)}.safetensors"
                    self.folder.mkdir(parents=True, exist_ok=True)
                    save_file({"tensor": param.detach().to("cpu").contiguous()}, str(path))
                    self.changed[name] = path
                owner._parameters[attr] = nn.Parameter(
                    torch.empty(param.shape, dtype=param.dtype, device="meta"), param.requires_grad
                )
                self._loaded.pop(name, None)
        release_freed_memory()

    def _unchanged(self, name: str, param: torch.Tensor) -> bool:
        loaded = self._loaded.get(name)
        return (
            loaded is not None and loaded.ident == id(param) and loaded.version == param._version
            and loaded.data_ptr == param.data_ptr()
        )


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's ``malloc_trim``). Without it a
    block's freed float weights stay in the process: glibc raises its mmap threshold after
    the first large free, so later blocks come from the heap and RSS grows by most of a
    float block per block (measured: +35 MB per 49 MB block; +6.5 MB, the packed size,
    with it). A no-op where there is no glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def offload_of(model: nn.Module) -> DiskOffload | None:
    """The model's :class:`DiskOffload`, or None for a model held in memory."""
    return getattr(model, OFFLOAD_ATTR, None)


def resident_bytes(module: nn.Module) -> int:
    """Bytes of the tensors of ``module`` that are in memory (meta tensors excluded)."""
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers()) if not t.is_meta}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def checkpoint_files(directory: Path) -> dict[str, Path]:
    """Parameter name -> safetensors file of a ``save_pretrained`` directory (sharded or not)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return {name: directory / file for name, file in weight_map.items()}
    single = directory / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt", device="cpu") as handle:
            return {name: single for name in handle.keys()}  # noqa: SIM118 (not a dict)
    present = sorted(p.name for p in directory.iterdir())[:8] if directory.is_dir() else []
    raise OffloadError(
        f"model.offload: disk needs safetensors weights, and {str(directory)!r} has no model.safetensors "
        f"or model.safetensors.index.json (it has: {', '.join(present) or 'nothing'})"
    )


def empty_model(directory: Path, dtype: torch.dtype, trust_remote_code: bool = False) -> nn.Module:
    """The model of ``directory``'s config with its parameters on the meta device and its
    buffers (rotary frequencies) computed as usual."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.eval()


def attach_offload(
    model: nn.Module, directory: Path, folder: Path, device: torch.device, dtype: torch.dtype
) -> DiskOffload:
    """Load everything outside the decoder blocks onto ``device`` and attach the offload
    that reads the blocks on demand. Tied output embeddings are tied again."""
    offload = DiskOffload(checkpoint_files(directory), folder, device, dtype)
    prefix, _ = decoder_blocks(model)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    skip: set[str] = set()
    for name, (owner, attr, param) in _parameters(model, ""):
        if name.startswith(prefix + ".") or not param.is_meta:
            continue
        if name not in offload.checkpoint:
            if tied and output is not None and owner is output and attr == "weight":
                skip.add(name)  # tied below
                continue
            raise OffloadError(f"{str(directory)!r}: the checkpoint has no tensor {name!r} that the model needs")
    offload.onload(_Outside(model, prefix), "", frozenset(skip))
    if tied and output is not None and model.get_input_embeddings() is not None:
        output.weight = model.get_input_embeddings().weight
    setattr(model, OFFLOAD_ATTR, offload)
    return offload


class _Outside(nn.Module):
    """A view of a model without its decoder blocks, so :meth:`DiskOffload.onload` reads
    only the tensors every forward needs."""

    def __init__(self, model: nn.Module, prefix: str) -> None:
        super().__init__()
        self.__dict__["_model"] = model
        self.__dict__["_prefix"] = prefix

    def named_modules(self, memo: Any = None, prefix: str = "", remove_duplicate: bool = True) -> Iterator[Any]:
        blocks = self.__dict__["_prefix"]
        for name, module in self.__dict__["_model"].named_modules(remove_duplicate=remove_duplicate):
            if name == blocks or name.startswith(blocks + "."):
                continue
            yield name, module


def _parameters(module: nn.Module, prefix: str) -> Iterator[tuple[str, tuple[nn.Module, str, torch.Tensor]]]:
    """Every directly owned parameter under ``module`` with its owner, once per owner slot."""
    for sub_name, sub in module.named_modules(remove_duplicate=True):
        for attr, param in list(sub._parameters.items()):
            if param is None:
                continue
            name = ".".join(part for part in (prefix, sub_name, attr) if part)
            yield name, (sub, attr, param)


def _meta_parameters(module: nn.Module, prefix: str) -> Iterator[tuple[str, tuple[nn.Module, str, torch.Tensor]]]:
    for name, entry in _parameters(module, prefix):
        if entry[2].is_meta:
            yield name, entry


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
