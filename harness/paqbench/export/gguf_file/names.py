"""transformers' Llama names to GGUF's, and the row order GGUF stores Q and K in.

llama.cpp's converter permutes the rows of ``q_proj`` and ``k_proj`` (rotary halves
interleaved per head) and every GGUF reader undoes it (transformers:
``LlamaTensorProcessor._reverse_permute_weights``). :func:`qk_row_order` is the
converter's permutation as a row index, so codes, scales and zeros move with their rows.
"""

from __future__ import annotations

import gguf
import torch


def tensor_name(hf_name: str, n_blocks: int) -> str | None:
    """``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight``; None when
    GGUF's Llama map has no such tensor."""
    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)
    stem, _, suffix = hf_name.rpartition(".")
    name = mapping.get_name(stem)
    return None if name is None else f"{name}.{suffix}"


def qk_row_order(rows: int, n_head: int) -> torch.Tensor:
    """Row ``r`` of the GGUF tensor is row ``order[r]`` of transformers' (llama.cpp's
    ``permute``: ``reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2)``)."""
    index = torch.arange(rows)
    return index.reshape(n_head, 2, rows // n_head // 2).transpose(1, 2).reshape(rows)


def heads_for(gguf_name: str, n_head: int, n_head_kv: int) -> int | None:
    """The head count whose permutation a tensor takes, or None if it is not permuted."""
    if ".attn_q." in gguf_name:
        return n_head
    if ".attn_k." in gguf_name:
        return n_head_kv
    return None
