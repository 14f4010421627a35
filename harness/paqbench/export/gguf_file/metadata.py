"""GGUF key-values: Llama hyper-parameters from the model's config, the tokenizer from
the source GGUF (copied as is) or from the transformers tokenizer (gguf-py's vocab
helpers)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gguf

#: Keys the writer sets itself or that must describe the new file, not the source.
_NOT_COPIED = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version", "llama.")


class UnsupportedModel(ValueError):
    """The model's architecture or shape has no GGUF form here."""


def check_llama(config: Any) -> None:
    if getattr(config, "model_type", None) != "llama":
        raise UnsupportedModel(
            f"GGUF export supports Llama-architecture models; this is {getattr(config, 'model_type', '?')!r}"
        )
    if getattr(config, "paqbench_structure", None):
        raise UnsupportedModel("per-block sizes (config.paqbench_structure) have no llama GGUF form here")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if kind not in (None, "default"):
        raise UnsupportedModel(f"rope scaling {kind!r} is not written to GGUF here (llama.cpp needs rope_freqs)")


def add_hyperparameters(writer: gguf.GGUFWriter, config: Any) -> None:
    """The llama.* keys llama.cpp reads, from the (possibly shrunk) config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    if head_dim * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    if theta is not None:
        writer.add_rope_freq_base(float(theta))


def copy_from_gguf(writer: gguf.GGUFWriter, source: Path) -> None:
    """Copy the source file's general.* and tokenizer.* keys (vocabulary, merges, special
    tokens, chat template) unchanged."""
    reader = gguf.GGUFReader(str(source))
    for key, field in reader.fields.items():
        if key.startswith(_NOT_COPIED):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type)


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer: Any) -> bool:
    """A BPE ("gpt2") vocabulary from a transformers fast tokenizer, through gguf-py's
    ``BpeVocab`` and ``SpecialVocab`` (what llama.cpp's converter uses). Returns False
    when the file gets no vocabulary (a byte-level BPE without merges, as in the tiny
    test model): llama.cpp then runs on token ids only."""
    from gguf.vocab import BpeVocab, SpecialVocab

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        try:
            vocab = BpeVocab(Path(folder))
        except Exception as exc:  # SentencePiece and other models: no BPE tokenizer.json
            raise UnsupportedModel(f"only BPE tokenizers are written to GGUF here: {exc}") from exc
        special = SpecialVocab(Path(folder), load_merges=True)
        if not special.merges:
            # llama.cpp refuses a BPE vocabulary without merges and GGUF has no empty array:
            # say so in the file rather than invent a merge
            writer.add_tokenizer_model("no_vocab")
            return False
        tokens, types = [], []
        for text, _score, kind in vocab.all_tokens():
            tokens.append(text)
            types.append(kind)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special.add_to_gguf(writer)
        return True
