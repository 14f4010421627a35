"""What the loaded plugins provide, by name.

The registry calls each plugin's register hooks one plugin at a time, so it knows who
registered what: a duplicate name is an error naming both plugins, and ``paqbench
plugins`` can say what each plugin contributes.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import pluggy

from paqbench.interfaces import Dataset, Method, Metric, ModelSource, Reporter
from paqbench.layers.contract import CompressedLayer
from paqbench.plugin_manager import get_plugin_manager

#: registry kind -> (hook name, base class)
KINDS: dict[str, tuple[str, type]] = {
    "methods": ("paqbench_register_methods", Method),
    "metrics": ("paqbench_register_metrics", Metric),
    "models": ("paqbench_register_model_sources", ModelSource),
    "datasets": ("paqbench_register_datasets", Dataset),
    "reporters": ("paqbench_register_reporters", Reporter),
    "formats": ("paqbench_register_layer_formats", CompressedLayer),
}


class DuplicateNameError(Exception):
    """Two plugins registered the same name for the same kind of thing."""


class UnknownNameError(LookupError):
    """A name no plugin registered; carries the closest known names."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = known
        self.suggestions = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        singular = kind[:-1]
        message = f"unknown {singular} {name!r}"
        if self.suggestions:
            message += f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?"
        message += f" (known: {', '.join(sorted(known)) or 'none'})"
        super().__init__(message)


@dataclass
class Registered:
    cls: type
    plugin: str


@dataclass
class Registry:
    entries: dict[str, dict[str, Registered]] = field(default_factory=dict)

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> Registry:
        registry = cls({kind: {} for kind in KINDS})
        for kind, (hook_name, base) in KINDS.items():
            hook = getattr(pm.hook, hook_name)
            for impl in reversed(hook.get_hookimpls()):  # registration order
                registry._collect(kind, base, impl)
        return registry

    def _collect(self, kind: str, base: type, impl: Any) -> None:
        table = self.entries[kind]

        def register(item: type) -> None:
            if not (isinstance(item, type) and issubclass(item, base)):
                raise TypeError(
                    f"plugin {impl.plugin_name!r} registered {item!r} as one of the {kind}, "
                    f"but it is not a subclass of paqbench.{base.__name__}"
                )
            name = getattr(item, "name", None)
            if not isinstance(name, str) or not name:
                raise TypeError(f"plugin {impl.plugin_name!r}: {item.__name__} has no `name`")
            if name in table:
                first = table[name].plugin
                raise DuplicateNameError(
                    f"{kind[:-1]} name {name!r} is registered twice: by plugin {first!r} "
                    f"and by plugin {impl.plugin_name!r}. Uninstall or block one of them "
                    "(PAQBENCH_BLOCK_PLUGINS)."
                )
            table[name] = Registered(item, impl.plugin_name)

        impl.function(register=register)

    def names(self, kind: str) -> list[str]:
        return list(self.entries[kind])

    def get(self, kind: str, name: str) -> type:
        try:
            return self.entries[kind][name].cls
        except KeyError:
            raise UnknownNameError(kind, name, self.names(kind)) from None

    def method(self, name: str) -> type[Method]:
        return self.get("methods", name)

    def metric(self, name: str) -> type[Metric]:
        return self.get("metrics", name)

    def model_source(self, name: str) -> type[ModelSource]:
        return self.get("models", name)

    def dataset(self, name: str) -> type[Dataset]:
        return self.get("datasets", name)

    def reporter(self, name: str) -> type[Reporter]:
        return self.get("reporters", name)

    def layer_format(self, name: str) -> type[CompressedLayer]:
        return self.get("formats", name)

    def by_plugin(self) -> dict[str, dict[str, list[str]]]:
        """plugin name -> kind -> names it registered."""
        result: dict[str, dict[str, list[str]]] = {}
        for kind, table in self.entries.items():
            for name, entry in table.items():
                result.setdefault(entry.plugin, {}).setdefault(kind, []).append(name)
        return result


def get_registry() -> Registry:
    """The registry of the process-wide plugin manager."""
    return Registry.from_plugin_manager(get_plugin_manager())


def registered_formats() -> dict[str, type[CompressedLayer]]:
    """Registered compressed-layer formats by name (loads the plugins on first use).

    Here rather than in :mod:`paqbench.layers.contract`: the contract is a base class the
    registry checks plugins against, so the contract must not import the registry."""
    return {name: entry.cls for name, entry in get_registry().entries["formats"].items()}
