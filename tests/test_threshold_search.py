"""Threshold search: bisection over a step parameter, each probe a recorded run.

A throwaway method stores its parameter on the model and a throwaway metric reports a
known function of it, so the probes and the answer of the bisection are checked exactly.
"""

from __future__ import annotations

import json

import pytest
from pydantic import Field

from paqbench import Method, Metric, Params, hookimpl
from paqbench.planner import RunSpec, SearchSpec, build_plan
from paqbench.plugin_manager import new_plugin_manager
from paqbench.registry import Registry
from paqbench.report import build_report
from paqbench.report.search import search_lines
from paqbench.runner.search import bisect
from paqbench.runner.session import run_plan
from paqbench.suite import SuiteError, load_suite
from tests.helpers import write_suite


class KnobParams(Params):
    x: float = Field(0.0, ge=0.0, le=10.0, description="the knob")
    n: int = Field(0, ge=0, le=64, description="an integer knob")


class SetKnob(Method):
    name = "set-knob"
    family = "other"
    description = "Test method: remember x and n on the model."
    Params = KnobParams
    accepts = frozenset({"dense"})

    def apply(self, model, params, ctx):
        model._knob = (params.x, params.n)
        return {"x": params.x}


class DamageParams(Params):
    scale: float = Field(100.0, description="damage = scale * x**2 + n + offset")
    offset: float = Field(0.0, description="the damage of the untouched model")


class Damage(Metric):
    name = "damage"
    description = "Test metric: scale * x**2 + n, a known increasing function of the knob."
    Params = DamageParams

    def measure(self, model, params, ctx):
        x, n = getattr(model, "_knob", (0.0, 0))
        yield self.make("score", params.scale * x * x + n + params.offset, unit="", better="lower")


class Plugin:
    @hookimpl
    def paqbench_register_methods(self, register):
        register(SetKnob)

    @hookimpl
    def paqbench_register_metrics(self, register):
        register(Damage)


@pytest.fixture(scope="module")
def registry():
    pm = new_plugin_manager(load_entry_points=False)
    pm.register(Plugin(), name="search-test")
    return Registry.from_plugin_manager(pm)


SEARCH_SUITE = """
name: search
model: tiny-random-llama
metrics:
  - damage
pipelines:
  - name: knob
    steps:
      - set-knob:
          x: {search: {low: 0.0, high: 0.9, tol: 0.05}}
    objective: {metric: damage/score, max: 25}
"""

# damage = 100 x^2 <= 25  <=>  x <= 0.5; bisection probes low, high, then midpoints
EXPECTED_PROBES = [0.0, 0.9, 0.45, 0.675, 0.5625, 0.50625, 0.478125]


def _plan(tmp_path, registry, text=SEARCH_SUITE, name="suite.yaml"):
    return build_plan(load_suite(write_suite(tmp_path, text, name)), registry)


def test_search_runs_probes_and_report_states_answer(tmp_path, registry):
    plan = _plan(tmp_path, registry)
    assert [r.name for r in plan.runs] == ["baseline"] and len(plan.searches) == 1
    out = tmp_path / "out"
    summary = run_plan(plan, out, registry=registry, isolation="in-process", echo=lambda m: None)
    (outcome,) = summary.searches
    assert [p.value for p in outcome.probes] == EXPECTED_PROBES
    assert [p.feasible for p in outcome.probes] == [True, False, True, False, False, False, True]
    assert outcome.answer == 0.478125 and outcome.bracket == (0.478125, 0.50625)
    assert outcome.answer <= 0.5 < outcome.answer + 0.05  # the true threshold is inside the bracket
    assert [p.measured for p in outcome.probes][:3] == [0.0, pytest.approx(81.0), pytest.approx(20.25)]
    # every probe is a recorded run of its own
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 + len(EXPECTED_PROBES)

    report = build_report(out)
    (search,) = report.searches
    assert search["answer"] == 0.478125 and search["status"] == "done"
    assert [p["value"] for p in search["probes"]] == EXPECTED_PROBES
    names = [r["name"] for r in report.runs]
    assert names[0] == "baseline" and "knob[x=0.45]" in names and len(names) == 8
    assert all(r["search"] == "knob" for r in report.runs[1:])
    from paqbench_plugins.reporters.json_report import JSONReporter
    from paqbench_plugins.reporters.markdown import MarkdownReporter

    JSONReporter().write(report, out)
    MarkdownReporter().write(report, out)
    data = json.loads((out / "report.json").read_text())
    assert data["searches"][0]["answer"] == 0.478125
    md = (out / "report.md").read_text()
    assert "## Threshold searches" in md and "**0.478125**" in md and "damage/score ≤ 25" in md
    assert "knob[x=0.50625]" in md


def test_search_resumes_without_rerunning_probes(tmp_path, registry):
    plan = _plan(tmp_path, registry)
    out = tmp_path / "out"
    calls = {"n": 0}

    def interrupt_after_three(message):
        if message.endswith(": running") and "[search" in message:
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt

    first = run_plan(plan, out, registry=registry, isolation="in-process", echo=interrupt_after_three)
    assert first.interrupted and len(first.ran) == 4  # baseline + 3 probes
    report = build_report(out)
    assert report.searches[0]["status"] == "incomplete"
    assert "knob (threshold search; next probe knob[x=0.675])" in report.missing

    second = run_plan(plan, out, registry=registry, isolation="in-process", echo=lambda m: None)
    assert [r.name for r in second.ran] == [f"knob[x={v:g}]" for v in EXPECTED_PROBES[3:]]
    assert second.searches[0].answer == 0.478125
    third = run_plan(plan, out, registry=registry, isolation="in-process", echo=lambda m: None)
    assert third.ran == [] and third.searches[0].answer == 0.478125


def _search(low, high, tol=1.0, integer=False, find="largest", bound=None, max_probes=12):
    template = RunSpec(name="p", pipeline="p", steps=[{"method": "set-knob", "params": {"x": low, "n": 0}}],
                       metrics=[], model={}, model_source="", calibration={}, seed=0)
    objective = {"metric": "damage/score", "max": None, "min": None, "find": find, **(bound or {"max": 25})}
    return SearchSpec(name="p", pipeline="p", template=template, step=0, param="n" if integer else "x",
                      label="n" if integer else "x", low=low, high=high, tol=tol, integer=integer,
                      max_probes=max_probes, objective=objective)


def _evaluate(function, param="x"):
    def evaluate(spec):
        value = function(spec.steps[0].params[param])
        return {"status": "ok", "measurements": [
            {"metric": "damage", "name": "score", "value": value, "unit": "", "better": "lower"}]}
    return evaluate


def test_integer_search_finds_exact_threshold():
    # n <= 25 keeps the bound: integer bisection over [0, 64] lands exactly on 25
    outcome = bisect(_search(0, 64, integer=True, max_probes=20), _evaluate(float, "n"))
    assert outcome.status == "done"
    assert outcome.answer == 25 and outcome.bracket == (25, 26)
    assert all(isinstance(p.value, int) for p in outcome.probes)
    assert [p.value for p in outcome.probes] == [0, 64, 32, 16, 24, 28, 26, 25]


def test_smallest_with_min_bound_and_edge_cases():
    # accuracy-like metric rising with x: smallest x with 1 - exp(-x) >= 0.5 is ln 2
    import math

    outcome = bisect(_search(0.0, 4.0, tol=1e-3, find="smallest", bound={"min": 0.5}, max_probes=30),
                     _evaluate(lambda x: 1 - math.exp(-x)))
    assert outcome.answer >= math.log(2) > outcome.answer - 1e-3
    assert outcome.bracket[0] < math.log(2) <= outcome.bracket[1]
    # the bound fails at the safe end: no answer after one probe
    none = bisect(_search(0.0, 0.9, tol=0.1), _evaluate(lambda x: 100.0))
    assert none.answer is None and none.status == "done" and len(none.probes) == 1
    # holds everywhere: the high end is the answer after two probes
    whole = bisect(_search(0.0, 0.9, tol=0.1), _evaluate(lambda x: 0.0))
    assert whole.answer == 0.9 and len(whole.probes) == 2
    # max_probes caps the cost and says so
    capped = bisect(_search(0.0, 0.9, tol=1e-6, max_probes=4), _evaluate(lambda x: 100 * x * x))
    assert len(capped.probes) == 4 and "max_probes" in capped.reason
    # a failed probe stops the search with its error
    failed = bisect(_search(0.0, 0.9), lambda spec: {"status": "failed", "error": {"message": "boom"}})
    assert failed.status == "failed" and "boom" in failed.reason
    # a missing objective measurement names what was measured
    missing = bisect(_search(0.0, 0.9), lambda spec: {"status": "ok", "measurements": [
        {"metric": "damage", "name": "other", "value": 1.0}]})
    assert missing.status == "failed" and "damage/other" in missing.reason


def _problems(tmp_path, registry, text):
    with pytest.raises(SuiteError) as info:
        _plan(tmp_path, registry, text, "bad.yaml")
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s.replace("    objective: {metric: damage/score, max: 25}\n", ""),
     "bad.yaml:6: pipelines[0]: set-knob.x is searched, so the pipeline needs an objective"),
    (lambda s: s.replace("x: {search: {low: 0.0, high: 0.9, tol: 0.05}}", "x: 0.3"),
     "bad.yaml:10: pipelines[0].objective: an objective needs a step parameter"),
    (lambda s: s.replace("metric: damage/score", "metric: perplexity/embedded"),
     "bad.yaml:10: pipelines[0].objective.metric: metric 'perplexity' is not measured by this suite"),
    (lambda s: s.replace("max: 25", "max: 25, min: 1"),
     "bad.yaml:10: pipelines[0].objective: give exactly one of max, min or min_recovery"),
    (lambda s: s.replace("low: 0.0, high: 0.9", "low: 0.9, high: 0.1"),
     "bad.yaml:9: pipelines[0].steps[0].set-knob.x.search: low must be less than high"),
    (lambda s: s.replace("tol: 0.05", "tolerance: 0.05"),
     "bad.yaml:9: pipelines[0].steps[0].set-knob.x.search.tolerance: unknown field 'tolerance'"),
    (lambda s: s.replace("high: 0.9", "high: 12"),
     "bad.yaml:9: pipelines[0].steps[0].set-knob.x: expected less than or equal to 10; found 12.0 "
     "(the search's high end)"),
    (lambda s: s.replace("x: {search: {low: 0.0, high: 0.9, tol: 0.05}}", "n: {search: {low: 0.5, high: 9}}"),
     "bad.yaml:9: pipelines[0].steps[0].set-knob.n.search: set-knob.n is an integer"),
], ids=["no-objective", "no-search", "unmeasured-metric", "two-bounds", "low-above-high", "unknown-field",
        "high-out-of-range", "integer-bounds"])
def test_invalid_searches_name_file_line_and_field(tmp_path, registry, edit, expected):
    problems = _problems(tmp_path, registry, edit(SEARCH_SUITE))
    assert any(p.startswith(str(tmp_path / expected.split(":")[0]) + expected[len(expected.split(":")[0]):])
               for p in problems), problems


def test_search_with_a_sweep_searches_each_combination(tmp_path, registry):
    text = SEARCH_SUITE.replace("x: {search: {low: 0.0, high: 0.9, tol: 0.05}}",
                                "x: {search: {low: 0.0, high: 0.9, tol: 0.05}}\n          n: [0, 9]")
    plan = _plan(tmp_path, registry, text)
    assert [s.name for s in plan.searches] == ["knob[n=0]", "knob[n=9]"]
    assert plan.searches[1].probe(0.45).name == "knob[n=9,x=0.45]"
    summary = run_plan(plan, tmp_path / "out", registry=registry, isolation="in-process", echo=lambda m: None)
    first, second = summary.searches
    assert first.answer == 0.478125
    # 100 x^2 + 9 <= 25  <=>  x <= 0.4
    assert second.bracket[0] <= 0.4 < second.bracket[1] and second.answer == second.bracket[0]


# -- recovery objective: percent of the baseline run's value ------------------------------------


def test_min_recovery_bounds_the_percentage_of_the_baseline():
    """damage = 10 + 100 x^2 against a baseline of 10: recovery 10 / damage >= 80%
    <=> x <= sqrt(0.025) = 0.1581."""
    baseline = {"status": "ok", "measurements": [
        {"metric": "damage", "name": "score", "value": 10.0, "unit": "", "better": "lower"}]}
    search = _search(0.0, 0.9, tol=1e-3, bound={"min_recovery": 80}, max_probes=30)
    outcome = bisect(search, _evaluate(lambda x: 10 + 100 * x * x), baseline)
    assert outcome.status == "done" and outcome.bracket[0] <= 0.025 ** 0.5 <= outcome.bracket[1]
    assert outcome.probes[0].measured == pytest.approx(100.0) and outcome.probes[1].measured < 80
    assert "recovery >= 80%" in outcome.summary()
    alone = bisect(search, _evaluate(lambda x: 10 + 100 * x * x))
    assert alone.status == "failed" and "baseline run's result" in alone.reason


def test_min_recovery_search_runs_end_to_end(tmp_path, registry):
    text = SEARCH_SUITE.replace("  - damage\n", "  - damage: {offset: 10}\n").replace(
        "objective: {metric: damage/score, max: 25}", "objective: {metric: damage/score, min_recovery: 80}")
    out = tmp_path / "out"
    summary = run_plan(_plan(tmp_path, registry, text), out, registry=registry, isolation="in-process",
                       echo=lambda m: None)
    (outcome,) = summary.searches
    assert outcome.status == "done" and outcome.bracket[0] <= 0.025 ** 0.5 <= outcome.bracket[1]
    report = build_report(out)
    assert report.searches[0]["answer"] == outcome.answer  # the report replays it with the baseline
    assert "damage/score recovery ≥ 80% of the baseline" in "\n".join(search_lines(report.searches))
