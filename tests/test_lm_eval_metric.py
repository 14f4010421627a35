"""The lm-eval metric reports what lm_eval.simple_evaluate computes, offline, on a custom
task config over local files."""

from __future__ import annotations

import json
import math

import pytest

from paqbench import Unavailable
from paqbench_plugins.metrics.lm_eval import LmEval, LmEvalParams, resolve_tasks, task_manager

ITEMS = [
    ("The sky on a clear day is", ["blue", "green", "loud", "square"], 0),
    ("Two plus two equals", ["five", "four", "seven", "nine"], 1),
    ("Ice is frozen", ["fire", "sand", "water", "light"], 2),
    ("A cat says", ["moo", "quack", "baa", "meow"], 3),
    ("The opposite of hot is", ["cold", "tall", "slow", "red"], 0),
    ("Bread is baked in an", ["ocean", "oven", "orbit", "owl"], 1),
]

TASK_YAML = """\
task: paqbench_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{prompt}}}}"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture
def tiny_task(tmp_path):
    """A six-item multiple-choice task on a local JSON-lines file; returns include_path."""
    data = tmp_path / "tiny_mc.jsonl"
    data.write_text("".join(
        json.dumps({"prompt": p, "choices": c, "label": y}) + "\n" for p, c, y in ITEMS
    ))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(TASK_YAML.format(data=data))
    return str(tasks)


def test_measurements_equal_what_simple_evaluate_returns(
    tiny_llama, tiny_tokenizer, make_context, tiny_task
):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    params = LmEvalParams(tasks="paqbench_tiny_mc", include_path=tiny_task, include_defaults=False)
    measured = {m.name: m for m in LmEval().measure(tiny_llama, params, make_context())}

    direct = simple_evaluate(
        model=HFLM(pretrained=tiny_llama, tokenizer=tiny_tokenizer, batch_size=1),
        tasks=["paqbench_tiny_mc"], task_manager=task_manager(tiny_task, False),
    )["results"]["paqbench_tiny_mc"]

    assert set(measured) == {"paqbench_tiny_mc/acc", "paqbench_tiny_mc/acc_norm"}
    for name in ("acc", "acc_norm"):
        m = measured[f"paqbench_tiny_mc/{name}"]
        assert m.value == direct[f"{name},none"]
        assert m.spread == {"stderr": direct[f"{name}_stderr,none"]}
        assert (m.unit, m.better, m.metric) == ("fraction", "higher", "lm-eval")
        assert m.details["documents"] == 6
        # a six-item accuracy is a multiple of 1/6
        assert math.isclose(m.value * 6, round(m.value * 6), abs_tol=1e-9)


def test_run_limit_caps_documents(tiny_llama, make_context, tiny_task):
    params = LmEvalParams(tasks=["paqbench_tiny_mc"], include_path=tiny_task,
                          include_defaults=False, limit=5)
    measured = list(LmEval().measure(tiny_llama, params, make_context(limit=3)))
    assert {m.details["documents"] for m in measured} == {3}
    assert {m.details["total_documents"] for m in measured} == {6}
    assert {m.details["limit"] for m in measured} == {3}


def test_unreachable_task_data_is_unavailable_not_an_error(tiny_llama, make_context, tmp_path):
    # HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set by conftest: a hub dataset cannot load
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "remote.yaml").write_text(
        "task: paqbench_remote_mc\ndataset_path: paqbench-tests/no-such-dataset\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: q\ndoc_to_target: 0\n"
        "doc_to_choice: ['a', 'b']\nmetric_list:\n  - metric: acc\n"
    )
    params = LmEvalParams(tasks=["paqbench_remote_mc"], include_path=str(tasks),
                          include_defaults=False)
    with pytest.raises(Unavailable, match="paqbench_remote_mc"):
        list(LmEval().measure(tiny_llama, params, make_context()))


def test_unknown_task_name_fails_with_suggestions(tiny_task):
    manager = task_manager(tiny_task, False)
    with pytest.raises(ValueError, match="did you mean paqbench_tiny_mc"):
        resolve_tasks(manager, ["paqbench_tiny_mcq"])
    assert resolve_tasks(manager, ["paqbench_tiny_*"]) == ["paqbench_tiny_mc"]


def test_params_accept_one_task_and_reject_unknown_keys():
    assert LmEvalParams(tasks="arc_easy").tasks == ["arc_easy"]
    assert LmEvalParams().tasks == ["hellaswag"]
    with pytest.raises(ValueError):
        LmEvalParams(task="arc_easy")
    with pytest.raises(ValueError):
        LmEvalParams(tasks=[])
