"""The engine contract: backend names, the timing of one call, the unavailable error.

Its own module so that the engine implementations (llamacpp.py, vllm.py), which
:func:`paqbench.engines.open_engine` imports only when asked for, import these from here
and not from the package that imports them: no import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Backend = Literal["torch", "llama.cpp", "vllm"]

#: The export target each engine backend reads.
EXPORT_OF: dict[str, str] = {"llama.cpp": "gguf", "vllm": "compressed-tensors"}
#: The exact command that installs each engine's package.
INSTALL: dict[str, str] = {
    "llama.cpp": "pip install 'paqbench[llamacpp]'",
    "vllm": "pip install 'paqbench[vllm]'",
}


class EngineUnavailable(RuntimeError):
    """This engine cannot run here or has nothing to run; the message says why (and how
    to install what is missing)."""


@dataclass(frozen=True)
class EngineTiming:
    """One timed generate call in an engine: call start to first token, and to the end."""

    ttft_s: float
    e2e_s: float
    tokens: list[list[int]] = field(default_factory=list, compare=False)


class Engine(Protocol):
    """What the metrics need from a loaded engine."""

    def generate(self, prompt_ids: list[int], new_tokens: int, batch_size: int,
                 now: Callable[[], float]) -> EngineTiming: ...

    def continuation(self, prompt_ids: list[int], max_new_tokens: int, eos: set[int]) -> list[int]: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
