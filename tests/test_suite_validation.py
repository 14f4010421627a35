"""Invalid suites give one clear error each (file, line, field, expected, found),
exit code 2 and no traceback."""

from __future__ import annotations

import pytest

from paqbench.planner import StepSpec, build_plan
from paqbench.registry import get_registry
from paqbench.suite import SuiteError, load_suite
from tests.helpers import TINY_SUITE, paqbench, write_suite


def problems_of(path) -> list[str]:
    with pytest.raises(SuiteError) as info:
        build_plan(load_suite(path), get_registry())
    return [str(p) for p in info.value.problems]


def test_valid_suite_expands_sweep_with_baseline_first(tmp_path):
    plan = build_plan(load_suite(write_suite(tmp_path, TINY_SUITE)), get_registry())
    assert [r.name for r in plan.runs] == ["baseline", "magnitude[sparsity=0.25]", "magnitude[sparsity=0.5]"]
    assert plan.runs[1].steps == [StepSpec("magnitude", {
        "sparsity": 0.25, "pattern": None, "targets": None, "scope": "layer"})]
    assert plan.runs[0].steps == []
    assert len({r.config_hash for r in plan.runs}) == 3


def test_broken_yaml_names_file_and_line(tmp_path):
    path = write_suite(tmp_path, "name: x\nmodel: tiny-random-llama\npipelines: [\n  - {name: a\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:")
    assert "invalid YAML" in problem


def test_unknown_method_suggests_closest(tmp_path):
    path = write_suite(tmp_path, TINY_SUITE.replace("- magnitude: {", "- magnitud: {"))
    (problem,) = problems_of(path)
    assert f"{path}:10: pipelines[0].steps[0].method: unknown method 'magnitud'" in problem
    assert "did you mean 'magnitude'" in problem


def test_wrong_parameter_type_names_field_and_found_value(tmp_path):
    path = write_suite(tmp_path, TINY_SUITE.replace("[0.25, 0.5]", "half"))
    (problem,) = problems_of(path)
    assert f"{path}:10: pipelines[0].steps[0].magnitude.sparsity:" in problem
    assert "valid number" in problem and "'half'" in problem


def test_out_of_range_value_inside_a_sweep_is_reported(tmp_path):
    path = write_suite(tmp_path, TINY_SUITE.replace("[0.25, 0.5]", "[0.25, 1.5]"))
    (problem,) = problems_of(path)
    assert "sparsity" in problem and "less than 1" in problem and "1.5" in problem


def test_unknown_parameter_lists_the_real_ones(tmp_path):
    path = write_suite(tmp_path, TINY_SUITE.replace("{sparsity: [0.25, 0.5]}", "{sparsty: 0.5}"))
    (problem,) = problems_of(path)
    assert "magnitude has no parameter 'sparsty'" in problem and "sparsity" in problem


def test_missing_required_field(tmp_path):
    path = write_suite(tmp_path, TINY_SUITE.replace("model: tiny-random-llama\n", ""))
    (problem,) = problems_of(path)
    assert "model: required field is missing" in problem


def test_unknown_top_level_field_suggests_fix(tmp_path):
    path = write_suite(tmp_path, TINY_SUITE + "metricz: []\n")
    (problem,) = problems_of(path)
    assert "unknown field 'metricz'" in problem and "did you mean 'metrics'" in problem


def test_unknown_model_suggests_embedded_name(tmp_path):
    path = write_suite(tmp_path, TINY_SUITE.replace("tiny-random-llama", "tiny-random-lama"))
    (problem,) = problems_of(path)
    assert f"{path}:2: model.source: unknown model 'tiny-random-lama'" in problem
    assert "did you mean 'tiny-random-llama'" in problem


def test_unknown_metric_and_duplicate_key(tmp_path):
    path = write_suite(tmp_path, TINY_SUITE.replace("  - params\n", "  - parms\n"))
    assert "unknown metric 'parms'; did you mean 'params'" in problems_of(path)[0]
    dup = write_suite(tmp_path, TINY_SUITE + "name: again\n", name="dup.yaml")
    assert "duplicate key 'name'" in problems_of(dup)[0]


def test_hub_ids_and_paths_resolve_without_network(tmp_path):
    hub = write_suite(tmp_path, TINY_SUITE.replace("tiny-random-llama", "meta-llama/Llama-3.2-3B"))
    assert build_plan(load_suite(hub), get_registry()).runs[0].model_source == "hub"
    missing = write_suite(tmp_path, TINY_SUITE.replace("tiny-random-llama", "./nope/model.gguf"), "m.yaml")
    assert "no such file or directory" in problems_of(missing)[0]


def test_list_parameters_are_not_sweeps_unless_nested(tmp_path):
    from paqbench.planner import _is_list_field

    assert _is_list_field(list[str])
    assert _is_list_field(list[str] | None)
    assert not _is_list_field(float)


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.replace("pipelines:", "pipelines: [\n"),
        lambda s: s.replace("- magnitude: {", "- magnitud: {"),
        lambda s: s.replace("[0.25, 0.5]", "half"),
        lambda s: s.replace("name: tiny\n", ""),
        lambda s: s.replace("tiny-random-llama", "tiny-random-lama"),
    ],
    ids=["broken-yaml", "unknown-method", "wrong-type", "missing-field", "unknown-model"],
)
def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path, edit):
    path = write_suite(tmp_path, edit(TINY_SUITE))
    result = paqbench("validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and str(path) in lines[0]
