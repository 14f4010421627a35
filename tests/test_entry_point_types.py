"""Every built-in method and metric entry point is annotated: the boundary between the
runner and a plugin is typed (``apply(self, model: nn.Module, params: XParams,
ctx: RunContext)``, ``measure(...)`` likewise), with ``params`` the plugin's own schema."""

from __future__ import annotations

import inspect
import typing

import pytest
import torch

from paqbench import RunContext
from paqbench.registry import get_registry

BUILTIN = "paqbench_plugins."


def builtin_entry_points() -> list[tuple[str, type, str]]:
    registry = get_registry()
    found = []
    for kind, entry_point in (("methods", "apply"), ("metrics", "measure")):
        for name, entry in sorted(registry.entries[kind].items()):
            if entry.plugin.startswith(BUILTIN):
                found.append((f"{kind}/{name}", entry.cls, entry_point))
    return found


ENTRY_POINTS = builtin_entry_points()


def test_every_family_has_built_in_entry_points():
    kinds = {label.split("/")[0] for label, _, _ in ENTRY_POINTS}
    assert kinds == {"methods", "metrics"}


@pytest.mark.parametrize("label, cls, entry_point", ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
def test_entry_point_is_annotated(label, cls, entry_point):
    function = getattr(cls, entry_point)
    hints = typing.get_type_hints(function)
    parameters = list(inspect.signature(function).parameters)
    assert parameters == ["self", "model", "params", "ctx"], f"{label}: {parameters}"
    model = hints.get("model")
    assert isinstance(model, type) and issubclass(model, torch.nn.Module), f"{label}: model is {model!r}"
    assert hints.get("params") is cls.Params, f"{label}: params is {hints.get('params')!r}, not {cls.Params!r}"
    assert hints.get("ctx") is RunContext, f"{label}: ctx is {hints.get('ctx')!r}"
    assert "return" in hints, f"{label}: no return annotation"
