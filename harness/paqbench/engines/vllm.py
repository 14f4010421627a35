"""The ``vllm`` backend: the run's compressed-tensors export in vLLM's offline ``LLM``.

Untested on hardware in this project (no CUDA device on its machines): written against
vLLM's documented offline API (``LLM(model=dir).generate(prompts, SamplingParams)``) and
guarded so that without CUDA or without vllm every measurement is unavailable with the
reason. Fixed token counts: ``min_tokens = max_tokens = new_tokens``, ``temperature=0``
(greedy). vLLM reports no first-token time to an offline caller on every version, so TTFT
is timed as a separate call of one token (prefill plus the first token) and the
end-to-end time as the full call; TPOT follows from both as in the torch backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paqbench.engines.types import INSTALL, EngineTiming, EngineUnavailable


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise EngineUnavailable("backend vllm needs a CUDA GPU and this machine has none "
                                f"(with one, install the engine with: {INSTALL['vllm']})")


class VllmEngine:
    """One ``vllm.LLM`` on the export folder, for the run's metric."""

    backend = "vllm"

    def __init__(self, path: Path, n_ctx: int, gpu_memory_utilization: float = 0.5) -> None:
        require_cuda()
        try:
            import vllm
        except ImportError as exc:
            raise EngineUnavailable(f"vllm does not import ({exc}); install it with: {INSTALL['vllm']}") from exc
        self.vllm = vllm
        self.path = path
        self.llm = vllm.LLM(model=str(path), max_model_len=n_ctx, gpu_memory_utilization=gpu_memory_utilization,
                            enforce_eager=False, seed=0)

    def _run(self, prompt_ids: list[int], tokens: int, batch_size: int, exact: bool = True) -> list[Any]:
        params = self.vllm.SamplingParams(max_tokens=tokens, min_tokens=tokens if exact else 0, temperature=0.0)
        prompts = [{"prompt_token_ids": list(prompt_ids)} for _ in range(batch_size)]
        return self.llm.generate(prompts, params, use_tqdm=False)

    def generate(self, prompt_ids: list[int], new_tokens: int, batch_size: int,
                 now: Callable[[], float] = time.perf_counter) -> EngineTiming:
        began = now()
        self._run(prompt_ids, 1, batch_size)
        ttft = now() - began
        began = now()
        outputs = self._run(prompt_ids, new_tokens, batch_size)
        e2e = now() - began
        tokens = [list(out.outputs[0].token_ids) for out in outputs]
        if any(len(row) != new_tokens for row in tokens):
            raise RuntimeError(f"vLLM generated {[len(r) for r in tokens]} tokens, expected {new_tokens} per row")
        return EngineTiming(ttft_s=ttft, e2e_s=e2e, tokens=tokens)

    def continuation(self, prompt_ids: list[int], max_new_tokens: int, eos: set[int]) -> list[int]:
        [output] = self._run(prompt_ids, max_new_tokens, 1, exact=False)
        return list(output.outputs[0].token_ids)

    def describe(self) -> dict[str, Any]:
        import torch

        return {
            "backend": self.backend,
            "engine_version": f"vllm {self.vllm.__version__}",
            "device": torch.cuda.get_device_name(0),
            "artifact": str(self.path),
            "ttft": "a separate call of one new token (prefill + first token); e2e: the full call",
            "decoding": "SamplingParams(temperature=0, min_tokens=max_tokens=new_tokens)",
        }

    def close(self) -> None:
        del self.llm
