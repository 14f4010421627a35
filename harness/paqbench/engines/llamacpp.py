"""The ``llama.cpp`` backend: the run's GGUF in llama-cpp-python, greedy, threads pinned.

Timing goes through :class:`paqbench.export.timing.GreedySession` (argmax over the last
logits, no sampler in the timed loop; prompt and decode on the same ``threads``). Memory
runs the engine in a child process of its own, so the peak RSS is llama.cpp's (loading the
file and generating), not that of the Python process holding paqbench's model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from paqbench.engines.types import EngineTiming, EngineUnavailable
from paqbench.export.timing import GreedySession


class LlamaCppEngine:
    """A GGUF loaded once; every call starts from an empty KV cache."""

    backend = "llama.cpp"

    def __init__(self, path: Path, n_ctx: int, threads: int) -> None:
        self.path = path
        self.session = GreedySession(path, n_ctx=n_ctx, n_threads=threads)

    def generate(self, prompt_ids: list[int], new_tokens: int, batch_size: int,
                 now: Callable[[], float] = time.perf_counter) -> EngineTiming:
        if batch_size != 1:
            raise EngineUnavailable("the llama.cpp backend generates one row (batch_size 1)")
        timing = self.session.generate(prompt_ids, new_tokens, now)
        return EngineTiming(ttft_s=timing.ttft_s, e2e_s=float(timing.e2e_s), tokens=[timing.tokens])

    def continuation(self, prompt_ids: list[int], max_new_tokens: int, eos: set[int]) -> list[int]:
        """Greedy tokens up to and including the first EOS (later ones cannot change it)."""
        tokens = self.session.generate(prompt_ids, max_new_tokens).tokens
        for index, token in enumerate(tokens):
            if token in eos:
                return tokens[: index + 1]
        return tokens

    def describe(self) -> dict[str, Any]:
        session = self.session
        return {
            "backend": self.backend,
            "engine_version": f"llama-cpp-python {session.llama_cpp.__version__}",
            "threads": session.n_threads,
            "threads_batch": session.n_threads,
            "artifact": str(self.path),
            "artifact_bytes": self.path.stat().st_size,
            "quant_type": session.quant_type,
            "tensor_types": session.tensor_types,
            "decoding": "greedy: argmax of the last logits (llama_get_logits_ith)",
        }

    def close(self) -> None:
        self.session.close()


@dataclass(frozen=True)
class EngineMemory:
    """What the child process that loaded the GGUF and generated used."""

    peak_rss: int
    #: the child's own peak (``VmHWM``), None off Linux
    hwm_rss: int | None
    rss_before_load: int
    samples: int
    info: dict[str, Any]


def measure_memory(path: Path, prompt_ids: list[int], new_tokens: int, threads: int,
                   interval: float, timeout_s: float = 600.0) -> EngineMemory:
    """Load ``path`` and generate ``new_tokens`` in a child process (:mod:`.worker`),
    sampling its RSS every ``interval`` seconds; raises :class:`EngineUnavailable` when the
    child fails."""
    job = json.dumps({"path": str(path), "prompt_ids": prompt_ids, "new_tokens": new_tokens, "threads": threads})
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, str(Path(__file__).with_name("worker.py"))],
                                 stdin=subprocess.PIPE, stdout=out, stderr=err, text=True)
        assert child.stdin is not None
        child.stdin.write(job)
        child.stdin.close()
        peak, samples = _sample_rss(child, interval, timeout_s)
        out.seek(0)
        err.seek(0)
        output, errors = out.read(), err.read()
    if child.returncode != 0:
        raise EngineUnavailable(f"the llama.cpp memory child failed (exit {child.returncode}): {errors.strip()[-500:]}")
    info = json.loads(output.strip().splitlines()[-1])
    # the child's own high-water mark catches a peak between two samples
    return EngineMemory(peak_rss=max(peak, info["hwm_rss"] or 0), hwm_rss=info["hwm_rss"],
                        rss_before_load=info["rss_before_load"], samples=samples, info=info)


def _sample_rss(child: subprocess.Popen, interval: float, timeout_s: float) -> tuple[int, int]:
    """The child's largest sampled RSS and the number of samples, until it exits (killed
    after ``timeout_s``)."""
    process = psutil.Process(child.pid)
    peak, samples = 0, 0
    deadline = time.monotonic() + timeout_s
    while child.poll() is None and time.monotonic() < deadline:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.Error:
            break
        samples += 1
        time.sleep(interval)
    if child.poll() is None:
        child.kill()
    child.wait()
    return peak, samples
