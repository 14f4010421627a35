"""What each layer format can become in each export target.

Every layer format answers ``export_capability(target)`` itself (the method lives on the
format class, next to its layout, because the answer depends on the instance: bits, group
layout, symmetry). A plain ``nn.Linear`` (dense or pruned) and ``nn.Embedding`` have no
such method; :func:`capability_of` answers for them from :data:`FALLBACKS`. A module with
neither is ``unavailable``: an exporter never guesses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import nn

#: The export targets paqbench writes.
TARGETS = ("compressed-tensors", "gguf")

Level = Literal["exact", "converted", "unavailable"]


@dataclass(frozen=True)
class Capability:
    """How one layer goes into one target.

    ``exact``: the target's values equal paqbench's (the codes are copied, not re-rounded).
    ``converted``: written another way (``how``), with an added error that the round trip
    measures. ``unavailable``: not written at all, ``reason`` says why.
    """

    level: Level
    how: str
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def exact(how: str) -> Capability:
    return Capability("exact", how)


def converted(how: str, reason: str) -> Capability:
    return Capability("converted", how, reason)


def unavailable(reason: str) -> Capability:
    return Capability("unavailable", "", reason)


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown export target {target!r}; known: {', '.join(TARGETS)}")


def dense_capability(target: str) -> Capability:
    """A float weight (a dense or pruned ``nn.Linear``, a token table, or anything written
    dequantized): float16 in both targets, so the only error is float16 rounding."""
    check_target(target)
    return converted("F16" if target == "gguf" else "float16 tensor", "dense weight rounded to float16")


def _linear_capability(module: nn.Module, target: str) -> Capability:
    return dense_capability(target)


#: Capability of module classes that cannot declare it themselves (torch's own layers).
FALLBACKS: dict[type[nn.Module], Callable[[nn.Module, str], Capability]] = {
    nn.Linear: _linear_capability,
    nn.Embedding: _linear_capability,
}


def capability_of(module: nn.Module, target: str) -> Capability:
    """The module's own ``export_capability(target)``, else the fallback for its class."""
    check_target(target)
    declared = getattr(module, "export_capability", None)
    if callable(declared):
        return declared(target)
    for cls in type(module).__mro__:
        rule = FALLBACKS.get(cls)
        if rule is not None:
            return rule(module, target)
    return unavailable(f"{type(module).__name__} declares no export_capability and has no fallback rule")
