"""``paqbench compare``: pairing runs, changes and directions, thresholds, the noise band,
ratios to the dense run, exit codes and outputs."""

from __future__ import annotations

import copy
import json
import math

import pytest

from paqbench.compare import (
    CompareOptions,
    ThresholdError,
    combined_noise,
    compare_measurement,
    compare_reports,
    load_thresholds_file,
    parse_floor_option,
    parse_option,
    spread_width,
    to_markdown,
)
from tests.helpers import paqbench


def _m(metric, name, value, unit="", better="lower", spread=None):
    m = {"metric": metric, "name": name, "value": value, "unit": unit, "better": better}
    if spread:
        m["spread"] = spread
    return m


def _run(name, pipeline, steps, measurements, status="ok"):
    return {"name": name, "pipeline": pipeline, "status": status, "error": None, "sweep": {},
            "planned_steps": steps, "steps": [{"name": s["method"], "params": s["params"]} for s in steps],
            "measurements": measurements}


def _latency(tpot, stdev=0.001):
    return _m("latency", "tpot", tpot, "s/token", "lower", {"median": tpot, "p90": tpot + stdev, "stdev": stdev})


def make_report(ppl=20.0, acc=0.6, tpot_dense=0.10, tpot_pruned=0.09, pruned_ppl=30.0, sparsity=0.3):
    steps = [{"method": "magnitude", "params": {"sparsity": sparsity, "targets": None}}]
    return {"suite_name": "t", "runs": [
        _run("baseline", "baseline", [], [
            _m("perplexity", "embedded", ppl, "ppl", spread={"stderr": 2.0}),
            _m("race", "high/acc", acc, "fraction", "higher", {"stderr": 0.05}),
            _m("params", "total", 1000.0, "params", None),
            _latency(tpot_dense),
        ]),
        _run(f"magnitude[sparsity={sparsity:g}]", "magnitude", steps, [
            _m("perplexity", "embedded", pruned_ppl, "ppl", spread={"stderr": 3.0}),
            _m("race", "high/acc", acc - 0.1, "fraction", "higher", {"stderr": 0.05}),
            _m("params", "total", 1000.0, "params", None),
            _latency(tpot_pruned),
        ]),
    ]}


def _opts(*limits, **kwargs):
    return CompareOptions(thresholds=tuple(parse_option(t) for t in limits), **kwargs)


def test_identical_reports_pass_and_every_metric_is_listed():
    report = make_report()
    result = compare_reports(report, copy.deepcopy(report), _opts("perplexity=1%"))
    assert not result.failed
    assert len(result.deltas) == 8 and {d.verdict for d in result.deltas} == {"same"}
    assert [p.matched_by for p in result.pairs] == ["parameters", "parameters"]


def test_worse_perplexity_beyond_relative_threshold_regresses():
    base, new = make_report(), make_report(pruned_ppl=30.9)  # +3%
    result = compare_reports(base, new, _opts("perplexity=2%"))
    (reg,) = result.regressions
    assert (reg.run, reg.key, reg.verdict) == ("magnitude[sparsity=0.3]", "perplexity/embedded", "worse")
    assert reg.abs_change == pytest.approx(0.9) and reg.rel_change == pytest.approx(0.03)
    # within the threshold: worse, but no regression; and the stderr is not taken as noise by default
    ok = compare_reports(base, make_report(pruned_ppl=30.3), _opts("perplexity=2%"))
    assert not ok.failed
    assert next(d for d in ok.deltas if d.key == "perplexity/embedded" and d.run != "baseline").verdict == "worse"
    # lower perplexity is better: never a regression however large
    better = compare_reports(base, make_report(pruned_ppl=20.0), _opts("perplexity=0%"))
    assert not better.failed
    assert next(d for d in better.deltas if d.key == "perplexity/embedded" and d.run != "baseline").verdict == "better"


def test_higher_is_better_and_absolute_thresholds():
    base = make_report(acc=0.60)
    new = make_report(acc=0.58)  # -0.02 on both runs
    assert compare_reports(base, new, _opts("race/high/acc=0.01")).regressions[0].key == "race/high/acc"
    assert not compare_reports(base, new, _opts("race/high/acc=0.03")).failed
    assert not compare_reports(base, make_report(acc=0.9), _opts("race=0")).failed  # higher is better


def test_most_specific_key_wins_and_none_exempts():
    opts = _opts("latency=1%", "latency/tpot=50%", "perplexity=none")
    assert opts.threshold_for("latency/tpot").limit == 0.5
    assert opts.threshold_for("latency/ttft").limit == 0.01
    assert not opts.threshold_for("perplexity/embedded").gated
    assert opts.threshold_for("race/high/acc") is None
    assert _opts("latency/*_s=3%").threshold_for("latency/e2e_s").limit == 0.03
    assert not compare_reports(make_report(), make_report(pruned_ppl=99.0), opts).failed


def test_metric_without_direction_regresses_on_any_change_beyond_limit():
    base, new = make_report(), make_report()
    new["runs"][1]["measurements"][2]["value"] = 1010.0
    (reg,) = compare_reports(base, new, _opts("params=0.5%")).regressions
    assert reg.key == "params/total" and reg.verdict == "changed"
    assert not compare_reports(base, new, _opts("params=2%")).failed


def test_timing_change_inside_noise_band_is_not_a_regression():
    base = {"spread": {"p10": 0.09, "p90": 0.11}, "value": 0.10, "unit": "s", "better": "lower"}
    new = {"spread": {"p10": 0.095, "p90": 0.125}, "value": 0.11, "unit": "s", "better": "lower"}
    assert spread_width(base) == pytest.approx(0.01)
    noise = combined_noise(spread_width(base), spread_width(new), 1.0)
    assert noise == pytest.approx(math.hypot(0.01, 0.015))
    d = compare_measurement("r", "latency/e2e", base, new, _opts("latency=1%"))
    assert d.verdict == "within noise" and not d.regressed  # +10% but inside +-0.018
    far = {**new, "value": 0.13}
    assert compare_measurement("r", "latency/e2e", base, far, _opts("latency=1%")).regressed
    # stderr of a deterministic evaluation is not noise unless asked
    ppl_b, ppl_n = _m("perplexity", "x", 20.0, spread={"stderr": 2.0}), _m("perplexity", "x", 21.0,
                                                                               spread={"stderr": 2.0})
    assert compare_measurement("r", "perplexity/x", ppl_b, ppl_n, _opts("perplexity=1%")).regressed
    relaxed = _opts("perplexity=1%", stderr_is_noise=True)
    assert compare_measurement("r", "perplexity/x", ppl_b, ppl_n, relaxed).verdict == "within noise"


def test_ratios_to_dense_baseline_forgive_a_slower_machine():
    base = make_report(tpot_dense=0.10, tpot_pruned=0.09)
    slower = make_report(tpot_dense=0.20, tpot_pruned=0.18)  # everything 2x slower
    assert compare_reports(base, slower, _opts("latency=10%")).failed
    ratio = compare_reports(base, slower, _opts("latency=10%", baseline_relative=("latency",)))
    assert not ratio.failed
    d = next(d for d in ratio.deltas if d.key == "latency/tpot" and d.run != "baseline")
    assert d.mode == "ratio" and d.base == pytest.approx(0.9) and d.new == pytest.approx(0.9)
    # the pruned run got slower relative to its own dense run: 0.9x -> 1.2x
    regressed = make_report(tpot_dense=0.20, tpot_pruned=0.24)
    (reg,) = compare_reports(base, regressed, _opts("latency=10%", baseline_relative=("latency",))).regressions
    assert reg.key == "latency/tpot" and reg.new == pytest.approx(1.2) and reg.noise is not None


def test_pairing_by_parameters_then_name_and_unmatched_runs():
    base = make_report()
    renamed = make_report()
    renamed["runs"][1]["name"] = "magnitude-renamed"  # same pipeline and parameters
    result = compare_reports(base, renamed, _opts())
    assert [(p.base_name, p.new_name, p.matched_by) for p in result.pairs][1] == (
        "magnitude[sparsity=0.3]", "magnitude-renamed", "parameters")
    changed = make_report()
    changed["runs"][1]["planned_steps"][0]["params"]["targets"] = "mlp"  # a fixed parameter changed
    pair = compare_reports(base, changed, _opts()).pairs[1]
    assert pair.matched_by == "name" and "step 1 magnitude.targets: None -> 'mlp'" in pair.parameter_changes
    strict = compare_reports(base, changed, _opts(strict_match=True))
    assert strict.unmatched_base == ["magnitude[sparsity=0.3]"] and strict.unmatched_new == [
        "magnitude[sparsity=0.3]"]
    swept = make_report(sparsity=0.5)
    result = compare_reports(base, swept, _opts())
    assert result.unmatched_base == ["magnitude[sparsity=0.3]"] and result.unmatched_new == ["magnitude[sparsity=0.5]"]
    assert not result.failed and compare_reports(base, swept, _opts(fail_on_missing=True)).failed


def test_failed_run_and_missing_gated_metric_regress():
    base, new = make_report(), make_report()
    new["runs"][1]["status"] = "failed"
    new["runs"][1]["error"] = {"message": "step 1 (magnitude) failed: boom"}
    new["runs"][1]["measurements"] = new["runs"][1]["measurements"][2:]
    result = compare_reports(base, new, _opts("perplexity=1%"))
    assert result.run_regressions == ["magnitude[sparsity=0.3]: failed in NEW (step 1 (magnitude) failed: boom)"]
    assert [d.key for d in result.regressions] == ["perplexity/embedded"]  # gated and now missing
    assert next(d for d in result.deltas if d.key == "race/high/acc" and d.run != "baseline").verdict == "missing"


def test_thresholds_file(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("max_regression:\n  perplexity: 2%\n  race/acc: 0.01\nbaseline_relative: [latency]\n"
                    "noise_sigmas: 2\nfail_on_missing: true\n")
    opts = CompareOptions(**load_thresholds_file(path))
    assert [(t.key, t.kind, t.limit) for t in opts.thresholds] == [
        ("perplexity", "relative", 0.02), ("race/acc", "absolute", 0.01)]
    assert opts.baseline_relative == ("latency",) and opts.noise_sigmas == 2 and opts.fail_on_missing
    bare = tmp_path / "bare.yaml"
    bare.write_text("perplexity: 1%\n")
    assert load_thresholds_file(bare)["thresholds"][0].limit == 0.01
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_regression: {perplexity: lots}\n")
    with pytest.raises(ThresholdError, match=r"bad.yaml: max_regression: threshold for 'perplexity'"):
        load_thresholds_file(bad)
    bad.write_text("max_regresion: {perplexity: 1%}\nnoise_sigmas: 1\n")
    with pytest.raises(ThresholdError, match="unknown field 'max_regresion'"):
        load_thresholds_file(bad)
    with pytest.raises(ThresholdError, match="KEY=LIMIT"):
        parse_option("perplexity")


def test_markdown_names_regressions():
    result = compare_reports(make_report(), make_report(pruned_ppl=40.0), _opts("perplexity=2%"))
    md = to_markdown(result)
    assert "**1 regression(s):** magnitude[sparsity=0.3]: perplexity/embedded" in md
    assert "## Regressions" in md and "**REGRESSION** (worse)" in md and "+33.33%" in md


def test_cli_exit_codes_markdown_and_json(tmp_path):
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    base.write_text(json.dumps(make_report()))
    new.write_text(json.dumps(make_report(pruned_ppl=31.0)))
    out = tmp_path / "cmp.json"
    worse = paqbench("compare", str(base), str(new), "--max-regression", "perplexity=2%", "--json", str(out))
    assert worse.returncode == 1, worse.stderr
    assert "REGRESSION (1): magnitude[sparsity=0.3]: perplexity/embedded" in worse.stderr
    assert "| perplexity/embedded" in worse.stdout
    data = json.loads(out.read_text())
    assert data["failed"] and data["regressions"] == ["magnitude[sparsity=0.3]: perplexity/embedded"]
    fine = paqbench("compare", str(base), str(new), "-t", "perplexity=5%")
    assert fine.returncode == 0, fine.stderr
    bad = paqbench("compare", str(base), str(new), "-t", "perplexity")
    assert bad.returncode == 2 and "KEY=LIMIT" in bad.stderr and "Traceback" not in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = paqbench("compare", str(base), str(empty))
    assert missing.returncode == 2 and "neither results.jsonl nor report.json" in missing.stderr


# -- metric parameters: only equal settings are comparable --------------------------------

PPL = {"dataset": "embedded", "split": "test", "seqlen": 256, "batch_size": 1, "max_windows": 8}
LATENCY = {"prompt_tokens": 16, "new_tokens": 4, "warmup": 1, "min_iterations": 3, "min_seconds": 0.0}


def _with_settings(report, limit=None, **metric_params):
    """Give every run of ``report`` metric records with these parameters (as runs record them)."""
    for run in report["runs"]:
        run["metrics"] = [{"name": name, "params": dict(params)} for name, params in metric_params.items()]
        run["limit"] = limit
    return report


def _settings_report(pruned_ppl=30.0, limit=None, **changes):
    """``make_report`` whose runs recorded perplexity, storage and latency settings; ``changes``
    override single metric parameters (``perplexity={"seqlen": 2048}``)."""
    report = make_report(pruned_ppl=pruned_ppl)
    for run in report["runs"]:
        run["measurements"].append(_m("storage", "checkpoint", 1000.0, "bytes"))
    params = {"perplexity": PPL, "storage": {"dtype": "model"}, "latency": LATENCY, "params": {"seqlen": 256}}
    merged = {name: {**p, **changes.get(name, {})} for name, p in params.items()}
    return _with_settings(report, limit, **merged)


def _compare(base, new, *limits, **kwargs):
    return compare_reports(base, new, _opts(*limits, **kwargs), param_defaults=lambda metric: {})


def _delta(result, key, run="magnitude[sparsity=0.3]"):
    return next(d for d in result.deltas if d.key == key and d.run == run)


def test_a_different_seqlen_is_not_comparable_and_never_a_regression():
    base = _settings_report()
    new = _settings_report(pruned_ppl=37.14, perplexity={"seqlen": 2048, "max_windows": None})  # +23.8%
    result = _compare(base, new, "perplexity=1%")
    assert not result.failed and not result.regressions
    d = _delta(result, "perplexity/embedded")
    assert d.verdict == "not comparable" and not d.regressed
    assert d.reason == "seqlen 256 vs 2048, max_windows 8 vs unset"
    assert (d.base, d.new, d.abs_change, d.rel_change) == (30.0, 37.14, None, None)
    assert len(result.not_comparable) == 2  # the perplexity of both runs; nothing else
    assert _delta(result, "race/high/acc").verdict == "same"
    assert result.pairs[1].metric_changes == ("perplexity: seqlen 256 vs 2048, max_windows 8 vs unset",)
    md = to_markdown(result)
    assert "No regression beyond the thresholds." in md
    assert "2 measurement(s) not comparable" in md
    assert "matched by pipeline and step parameters; metric parameters differ (not comparable): perplexity:" in md


def test_a_different_storage_dtype_is_not_comparable_not_better():
    result = _compare(_settings_report(), _settings_report(storage={"dtype": "float16"}), "storage=1%")
    d = _delta(result, "storage/checkpoint")
    assert d.verdict == "not comparable" and d.reason == "dtype model vs float16"
    assert _delta(result, "perplexity/embedded").verdict == "same"


def test_equal_settings_still_regress():
    result = _compare(_settings_report(), _settings_report(pruned_ppl=33.0), "perplexity=1%")
    (reg,) = result.regressions
    assert reg.key == "perplexity/embedded" and reg.verdict == "worse" and result.failed
    assert not result.not_comparable and result.pairs[1].metric_changes == ()


def test_sampling_parameters_and_unaffected_measurements_stay_comparable():
    # how many calls are timed does not change what a latency is; params' seqlen only changes the MACs
    new = _settings_report(latency={"min_seconds": 5.0, "min_iterations": 10}, params={"seqlen": 2048})
    for run in new["runs"]:
        run["measurements"].append(_m("params", "macs_per_token", 7.0, "MACs"))
    result = _compare(_settings_report(), new, "latency=1%")
    assert _delta(result, "latency/tpot").verdict == "same"
    assert _delta(result, "params/total").verdict == "same"
    macs = _delta(result, "params/macs_per_token")
    assert macs.verdict == "not comparable" and macs.reason == "seqlen 256 vs 2048"
    assert result.pairs[1].metric_changes == ("params: seqlen 256 vs 2048",)  # min_seconds is not listed


def test_the_runs_limit_counts_for_perplexity_not_for_latency():
    result = _compare(_settings_report(), _settings_report(limit=2), "perplexity=1%")
    assert _delta(result, "perplexity/embedded").reason == "--limit unset vs 2"
    assert _delta(result, "latency/tpot").verdict == "same"


def test_a_changed_dataset_is_not_a_missing_measurement():
    new = _settings_report(perplexity={"dataset": "wikitext2"})
    for run in new["runs"]:
        run["measurements"][0]["name"] = "wikitext2"
    result = _compare(_settings_report(), new, "perplexity=1%")
    assert not result.failed
    verdicts = {d.key: d.verdict for d in result.deltas if d.run == "baseline"}
    assert verdicts["perplexity/embedded"] == verdicts["perplexity/wikitext2"] == "not comparable"


def test_a_metric_listed_twice_compares_each_listing():
    base = _settings_report()
    for run in base["runs"]:
        run["metrics"].append({"name": "perplexity", "params": {**PPL, "dataset": "c4"}})
    new = copy.deepcopy(base)
    assert not _compare(base, new).not_comparable
    for run in new["runs"]:
        run["metrics"][-1]["params"]["seqlen"] = 512
    assert _delta(_compare(base, new), "perplexity/embedded").reason == "#2 seqlen 256 vs 512"
    new["runs"][1]["metrics"].pop()
    assert _delta(_compare(base, new), "perplexity/embedded").reason == "measured 2 vs 1 times"


def test_a_parameter_recorded_on_one_side_compares_as_its_current_default():
    base, new = _settings_report(), _settings_report(latency={"reference": False})  # added after BASE ran
    assert _delta(compare_reports(base, new, _opts()), "latency/tpot").verdict == "same"  # registered default
    assert _delta(_compare(base, new), "latency/tpot").reason == "reference unset vs False"  # no defaults known
    reference = _settings_report(latency={"reference": True})
    assert _delta(compare_reports(base, reference, _opts()), "latency/tpot").verdict == "not comparable"


def test_reports_without_recorded_settings_compare_as_before():
    result = _compare(make_report(), _settings_report(pruned_ppl=33.0), "perplexity=1%")
    assert [d.key for d in result.regressions] == ["perplexity/embedded"]


def test_different_models_are_named_in_the_summary():
    base, new = _settings_report(), _settings_report()
    base["suite"] = {"model": {"source": "smollm2-135m", "dtype": "float32"}, "seed": 0}
    new["suite"] = {"model": {"source": "smollm2-135m", "dtype": "float16"}, "seed": 0}
    result = _compare(base, new)
    assert result.setting_changes == ("model.dtype float32 vs float16",)
    assert "The reports' settings differ (not used to pair runs): model.dtype float32 vs float16" in to_markdown(result)
    assert result.to_dict()["setting_changes"] == ["model.dtype float32 vs float16"]


def test_cli_exits_0_when_the_only_worse_numbers_are_not_comparable(tmp_path):
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    base.write_text(json.dumps(_settings_report()))
    new.write_text(json.dumps(_settings_report(pruned_ppl=37.14, perplexity={"seqlen": 2048})))
    out = tmp_path / "cmp.json"
    result = paqbench("compare", str(base), str(new), "-t", "perplexity=1%", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "2 measurement(s) not comparable" in result.stdout and "REGRESSION" not in result.stderr
    data = json.loads(out.read_text())
    assert data["not_comparable"] == 2 and not data["failed"]
    same = tmp_path / "same.json"
    same.write_text(json.dumps(_settings_report(pruned_ppl=37.14)))
    assert paqbench("compare", str(base), str(same), "-t", "perplexity=1%").returncode == 1


# -- recovery: NEW's quality as a percentage of its own dense baseline ----------------------


def _run_delta(result, run, key):
    return next(d for d in result.deltas if d.run == run and d.key == key)


def test_quality_metrics_show_each_sides_recovery():
    result = compare_reports(make_report(), make_report(pruned_ppl=25.0))
    ppl = _run_delta(result, "magnitude[sparsity=0.3]", "perplexity/embedded")
    assert ppl.base_recovery == pytest.approx(20 / 30 * 100) and ppl.new_recovery == pytest.approx(80.0)
    acc = _run_delta(result, "magnitude[sparsity=0.3]", "race/high/acc")  # higher is better: value / dense
    assert acc.new_recovery == pytest.approx(0.5 / 0.6 * 100)
    assert _run_delta(result, "baseline", "perplexity/embedded").new_recovery == pytest.approx(100.0)
    assert _run_delta(result, "magnitude[sparsity=0.3]", "latency/tpot").new_recovery is None  # not a quality metric
    text = to_markdown(result)
    assert "| recovery" in text and "66.7% -> 80.0%" in text


def test_min_recovery_gates_new_alone():
    """A floor fails NEW's run below it even when NEW improved on BASE, and passes at it."""
    options = CompareOptions(min_recovery=(parse_floor_option("perplexity=95"),))
    improved = compare_reports(make_report(pruned_ppl=30.0), make_report(pruned_ppl=21.5), options)
    (reg,) = improved.regressions
    assert reg.key == "perplexity/embedded" and reg.verdict == "better"
    assert reg.new_recovery == pytest.approx(20 / 21.5 * 100) and "< 95%" in reg.reason
    assert not compare_reports(make_report(), make_report(pruned_ppl=21.0), options).failed  # 95.24%
    text = to_markdown(improved)
    assert "Recovery floors" in text and "(floor 95%)" in text


def test_min_recovery_from_file_and_command_line(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text("min_recovery: {perplexity: 95%, race: 80}\n")
    floors = {f.key: f.percent for f in load_thresholds_file(path)["min_recovery"]}
    assert floors == {"perplexity": 95.0, "race": 80.0}
    path.write_text("min_recovery: {perplexity: most}\n")
    with pytest.raises(ThresholdError, match="min_recovery for 'perplexity': expected a percentage"):
        load_thresholds_file(path)
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    base.write_text(json.dumps(make_report()))
    new.write_text(json.dumps(make_report(pruned_ppl=22.0)))  # 90.9% of the dense 20
    assert paqbench("compare", str(base), str(new), "--min-recovery", "perplexity=90").returncode == 0
    failed = paqbench("compare", str(base), str(new), "--min-recovery", "perplexity=95")
    assert failed.returncode == 1 and "perplexity/embedded" in failed.stderr
    bad = paqbench("compare", str(base), str(new), "--min-recovery", "perplexity")
    assert bad.returncode == 2 and "KEY=PERCENT" in bad.stderr and "Traceback" not in bad.stderr
