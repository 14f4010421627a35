"""embed-rtn: round-to-nearest quantization of the token embedding (and the LM head).

Decoder-only quantization leaves the token table in float: in SmolLM2-135M it is 28M of
134M weights, so a 4-bit decoder still saves ~0.42x of the fp16 checkpoint. llama.cpp
style deployments quantize the table too; this method does, with the RTN grid of
:mod:`paqbench.quant.quantizer` (groups along the hidden dimension).

- Tied LM head (``lm_head.weight is embed_tokens.weight``): the head becomes a
  :class:`~paqbench.quant.embedding.TiedQuantizedHead` computing logits from the same
  codes, which are stored once.
- Untied LM head: quantized on its own as a
  :class:`~paqbench.quant.linear.QuantizedLinear` (``head: false`` leaves it as it is).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from paqbench import Method, Params, RunContext, hookimpl
from paqbench.layers import UnsupportedLayerError, check_supported, layer_kind
from paqbench.quant.embedding import QuantizedEmbedding, tie_quantized_head
from paqbench.quant.linear import QuantizedLinear, replace_module
from paqbench.quant.params import refuse_zero
from paqbench.quant.quantizer import QuantConfig
from paqbench.text import prose


class EmbeddingQuantParams(Params):
    """The grid of the token table (and of an untied LM head)."""

    bits: Literal[2, 3, 4, 8] = Field(4, description="bits per table entry (2, 3, 4 or 8)")
    group_size: Annotated[int, refuse_zero("group_size must be positive, or -1 for one group per token row")] = Field(
        128, ge=-1, description="hidden-dim columns sharing one scale and zero point per token row; "
        "-1: one per row. A width it does not divide gets a shorter last group"
    )
    symmetric: bool = Field(False, description="symmetric grid (zero point at the mid code) instead of min-max")
    head: bool = Field(
        True, description="also quantize an untied LM head (as a QuantizedLinear on the same grid); "
        "a tied head always follows the table"
    )

    def quant_config(self) -> QuantConfig:
        return QuantConfig(bits=self.bits, group_size=self.group_size, symmetric=self.symmetric)


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


class EmbedRTN(Method):
    name = "embed-rtn"
    family = "quantize"
    description = prose("""
        Round-to-nearest quantization of the input token embedding: `bits` in {2,3,4,8}, groups of `group_size` along
        the hidden dim, asymmetric or `symmetric`. A tied LM head computes its logits from the same packed codes (stored
        once); an untied one becomes a QuantizedLinear. Forward dequantizes only the looked-up rows. Cost: one pass over
        the table, no calibration.
    """)
    Params = EmbeddingQuantParams
    accepts = frozenset({"dense", "pruned"})

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, params: EmbeddingQuantParams, ctx: RunContext) -> dict[str, Any] | None:
        config = params.quant_config()
        if not hasattr(model, "get_input_embeddings"):
            raise UnsupportedLayerError(
                f"step {ctx.current_step}: {type(model).__name__} has no get_input_embeddings(); "
                "embed-rtn needs a transformers model"
            )
        embedding = model.get_input_embeddings()
        embed_name = _name_of(model, embedding)
        if type(embedding) is not nn.Embedding:
            raise UnsupportedLayerError(
                f"step {ctx.current_step} cannot handle layer {embed_name!r}: it is {layer_kind(embedding)} "
                f"({type(embedding).__name__}), and 'embed-rtn' accepts a plain nn.Embedding "
                "(is the table already quantized?)"
            )
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        tied = head is not None and getattr(head, "weight", None) is embedding.weight
        head_name = _name_of(model, head) if head is not None else None
        if head is not None and not tied and params.head:
            check_supported({head_name: head}, self.accepts, self.name, ctx.current_step)
        table = QuantizedEmbedding.from_embedding(embedding, config, tied=tied)
        replace_module(model, embed_name, table)
        del embedding
        info: dict[str, object] = {
            "embedding": embed_name,
            "shape": [table.num_embeddings, table.embedding_dim],
            "tied_head": tied,
            "embedding_bits_per_weight": table.paqbench_storage_bits() / table.paqbench_numel(),
        }
        if tied:
            tie_quantized_head(model, table)
            info["head"] = f"{head_name} (tied: logits from the embedding's codes)"
        elif head is not None and params.head:
            layer = QuantizedLinear.from_linear(head, config)
            replace_module(model, head_name, layer)
            info["head"] = f"{head_name} (QuantizedLinear)"
            info["head_bits_per_weight"] = layer.paqbench_storage_bits() / layer.paqbench_numel()
        else:
            info["head"] = None if head is None else f"{head_name} (left as is)"
        return info


@hookimpl
def paqbench_register_methods(register):
    register(EmbedRTN)
