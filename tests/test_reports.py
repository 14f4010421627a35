"""The report's reading of the numbers: the noise rule, recovery, the headline columns,
report.md's layout, report.csv, and lm-eval-shaped results."""

from __future__ import annotations

import csv
import io
import json

import pytest

from paqbench.measure.stats import recovery
from paqbench.report.lm_eval_results import DIRECTORY, results_for, write_lm_eval_results
from paqbench.report.noise import Band, compare, noise_band
from paqbench.report.tables import headline, headline_columns
from paqbench_plugins.reporters.json_report import JSONReporter
from paqbench_plugins.reporters.markdown import MarkdownReporter, csv_text
from tests.helpers import paqbench
from tests.report_data import TPOT, m, report, results_dir, run, runs, timing

# -- the noise rule ----------------------------------------------------------------------------


def test_two_identical_models_read_as_within_noise():
    """The same model timed twice (same distribution, another order) is never a change."""
    base = timing("tpot", TPOT, "s/token", "lower")
    again = timing("tpot", list(reversed(TPOT)), "s/token", "lower")
    assert compare(again, base).verdict == "same"
    table = headline(runs())
    speed = next(i for i, c in enumerate(table.columns) if c.role == "speed")
    same = table.rows[1]
    assert same[0].text == "same-as-baseline"
    assert same[speed].text.endswith("≈") and "%" not in same[speed].text


def test_a_change_outside_the_band_is_shown_and_inside_it_is_not():
    base = timing("tpot", TPOT, "s/token", "lower")
    slower = timing("tpot", [t * 1.6 for t in TPOT], "s/token", "lower")
    barely = timing("tpot", [t * 1.05 for t in TPOT], "s/token", "lower")
    change = compare(slower, base)
    assert change.verdict == "change" and change.relative == pytest.approx(0.6, rel=0.05)
    assert compare(barely, base).verdict == "same"


def test_band_is_p10_to_p90_of_the_raw_samples():
    band = noise_band(timing("tpot", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0], "s", "lower"))
    assert band == Band(2.0, 10.0, 11)


def test_paired_speedup_is_a_change_only_when_one_lies_outside_its_pairs():
    def speedup(samples):
        return timing("decode_speedup", samples, "×", "higher", reference="alternating")

    assert compare(speedup([0.95, 1.1, 1.02, 0.9, 1.05]), None).verdict == "same"
    faster = compare(speedup([1.4, 1.5, 1.45, 1.38, 1.52]), None)
    assert faster.verdict == "change" and faster.relative == pytest.approx(0.45)


def test_deterministic_measurements_change_on_any_difference():
    base = m("perplexity", "wikitext2", 20.0, "ppl", spread={"stderr": 3.0})
    assert compare(m("perplexity", "wikitext2", 20.01, "ppl", spread={"stderr": 3.0}), base).verdict == "change"
    assert compare(dict(base), base).verdict == "same"
    points = compare(m("race", "high/acc", 0.35, "fraction", "higher"), m("race", "high/acc", 0.40, "fraction"))
    assert points.verdict == "change" and points.points == pytest.approx(-5.0)


def test_a_single_timing_has_no_band_and_claims_no_change():
    one = m("latency", "cold_e2e", 0.5, "s")
    assert noise_band(one) is None
    assert compare(m("latency", "cold_e2e", 0.9, "s"), one).verdict == "unknown"


def test_recovery_is_direction_aware():
    assert recovery(25.0, 20.0, "lower") == pytest.approx(0.8)  # perplexity: baseline / value
    assert recovery(0.38, 0.40, "higher") == pytest.approx(0.95)  # accuracy: value / baseline
    assert recovery(1.0, 2.0, None) is None and recovery(None, 2.0, "lower") is None


# -- the headline ------------------------------------------------------------------------------


def test_headline_has_at_most_eight_columns_one_per_role():
    columns = headline_columns(runs())
    assert len(columns) <= 8
    assert [(c.role, c.key) for c in columns] == [
        ("run", None), ("quality", "perplexity/embedded"), ("recovery", "perplexity/embedded"),
        ("quality", "race/high/acc"), ("recovery", "race/high/acc"), ("size", "storage/checkpoint"),
        ("speed", "latency/decode_speedup"), ("memory", "memory/weights")]


def test_engine_backend_speedup_is_titled_torch_against_the_engine():
    """With backend llama.cpp the pair is paqbench's torch path vs the engine on the same
    model, not baseline vs run: the column says so."""
    found = runs()
    for measurement in (x for r in found for x in r["measurements"] if x["name"] == "decode_speedup"):
        measurement["details"] = {"backend": "llama.cpp"}
    speed = next(c for c in headline_columns(found) if c.key == "latency/decode_speedup")
    assert speed.title == "decode speedup (llama.cpp vs torch, paired)"
    assert speed.meaning.startswith("paqbench's torch time / llama.cpp's time")
    plain = next(c for c in headline_columns(runs()) if c.key == "latency/decode_speedup")
    assert plain.title == "decode speedup (paired)"


def test_headline_cells_recovery_speedup_and_masks_footnote():
    table = headline(runs())
    rows = {row[0].text: [c.text for c in row] for row in table.rows}
    assert rows["baseline"][1:3] == ["20.00", "100.0%"]
    assert rows["magnitude[sparsity=0.5]"][1:5] == ["600.0 (+2900.0%)", "3.3%", "30.00% (-10.00 pp)", "75.0%"]
    rtn = rows["rtn4 <b>&"]
    assert rtn[5] == "77.00 MiB (-71.4%)" and rtn[6] == "0.620× (-38.0%)"
    assert rows["magnitude[sparsity=0.5]"][6] == "1.000× ≈"
    assert rows["magnitude[sparsity=0.5]"][7].endswith("¹") and not rows["rtn4 <b>&"][7].endswith("¹")
    assert rows["broken (failed)"][1:] == ["—", "", "—", "", "—", "—", "—"]
    (note,) = table.notes
    assert note.startswith("¹ Includes the pruning masks") and "magnitude[sparsity=0.5] 32.00 KiB" in note


def test_a_requested_headline_metric_without_values_keeps_its_column_with_the_reason():
    found = runs()[:2]
    for r in found:
        r["measurements"] = [x for x in r["measurements"] if x["metric"] != "latency"]
        r["measurements"].append(m("latency", "*", None, "", None, unavailable="no tokenizer chat template"))
    table = headline(found)
    speed = next(i for i, c in enumerate(table.columns) if c.role == "speed")
    assert table.columns[speed].key == "latency/decode_speedup"
    assert [row[speed].text for row in table.rows] == ["unavailable: no tokenizer chat template"] * 2


def test_sparsity_joins_the_headline_when_there_is_room():
    found = runs()
    for r in found:
        r["measurements"] = [x for x in r["measurements"] if x["metric"] != "race"]
    roles = [c.role for c in headline_columns(found)]
    assert roles == ["run", "quality", "recovery", "size", "sparsity", "speed", "memory"]


# -- report.md and report.csv -----------------------------------------------------------------


@pytest.fixture
def written(tmp_path):
    the_report = report(description="Written for Llama-3.2-3B on a GPU.")
    MarkdownReporter().write(the_report, tmp_path)
    return tmp_path, (tmp_path / "report.md").read_text(encoding="utf-8")


def test_markdown_header_says_what_ran_not_what_the_suite_file_says(written):
    _, md = written
    assert "Ran smollm2-135m (embedded), bfloat16 on cpu · 5 runs" in md
    assert "Suite description (from the suite file; what ran is the line above): Written for Llama" in md
    assert "meta-llama" not in md


def test_markdown_layout_summary_then_samples_details_runs(written):
    _, md = written
    order = [md.index(h) for h in ("## Summary", "## Generation samples", "## Details", "## Runs", "## Environment")]
    assert order == sorted(order)
    summary = md[md.index("## Summary"):md.index("## Generation samples")]
    header = next(line for line in summary.splitlines() if line.startswith("| run"))
    assert header.count("|") - 1 == 8
    assert "| same-as-baseline" in summary and "≈" in summary
    assert "<!-- paqbench:plots" not in md and ".png" not in md  # the plots reporter did not run
    assert "<br>" not in md[md.index("## Generation samples"):md.index("## Details")]


def test_details_table_has_every_measurement_and_explains_both_bits(written):
    _, md = written
    details = md[md.index("## Details"):md.index("## Runs")]
    for label in ("params bits\\_per\\_weight", "storage bits\\_per\\_weight", "latency tpot", "race high/acc"):
        assert f"| {label} " in details
    assert "`params/bits_per_weight`: bits the in-memory weights need" in details
    assert "`storage/bits_per_weight`: bits per parameter of the saved checkpoint" in details


def test_per_layer_table_is_collapsed_per_run(written):
    _, md = written
    assert "<details><summary>Layers of magnitude[sparsity=0.5] (4 pruned)</summary>" in md
    section = md[md.index("Layers of magnitude[sparsity=0.5]"):]
    row = next(line for line in section.splitlines() if line.startswith("| model.layers.0.mlp.up\\_proj "))
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "model.layers.0.mlp.up\\_proj", "pruned", "64×128", "50.00%", "16"]


def test_csv_has_one_row_per_run_and_plain_numbers(written):
    directory, _ = written
    rows = list(csv.DictReader(io.StringIO((directory / "report.csv").read_text(encoding="utf-8"))))
    assert [r["run"] for r in rows] == [r["name"] for r in runs()]
    assert float(rows[0]["perplexity/embedded [ppl]"]) == 20.0
    assert rows[4]["status"] == "failed" and rows[4]["perplexity/embedded [ppl]"] == ""
    assert csv_text([]) == "run,pipeline,status\n"


# -- lm-eval-shaped results --------------------------------------------------------------------


def test_lm_eval_results_use_lm_evals_keys():
    from lm_eval.result_schema import EvalResults

    results = results_for(runs()[3], report().environment)
    assert set(results) - {"paqbench"} <= set(EvalResults.__annotations__)
    assert results["results"]["race"] == {"name": "race", "alias": "race", "sample_len": 20, "acc,none": 0.38,
                                          "acc_stderr,none": 0.05}
    assert results["n-samples"]["race"] == {"original": 1045, "effective": 20}
    assert results["versions"]["race"] == 3.0 and results["higher_is_better"]["race"] == {"acc": True}
    assert results["config"]["model"] == "smollm2-135m" and results["config"]["device"] == "cpu"
    assert results["model_name_sanitized"] == "smollm2-135m __rtn4 __b__&__"  # as lm-eval sanitizes
    assert results["lm_eval_version"] == "0.4.13" and results["paqbench"]["run"] == "rtn4 <b>&"


def test_lm_eval_metric_measurements_keep_task_metric_and_filter():
    details = {"task": "arc_easy", "metric": "acc_norm", "filter": "none", "kind": "task", "n_shot": 0,
               "version": 1.0, "limit": 50, "documents": 50, "total_documents": 2376}
    found = [m("lm_eval", "arc_easy/acc_norm", 0.61, "fraction", "higher", spread={"stderr": 0.02},
               details=details)]
    results = results_for(run("baseline", "baseline", found))
    assert results["results"]["arc_easy"]["acc_norm,none"] == 0.61
    assert results["results"]["arc_easy"]["acc_norm_stderr,none"] == 0.02
    assert results["config"]["limit"] == 50 and results["n-samples"]["arc_easy"]["effective"] == 50


def test_lm_eval_files_sit_next_to_report_json_and_stale_ones_go(tmp_path):
    JSONReporter().write(report(), tmp_path)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / DIRECTORY).rglob("*.json"))
    assert len(files) == 4 and all("/results_2026-12-03T08-01-00.json" in f for f in files)
    data = json.loads((tmp_path / files[0]).read_text())
    assert "acc,none" in data["results"]["race"]
    from lm_eval.utils import get_file_datetime, get_results_filenames

    paths = [str(tmp_path / f) for f in files]
    assert get_results_filenames(paths) == paths  # lm-eval's own reader finds them
    assert get_file_datetime(paths[0]) == "2026-12-03T08-01-00.json"
    assert write_lm_eval_results(runs()[:1], {}, tmp_path)  # a later build with one run only
    assert len(list((tmp_path / DIRECTORY).rglob("*.json"))) == 1


def test_report_command_rebuilds_every_file_from_results(tmp_path):
    directory = results_dir(tmp_path / "out")
    result = paqbench("report", str(directory))
    assert result.returncode == 0, result.stderr
    for name in ("report.json", "report.md", "report.csv", "report.html"):
        assert (directory / name).is_file(), name
    assert list((directory / DIRECTORY).rglob("results_*.json"))
    assert "≈" in (directory / "report.md").read_text(encoding="utf-8")
