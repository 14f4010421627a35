"""The pluggy plugin manager: built-ins and third-party plugins, loaded the same way.

Environment variables:

``PAQBENCH_LOAD_PLUGINS``
    Comma-separated names of entry-point plugins (the entry-point name or its
    distribution name) to load; every other third-party plugin is ignored. Set it to an
    empty string to load no third-party plugin at all.
``PAQBENCH_BLOCK_PLUGINS``
    Comma-separated plugin names never to load. Built-ins can be blocked by their short
    name (``magnitude``) or module name (``paqbench_plugins.methods.prune.magnitude``).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from functools import lru_cache
from importlib.metadata import entry_points

import pluggy

import paqbench_plugins
from paqbench import hookspecs
from paqbench.version import __version__

ENTRY_POINT_GROUP = "paqbench"

def _builtin_plugin_modules() -> tuple[str, ...]:
    """Every module under :mod:`paqbench_plugins`, in name order.

    Built-ins are discovered rather than listed so that adding a method, metric or
    reporter is adding one file; each module registers itself through the same hooks a
    third-party plugin uses.
    """
    return tuple(
        sorted(
            info.name
            for info in pkgutil.walk_packages(paqbench_plugins.__path__, prefix=paqbench_plugins.__name__ + ".")
            if not info.ispkg
        )
    )


#: The built-in plugin modules, registered before any entry-point plugin.
DEFAULT_PLUGINS: tuple[str, ...] = _builtin_plugin_modules()


class PluginLoadError(Exception):
    """A plugin could not be imported or implements a hook that does not exist."""


def _csv_env(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _short(module_name: str) -> str:
    return module_name.rsplit(".", 1)[-1]


def new_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """Build a plugin manager with the built-ins and (optionally) entry-point plugins."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    blocked = _csv_env("PAQBENCH_BLOCK_PLUGINS") or set()
    for module_name in DEFAULT_PLUGINS:
        if module_name in blocked or _short(module_name) in blocked:
            continue
        module = importlib.import_module(module_name)
        pm.register(module, name=module_name)
    if load_entry_points:
        _load_entry_points(pm, blocked)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(
            f"plugin {exc.plugin!r} implements a hook that paqbench does not define: {exc}. "
            "Check the function name against `paqbench.hookspecs`."
        ) from exc
    return pm


def _load_entry_points(pm: pluggy.PluginManager, blocked: set[str]) -> None:
    allowed = _csv_env("PAQBENCH_LOAD_PLUGINS")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist_name = ep.dist.name if ep.dist is not None else ep.name
        names = {ep.name, dist_name}
        if names & blocked:
            continue
        if allowed is not None and not (names & allowed):
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must say who it is
            raise PluginLoadError(
                f"could not load paqbench plugin {ep.name!r} from distribution {dist_name!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        pm.register(plugin, name=ep.name)
        dist_version = ep.dist.version if ep.dist is not None else None
        _DISTRIBUTIONS[ep.name] = (dist_name, dist_version)


#: plugin name -> (distribution, version) for entry-point plugins.
_DISTRIBUTIONS: dict[str, tuple[str, str | None]] = {}


def plugin_distribution(plugin_name: str) -> tuple[str, str | None]:
    """Which distribution (and version) a loaded plugin came from."""
    if plugin_name in _DISTRIBUTIONS:
        return _DISTRIBUTIONS[plugin_name]
    if plugin_name.startswith(("paqbench.", "paqbench_plugins.")):  # the built-ins ship with paqbench
        return ("paqbench", __version__)
    return (plugin_name, None)


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    return new_plugin_manager()
