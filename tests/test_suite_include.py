"""`include:` in suite files: blocks shared between suites, like lm-eval's task YAML."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from paqbench.planner import build_plan
from paqbench.registry import get_registry
from paqbench.suite import SuiteError, load_suite
from tests.helpers import ROOT, paqbench

BASE = """
model:
  source: tiny-random-llama
seed: 3
metrics:
  - params
"""

SUITE = """
name: s
include: common/base.yaml
seed: 1
pipelines:
  - name: m
    steps:
      - magnitude: {sparsity: 0.5}
"""


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_included_keys_merge_under_the_suites_own(tmp_path):
    write(tmp_path, "common/base.yaml", BASE)
    loaded = load_suite(write(tmp_path, "s.yaml", SUITE))
    assert loaded.suite.model.source == "tiny-random-llama"
    assert loaded.suite.seed == 1  # the including file wins
    assert [m.name for m in loaded.suite.metrics] == ["params"]
    assert "include" not in loaded.raw
    # every key keeps the file and line it is written on
    assert loaded.file_of(("metrics", 0)) == (tmp_path / "common/base.yaml").resolve()
    assert loaded.line_of(("metrics", 0)) == 5
    assert loaded.file_of(("seed",)) == tmp_path / "s.yaml"
    assert loaded.line_of(("seed",)) == 3


def test_same_plan_as_the_suite_written_out(tmp_path):
    write(tmp_path, "common/base.yaml", BASE)
    included = build_plan(load_suite(write(tmp_path, "s.yaml", SUITE)), get_registry())
    flat = SUITE.replace("include: common/base.yaml\n", "model: {source: tiny-random-llama}\nmetrics: [params]\n")
    written = build_plan(load_suite(write(tmp_path, "flat.yaml", flat)), get_registry())
    assert [r.to_dict() for r in included.runs] == [r.to_dict() for r in written.runs]
    assert included.resolved_suite == written.resolved_suite


def test_later_includes_override_earlier_and_nest(tmp_path):
    write(tmp_path, "a.yaml", "seed: 1\nmetrics: [params]\n")
    write(tmp_path, "b.yaml", "include: a.yaml\nseed: 2\n")
    write(tmp_path, "c.yaml", "model: {source: tiny-random-llama}\nseed: 5\n")
    suite = write(tmp_path, "s.yaml", "name: s\ninclude: [b.yaml, c.yaml]\npipelines: []\n")
    loaded = load_suite(suite)
    assert loaded.suite.seed == 5
    assert loaded.file_of(("metrics",)) == (tmp_path / "a.yaml").resolve()


def test_a_schema_error_names_the_included_file_and_line(tmp_path):
    write(tmp_path, "common/base.yaml", "model:\n  source: tiny-random-llama\n  dtipe: float32\n")
    suite = write(tmp_path, "s.yaml", "name: s\ninclude: common/base.yaml\npipelines: []\n")
    with pytest.raises(SuiteError) as info:
        load_suite(suite)
    assert str(info.value).startswith(f"{(tmp_path / 'common/base.yaml').resolve()}:3: model.dtipe: unknown field")


def test_a_missing_include_is_one_line_naming_the_file(tmp_path):
    write(tmp_path, "common/base.yaml", BASE)
    suite = write(tmp_path, "s.yaml", "name: s\ninclude: [common/base.yaml, common/nothere.yaml]\npipelines: []\n")
    with pytest.raises(SuiteError) as info:
        load_suite(suite)
    message = str(info.value)
    assert "\n" not in message
    assert message == f"{suite}:2: include[1]: file not found: {(tmp_path / 'common/nothere.yaml').resolve()}"


def test_a_cyclic_include_is_one_line_naming_the_cycle(tmp_path):
    suite = write(tmp_path, "s.yaml", "include: common/c2.yaml\nname: c\npipelines: []\n")
    write(tmp_path, "common/c2.yaml", "include: ../s.yaml\nmodel: {source: tiny-random-llama}\n")
    with pytest.raises(SuiteError) as info:
        load_suite(suite)
    message = str(info.value)
    assert "\n" not in message and "include cycle: " in message
    assert message.startswith(f"{(tmp_path / 'common/c2.yaml').resolve()}:1: include:")
    assert message.endswith(f"{suite} -> {(tmp_path / 'common/c2.yaml').resolve()} -> {suite.resolve()}")


def test_a_file_including_itself_is_a_cycle(tmp_path):
    suite = write(tmp_path, "s.yaml", "include: s.yaml\nname: c\npipelines: []\n")
    with pytest.raises(SuiteError, match="include cycle"):
        load_suite(suite)


@pytest.mark.parametrize("value", ["[]", "3", "{a: b}", "[base.yaml, 4]"])
def test_include_must_name_files(tmp_path, value):
    suite = write(tmp_path, "s.yaml", f"name: s\ninclude: {value}\npipelines: []\n")
    with pytest.raises(SuiteError, match=re.escape("s.yaml:2: include: expected a file name or a list of file names")):
        load_suite(suite)


def test_an_included_file_must_be_a_mapping(tmp_path):
    write(tmp_path, "list.yaml", "- params\n")
    suite = write(tmp_path, "s.yaml", "name: s\ninclude: list.yaml\npipelines: []\n")
    with pytest.raises(SuiteError, match=r"list\.yaml:1: .*must be a mapping of suite keys; found a list"):
        load_suite(suite)


def test_the_cli_exits_2_with_one_line(tmp_path):
    suite = write(tmp_path, "s.yaml", "name: s\ninclude: nothere.yaml\npipelines: []\n")
    result = paqbench("validate", str(suite))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: {suite}:2: include: file not found: {(tmp_path / 'nothere.yaml').resolve()}"
    ]
    assert "Traceback" not in result.stderr


def test_shipped_includes_are_used():
    """The shared blocks under suites/include/ are included by the shipped suites."""
    shared = sorted((ROOT / "suites" / "include").glob("*.yaml"))
    assert shared
    for block in shared:
        users = [s for s in (ROOT / "suites").rglob("*.yaml") if f"include/{block.name}" in s.read_text()]
        assert users, f"{block} is included by no suite"
