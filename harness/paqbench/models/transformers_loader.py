"""Load causal LMs and tokenizers through transformers (hub ids, directories, GGUF)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from packaging.version import Version

from paqbench.blockwise.offload import attach_offload, empty_model
from paqbench.context import progress_enabled
from paqbench.suite.schema import ModelConfig


def _dtype_kwarg() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56."""
    import transformers

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def load_pretrained(
    path: str,
    config: ModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    gguf_file: str | None = None,
) -> tuple[torch.nn.Module, Any]:
    """``from_pretrained`` for the model and its tokenizer, honouring the suite's options.

    ``trust_remote_code`` is passed only when the suite asks for it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    common: dict[str, Any] = {}
    if config.revision:
        common["revision"] = config.revision
    if config.trust_remote_code:
        common["trust_remote_code"] = True
    if gguf_file:
        common["gguf_file"] = gguf_file
    # trust_remote_code comes only from its own key (the schema refuses it in options too).
    options = {key: value for key, value in config.options.items() if key != "trust_remote_code"}
    kwargs: dict[str, Any] = {**common, _dtype_kwarg(): dtype, **options}
    if config.device_map is not None:
        kwargs["device_map"] = config.device_map
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if config.device_map is None:
        model = model.to(device)
    model.eval()
    if gguf_file:
        forget_gguf_quantizer(model)
    tokenizer_path = config.tokenizer or path
    tokenizer_kwargs = dict(common)
    if config.tokenizer:
        tokenizer_kwargs.pop("gguf_file", None)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, **tokenizer_kwargs)
    prepare_tokenizer(tokenizer)
    return model, tokenizer


def load_offloaded(
    source: str, config: ModelConfig, device: torch.device, dtype: torch.dtype, folder: Path
) -> tuple[torch.nn.Module, Any]:
    """The model of a safetensors checkpoint (a directory, or a hub id fetched into the
    hub cache) with its decoder blocks left on disk (``model.offload: disk``,
    :mod:`paqbench.blockwise.offload`), and its tokenizer. Changed weights go to ``folder``."""
    from transformers import AutoTokenizer


    quiet_transformers()
    directory = Path(source).expanduser()
    if not directory.is_dir():
        from huggingface_hub import snapshot_download

        directory = Path(snapshot_download(
            source, revision=config.revision,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"],
        ))
    model = empty_model(directory, dtype, trust_remote_code=config.trust_remote_code)
    attach_offload(model, directory, Path(config.offload_folder or folder), device, dtype)
    tokenizer_kwargs: dict[str, Any] = {"trust_remote_code": True} if config.trust_remote_code else {}
    if config.revision and config.tokenizer is None:
        tokenizer_kwargs["revision"] = config.revision
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or str(directory), **tokenizer_kwargs)
    prepare_tokenizer(tokenizer)
    return model, tokenizer


def quiet_transformers() -> None:
    """transformers draws its own tqdm bars (GGUF conversion, weight loading, saving) whatever
    paqbench's progress setting; silence them when paqbench's bars are off, so logs stay readable."""
    from transformers.utils import logging as hf_logging


    if not progress_enabled():
        hf_logging.disable_progress_bar()


def forget_gguf_quantizer(model: torch.nn.Module) -> None:
    """A GGUF checkpoint is dequantized to ordinary float tensors on load, but
    transformers keeps its GGUF quantizer attached and then refuses save_pretrained.
    The weights in memory are plain floats, so the model is saved as what it now is."""
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Give the tokenizer a pad token (batching and lm-eval need one)."""
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None):
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
