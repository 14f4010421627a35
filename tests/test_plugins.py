"""The plugin system: built-ins and third-party plugins through the same hooks,
duplicate names, hook typos, environment switches, and the documented hookspecs."""

from __future__ import annotations

import inspect
from importlib.metadata import distribution

import pytest

from paqbench import Method, NoParams, hookimpl, hookspecs
from paqbench.plugin_manager import DEFAULT_PLUGINS, PluginLoadError, new_plugin_manager
from paqbench.registry import DuplicateNameError, Registry, UnknownNameError
from tests.helpers import TINY_SUITE, paqbench, write_suite


class _Dummy(Method):
    name = "magnitude"  # clashes with the built-in on purpose

    def apply(self, model, params, ctx):
        return None


def test_builtins_are_registered_as_plugins():
    pm = new_plugin_manager(load_entry_points=False)
    names = [name for name, _ in pm.list_name_plugin()]
    assert names == list(DEFAULT_PLUGINS)
    registry = Registry.from_plugin_manager(pm)
    assert registry.entries["methods"]["magnitude"].plugin == "paqbench_plugins.methods.prune.magnitude"
    for kind in ("methods", "metrics", "models", "datasets", "reporters"):
        assert registry.names(kind), kind


def test_duplicate_name_is_an_error_naming_both_plugins():
    pm = new_plugin_manager(load_entry_points=False)

    class Clash:
        @hookimpl
        def paqbench_register_methods(self, register):
            register(_Dummy)

    pm.register(Clash(), name="clashing-plugin")
    try:
        with pytest.raises(DuplicateNameError) as info:
            Registry.from_plugin_manager(pm)
    finally:
        pm.unregister(name="clashing-plugin")
    message = str(info.value)
    assert "'magnitude'" in message
    assert "paqbench_plugins.methods.prune.magnitude" in message and "clashing-plugin" in message


def test_throwaway_registration_adds_a_method():
    pm = new_plugin_manager(load_entry_points=False)

    class Renamed(_Dummy):
        name = "noop-for-test"
        Params = NoParams

    class Plugin:
        @hookimpl
        def paqbench_register_methods(self, register):
            register(Renamed)

    pm.register(Plugin(), name="throwaway")
    try:
        assert Registry.from_plugin_manager(pm).method("noop-for-test") is Renamed
    finally:
        pm.unregister(name="throwaway")


def test_a_hook_name_typo_fails_fast(monkeypatch):
    import paqbench.plugin_manager as manager

    class Typo:
        @hookimpl
        def paqbench_register_method(self, register):  # missing 's'
            pass

    monkeypatch.setattr(manager, "_load_entry_points", lambda pm, blocked: pm.register(Typo(), name="typo"))
    with pytest.raises(PluginLoadError, match="paqbench_register_method"):
        new_plugin_manager()


def test_registering_a_non_subclass_is_rejected():
    pm = new_plugin_manager(load_entry_points=False)

    class Bad:
        @hookimpl
        def paqbench_register_metrics(self, register):
            register(dict)

    pm.register(Bad(), name="bad")
    try:
        with pytest.raises(TypeError, match=r"not a subclass of paqbench\.Metric"):
            Registry.from_plugin_manager(pm)
    finally:
        pm.unregister(name="bad")


def test_unknown_name_lists_close_matches():
    registry = Registry.from_plugin_manager(new_plugin_manager(load_entry_points=False))
    with pytest.raises(UnknownNameError, match="did you mean 'perplexity'"):
        registry.metric("perplexty")


def test_block_builtin_by_short_name(monkeypatch):
    monkeypatch.setenv("PAQBENCH_BLOCK_PLUGINS", "magnitude")
    registry = Registry.from_plugin_manager(new_plugin_manager(load_entry_points=False))
    assert "magnitude" not in registry.names("methods")


def test_every_hookspec_is_documented_and_typed():
    specs = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("paqbench_")]
    assert len(specs) == 6
    for spec in specs:
        assert spec.__doc__ and len(spec.__doc__.strip()) > 40, spec.__name__
        assert list(inspect.signature(spec).parameters) == ["register"]
        assert "register" in spec.__annotations__


def test_hookimpl_is_importable_from_package_root():
    import paqbench

    assert paqbench.hookimpl is hookspecs.hookimpl


# --- the third-party example plugin, installed as its own distribution -------------

def _example_installed() -> bool:
    try:
        distribution("paqbench-example-plugin")
    except Exception:
        return False
    return True


@pytest.fixture
def example_plugin():
    if not _example_installed():
        pytest.fail("install the example plugin first: pip install ./tests/example_plugin")


def test_third_party_plugin_is_discovered_through_entry_point(example_plugin):
    result = paqbench("plugins")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("example "))
    assert "paqbench-example-plugin" in line and "0.2.0" in line
    assert "gaussian-noise" in line and "weight-norm" in line


def test_third_party_plugin_is_used_by_a_suite(example_plugin, tmp_path):
    suite = write_suite(tmp_path, """
        name: thirdparty
        model: tiny-random-llama
        metrics: [weight-norm]
        pipelines:
          - name: noise
            steps:
              - gaussian-noise: {sigma: 0.5}
        """)
    result = paqbench("run", str(suite), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    norms = {r["name"]: r["measurements"][0]["value"] for r in report["runs"]}
    assert norms["noise"] > norms["baseline"] > 0  # independent noise adds energy


def test_load_plugins_env_can_exclude_third_party(example_plugin):
    result = paqbench("plugins", env={"PAQBENCH_LOAD_PLUGINS": ""})
    assert result.returncode == 0
    assert "gaussian-noise" not in result.stdout
    blocked = paqbench("list", "methods", env={"PAQBENCH_BLOCK_PLUGINS": "paqbench-example-plugin"})
    assert "gaussian-noise" not in blocked.stdout


def test_list_verbose_shows_parameters_types_and_defaults():
    result = paqbench("list", "methods", "-v")
    assert result.returncode == 0
    assert "sparsity" in result.stdout and "float" in result.stdout and "0.5" in result.stdout
    assert "family: prune" in result.stdout


def test_suite_text_fixture_is_valid(tmp_path):
    assert paqbench("validate", str(write_suite(tmp_path, TINY_SUITE))).returncode == 0
