"""A random-weight Llama written to disk shard by shard, for memory tests and benchmarks of
models larger than memory: only one block's tensors exist at a time while writing, so
the writer's own peak memory does not depend on the model's size."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class LlamaShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int = 260

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


#: TinyLlama-1.1B's shape (issue 16's benchmark).
TINYLLAMA = LlamaShape(layers=22, hidden=2048, intermediate=5632, heads=32, kv_heads=4, vocab=32000)


def write_random_llama(directory: Path, shape: LlamaShape, seed: int = 0) -> int:
    """Write ``config.json`` and one safetensors shard per decoder block (weights
    N(0, 0.02), norms 1) with an index; return the model's float32 weight bytes."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=False, max_position_embeddings=4096,
        bos_token_id=min(1, shape.vocab - 1), eos_token_id=min(2, shape.vocab - 1),
    )
    directory.mkdir(parents=True, exist_ok=False)
    config.save_pretrained(directory)
    generator = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for number, shard in enumerate(_shards(shape, generator)):
        name = f"model-{number:05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        total += sum(t.numel() * 4 for t in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    return total


def _shards(shape: LlamaShape, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator) * 0.02

    kv = shape.kv_heads * shape.head_dim
    yield {"model.embed_tokens.weight": rand(shape.vocab, shape.hidden), "model.norm.weight": torch.ones(shape.hidden),
           "lm_head.weight": rand(shape.vocab, shape.hidden)}
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        yield {
            p + "input_layernorm.weight": torch.ones(shape.hidden),
            p + "post_attention_layernorm.weight": torch.ones(shape.hidden),
            p + "self_attn.q_proj.weight": rand(shape.hidden, shape.hidden),
            p + "self_attn.k_proj.weight": rand(kv, shape.hidden),
            p + "self_attn.v_proj.weight": rand(kv, shape.hidden),
            p + "self_attn.o_proj.weight": rand(shape.hidden, shape.hidden),
            p + "mlp.gate_proj.weight": rand(shape.intermediate, shape.hidden),
            p + "mlp.up_proj.weight": rand(shape.intermediate, shape.hidden),
            p + "mlp.down_proj.weight": rand(shape.hidden, shape.intermediate),
        }
