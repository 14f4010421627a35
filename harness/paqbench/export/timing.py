"""Greedy generation of a GGUF in llama.cpp, timed token by token.

For the latency metric's ``backend: llama.cpp``: the same prompt ids and new-token count
as the torch path, threads pinned and recorded. Greedy by argmax over the last logits
(llama.cpp's public ``llama_get_logits_ith``), so no sampler runs inside the timed loop.
TTFT is the prompt's evaluation plus the first argmax; every later token is one
``eval`` of one token plus its argmax.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from paqbench.export.roundtrip.llamacpp import import_llama_cpp, load


@dataclass
class GenerationTiming:
    """One timed greedy generation."""

    prompt_tokens: int
    new_tokens: int
    ttft_s: float
    token_s: list[float]
    n_threads: int
    llama_cpp_version: str
    quant_type: str
    tensor_types: dict[str, int] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)
    #: Call start to the last token's argmax (:class:`GreedySession`; None from :func:`time_greedy`).
    e2e_s: float | None = None

    @property
    def tpot_s(self) -> float:
        """Median time per output token after the first."""
        return statistics.median(self.token_s) if self.token_s else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return 1.0 / self.tpot_s if self.token_s else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tpot_s": self.tpot_s, "tokens_per_s": self.tokens_per_s}


def gguf_types(path: Path) -> tuple[str, dict[str, int]]:
    """The file's declared type (``general.file_type``) and its tensors' type counts."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("general.file_type")
    declared = gguf.LlamaFileType(int(field.contents())).name if field is not None else "unknown"
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return declared, counts


def time_greedy(path: Path, prompt_ids: list[int], new_tokens: int, n_threads: int) -> GenerationTiming:
    """Evaluate ``prompt_ids`` and generate ``new_tokens`` greedily in llama.cpp on
    ``n_threads`` threads (for prompt and decode alike)."""
    if new_tokens < 1 or not prompt_ids:
        raise ValueError("need a prompt and at least one new token")
    llama_cpp = import_llama_cpp()
    llm = load(path, n_ctx=len(prompt_ids) + new_tokens, n_threads=n_threads, logits_all=False)
    n_vocab = llm.n_vocab()
    declared, counts = gguf_types(path)

    def next_token() -> int:
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(row.argmax())

    try:
        llm.reset()
        began = time.perf_counter()
        llm.eval(list(prompt_ids))
        token = next_token()
        ttft = time.perf_counter() - began
        tokens, times = [token], []
        for _ in range(new_tokens - 1):
            began = time.perf_counter()
            llm.eval([token])
            token = next_token()
            times.append(time.perf_counter() - began)
            tokens.append(token)
    finally:
        llm.close()
    return GenerationTiming(
        prompt_tokens=len(prompt_ids), new_tokens=new_tokens, ttft_s=ttft, token_s=times, n_threads=n_threads,
        llama_cpp_version=llama_cpp.__version__, quant_type=declared, tensor_types=counts, tokens=tokens,
    )


class GreedySession:
    """One GGUF loaded once for many timed greedy generations (the latency metric's warm-up
    and repetitions), on ``n_threads`` threads for prompt and decode alike. ``now`` is the
    host clock (tests inject a fake one); each call starts from an empty KV cache."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int) -> None:
        self.llama_cpp = import_llama_cpp()
        self.path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.llm = load(path, n_ctx=n_ctx, n_threads=n_threads, logits_all=False)
        self.n_vocab = self.llm.n_vocab()
        self.quant_type, self.tensor_types = gguf_types(path)

    def _argmax(self) -> int:
        row = np.ctypeslib.as_array(self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.n_vocab,))
        return int(row.argmax())

    def generate(self, prompt_ids: list[int], new_tokens: int,
                 now: Callable[[], float] = time.perf_counter) -> GenerationTiming:
        """Exactly ``new_tokens`` greedy tokens after ``prompt_ids``, timed like :func:`time_greedy`."""
        if new_tokens < 1 or not prompt_ids:
            raise ValueError("need a prompt and at least one new token")
        if len(prompt_ids) + new_tokens > self.n_ctx:
            raise ValueError(f"{len(prompt_ids)} + {new_tokens} tokens exceed the context of {self.n_ctx}")
        self.llm.reset()
        began = now()
        self.llm.eval(list(prompt_ids))
        token = self._argmax()
        ttft = now() - began
        tokens, times = [token], []
        for _ in range(new_tokens - 1):
            step = now()
            self.llm.eval([token])
            token = self._argmax()
            times.append(now() - step)
            tokens.append(token)
        return GenerationTiming(
            prompt_tokens=len(prompt_ids), new_tokens=new_tokens, ttft_s=ttft, token_s=times,
            n_threads=self.n_threads, llama_cpp_version=self.llama_cpp.__version__, quant_type=self.quant_type,
            tensor_types=self.tensor_types, tokens=tokens, e2e_s=now() - began,
        )

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> GreedySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
