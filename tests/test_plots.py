"""Plots: the pure selection logic (Pareto front, sweeps, axis choice, skipped runs) on
hand-made runs, and the reporter's PNGs and their links in report.md."""

from __future__ import annotations

import json
import shutil

import pytest

from paqbench.report.model import Report
from paqbench.report.noise import Band
from paqbench.report.plots import BEGIN, END, FILES, MANIFEST, write_plots
from paqbench.report.selection import (
    Axis,
    Point,
    collect,
    detect_sweeps,
    dominates,
    front_of,
    log_scale,
    pareto_front,
    select,
    value_or_reason,
)
from paqbench_plugins.reporters.markdown import MarkdownReporter
from paqbench_plugins.reporters.plots import PlotsReporter

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def m(metric, name, value, unit="", better="lower", **extra):
    return {"metric": metric, "name": name, "value": value, "unit": unit, "better": better, **extra}


def run(name, pipeline, sweep=None, status="ok", measurements=(), metrics=(), error=None):
    return {"id": name, "name": name, "pipeline": pipeline, "sweep": sweep or {}, "status": status,
            "error": error, "load": None, "steps": [], "metrics": list(metrics), "measurements": list(measurements),
            "seed": 0, "limit": None, "started_at": "", "finished_at": "", "wall_s": 1.0}


def cpu_measurements(ppl, ckpt, nonzero, rss, tpot, acc=None):
    out = [
        m("params", "nonzero", nonzero, "params"),
        m("storage", "checkpoint", ckpt, "bytes"),
        m("perplexity", "wikitext2", ppl, "ppl", spread={"stderr": ppl * 0.05}),
        m("latency", "tpot", tpot, "s/token"),
        m("memory", "peak_allocated", None, "bytes", unavailable="no CUDA device"),
        m("memory", "peak_rss", rss, "bytes"),
    ]
    if acc is not None:
        out.append(m("race", "high/acc", acc, "fraction", "higher", spread={"stderr": 0.02}))
    return out


def _runs():
    mib = 1 << 20
    return [
        run("baseline", "baseline", measurements=cpu_measurements(20.0, 500 * mib, 130e6, 1.1e9, 0.10, 0.40)),
        run("magnitude[sparsity=0.1]", "magnitude", {"sparsity": 0.1},
            measurements=cpu_measurements(21.0, 500 * mib, 120e6, 1.2e9, 0.10, 0.39)),
        run("magnitude[sparsity=0.3]", "magnitude", {"sparsity": 0.3},
            measurements=cpu_measurements(40.0, 500 * mib, 100e6, 1.2e9, 0.09, 0.35)),
        run("magnitude[sparsity=0.5]", "magnitude", {"sparsity": 0.5},
            measurements=cpu_measurements(600.0, 500 * mib, 80e6, 1.2e9, 0.09, 0.30)),
        run("gptq[bits=4]", "gptq", {"bits": 4}, measurements=[
            *cpu_measurements(23.0, 150 * mib, 130e6, 0.9e9, 0.12)[:4],
            m("memory", "peak_rss", None, "bytes", unavailable="sampler failed")]),
        run("broken", "broken", status="failed", error={"message": "step 1 (magnitude) failed: boom"}),
    ]


@pytest.fixture
def runs():
    return _runs()


# -- Pareto front ------------------------------------------------------------------------


def test_pareto_front_mixed_directions_is_exact():
    # x: latency (lower is better), y: accuracy (higher is better)
    points = [(1, 0.5), (2, 0.7), (3, 0.6), (1.5, 0.5), (2, 0.7), (4, 0.9), (0.5, 0.2)]
    # (1.5, .5) is dominated by (1, .5); (3, .6) by (2, .7); equal points never dominate each other
    assert pareto_front(points, "lower", "higher") == [6, 0, 1, 4, 5]
    assert dominates((1, 0.5), (1.5, 0.5), "lower", "higher")
    assert not dominates((2, 0.7), (2, 0.7), "lower", "higher")


def test_pareto_front_other_directions_and_no_direction():
    points = [(1, 1), (2, 3), (3, 2), (2, 2)]
    assert pareto_front(points, "lower", "lower") == [0]
    assert pareto_front(points, "higher", "higher") == [1, 2]
    assert pareto_front(points, "higher", "lower") == [0, 2]  # (3, 2) beats (2, 2) and (2, 3); (1, 1) lowest y
    assert pareto_front(points, None, "lower") == []


def test_points_within_noise_on_an_axis_are_not_ranked_against_each_other():
    # x: latency (lower is better) with noise bands; y: perplexity (deterministic)
    points = [(1.00, 20.0), (0.98, 25.0), (0.70, 30.0)]
    bands = [(Band(0.95, 1.05, 5), None), (Band(0.93, 1.03, 5), None), (Band(0.68, 0.72, 5), None)]
    # without bands (0.98, 25) would be on the front; inside the first point's band it is
    # no faster, and worse in perplexity: dominated
    assert pareto_front(points, "lower", "lower") == [2, 1, 0]
    assert pareto_front(points, "lower", "lower", bands) == [2, 0]


def _noisy_point(name, x, y, spread, baseline=False):
    return Point(name, x, y, baseline, xband=Band(x - spread, x + spread, 5))


def test_no_front_when_every_run_is_within_noise_of_the_baseline():
    # the case: 50%-pruned dense models "faster" only by machine load
    points = [_noisy_point("baseline", 0.076, 20.9, 0.004, baseline=True),
              _noisy_point("magnitude", 0.090, 30.8, 0.016), _noisy_point("wanda", 0.070, 24.0, 0.008)]
    assert front_of(points, "lower", "lower") == []
    points.append(_noisy_point("rtn4", 0.030, 26.5, 0.002))  # clearly faster: a front again
    assert front_of(points, "lower", "lower") == [3, 0]


def test_tradeoff_figure_draws_no_front_through_noise(tmp_path):
    """Identical timing distributions: the latency panel says it has no front."""
    from tests.report_data import report

    found = [r for r in report().runs if r["name"] in ("baseline", "same-as-baseline", "magnitude[sparsity=0.5]")]
    figures = write_plots(_report(found), tmp_path)
    tradeoffs = next(f for f in figures if f.file == FILES["tradeoffs"])
    assert "within noise of the baseline has no front" in tradeoffs.caption
    selection = select(found)
    points, _ = collect(found, selection.roles["latency"], selection.quality)
    assert all(p.xband is not None for p in points) and front_of(points, "lower", "lower") == []


# -- axes, values, skipped runs ----------------------------------------------------------


def test_selection_falls_back_to_what_was_measured(runs):
    selection = select(runs)
    assert selection.quality == Axis("perplexity/wikitext2", "ppl", "lower")
    assert selection.secondary == Axis("race/high/acc", "fraction", "higher")
    assert selection.roles["memory"].key == "memory/peak_rss"  # no CUDA peaks on a CPU
    assert selection.roles["storage"].key == "storage/checkpoint"
    assert selection.roles["latency"].key == "latency/tpot"
    assert selection.size.key == "storage/checkpoint"  # differs between runs (gptq is smaller)
    assert selection.bubble.key == "latency/tpot"


def test_size_axis_skips_a_measurement_equal_in_every_run(runs):
    pruned_only = [r for r in runs if r["pipeline"] != "gptq"]
    assert select(pruned_only).size.key == "params/nonzero"


def test_accuracy_is_the_quality_without_perplexity(runs):
    for r in runs:
        r["measurements"] = [x for x in r["measurements"] if x["metric"] != "perplexity"]
    selection = select(runs)
    assert selection.quality.key == "race/high/acc" and selection.secondary is None


def test_overrides_pick_or_drop_roles(runs):
    selection = select(runs, {"quality": "race/high/acc", "memory": ""})
    assert selection.quality.key == "race/high/acc" and "memory" not in selection.roles
    with pytest.raises(ValueError, match="unknown plot roles"):
        select(runs, {"colour": "x"})
    with pytest.raises(ValueError, match="no run has a value"):
        select(runs, {"quality": "perplexity/ptb"})


def test_runs_without_a_value_are_skipped_with_the_reason_never_zero(runs):
    runs.append(run("metric-crashed", "x", status="failed",
                    measurements=[m("perplexity", "wikitext2", 30.0, "ppl"), m("storage", "checkpoint", 1.0, "bytes")],
                    metrics=[{"name": "perplexity", "error": "RuntimeError: nan"}, {"name": "storage"}]))
    runs.append(run("no-latency", "y", measurements=[m("perplexity", "wikitext2", 30.0, "ppl"),
                                                     m("latency", "*", None, unavailable="no GPU")]))
    points, skipped = collect(runs, Axis("memory/peak_rss", "bytes", "lower"),
                              Axis("perplexity/wikitext2", "ppl", "lower"))
    assert [p.run for p in points] == ["baseline", "magnitude[sparsity=0.1]", "magnitude[sparsity=0.3]",
                                       "magnitude[sparsity=0.5]"]
    assert all(p.x > 0 and p.y > 0 for p in points)
    assert points[0].baseline and not points[1].baseline
    assert points[0].yerr == pytest.approx(1.0)
    text = "\n".join(skipped)
    assert "gptq[bits=4]: memory/peak_rss unavailable (sampler failed)" in text
    assert "broken: run failed: step 1 (magnitude) failed: boom" in text
    assert "metric-crashed: run failed" in text and "no-latency: no memory/peak_rss measurement" in text
    # a metric that raised: its values are not used even if some were recorded before the error
    assert value_or_reason(runs[-2], "perplexity/wikitext2") == (None, "perplexity failed (RuntimeError: nan)")
    assert value_or_reason(runs[-2], "storage/checkpoint") == (1.0, None)
    _, reason = value_or_reason(runs[-1], "latency/tpot")
    assert reason == "latency unavailable (no GPU)"


def test_log_scale_only_when_values_span_more_than_ten_times():
    assert log_scale([20.0, 25.0, 600.0])
    assert not log_scale([20.0, 25.0, 190.0])
    assert not log_scale([0.0, 5.0, 100.0])  # a non-positive value cannot go on a log axis


# -- sweeps --------------------------------------------------------------------------------


def test_detect_sweeps_one_parameter_ordered_by_value(runs):
    runs.insert(1, runs.pop(3))  # report order need not be value order
    sweeps = detect_sweeps(runs)
    assert len(sweeps) == 1
    sweep = sweeps[0]
    assert (sweep.pipeline, sweep.parameter, sweep.fixed) == ("magnitude", "sparsity", ())
    assert sweep.values == (0.1, 0.3, 0.5) and sweep.numeric
    assert sweep.runs == ("magnitude[sparsity=0.1]", "magnitude[sparsity=0.3]", "magnitude[sparsity=0.5]")


def test_detect_sweeps_grid_gives_one_line_per_value_of_the_other_parameter():
    grid = [run(f"g[bits={b},sparsity={s}]", "g", {"bits": b, "sparsity": s}) for b in (4, 8) for s in (0.5, 0.25)]
    grid.append(run("single[bits=4]", "single", {"bits": 4}))  # one value: no line
    grid.append(run("cat[order=a]", "cat", {"order": "prune-first"}))
    grid.append(run("cat[order=b]", "cat", {"order": "quant-first"}))
    sweeps = {(s.pipeline, s.parameter, s.fixed): s for s in detect_sweeps(grid)}
    assert set(sweeps) == {("g", "bits", (("sparsity", 0.5),)), ("g", "bits", (("sparsity", 0.25),)),
                           ("g", "sparsity", (("bits", 4),)), ("g", "sparsity", (("bits", 8),)),
                           ("cat", "order", ())}
    assert sweeps[("g", "sparsity", (("bits", 8),))].values == (0.25, 0.5)
    assert sweeps[("g", "sparsity", (("bits", 8),))].label == "g (bits=8)"
    assert not sweeps[("cat", "order", ())].numeric


# -- the reporter --------------------------------------------------------------------------


def _report(runs):
    return Report(suite_name="unit", suite={"model": {"source": "tiny"}}, environment={}, runs=runs,
                  generated_at="2026-01-01T00:00:00+00:00")


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000, path


ORDERS = [("markdown", "plots"), ("plots", "markdown")]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The reporters run once per order (drawing is the slow part), shared by the tests."""
    out = {}
    for order in ORDERS:
        directory = tmp_path_factory.mktemp("-".join(order))
        report = _report(_runs())
        reporters = {"markdown": MarkdownReporter(), "plots": PlotsReporter()}
        written = []
        for name in order:
            written += reporters[name].write(report, directory)
        out[order] = (directory, written)
    return out


@pytest.mark.parametrize("order", ORDERS)
def test_reporter_writes_pngs_and_report_md_links_them(rendered, order):
    directory, written = rendered[order]
    for name in FILES.values():
        _check_png(directory / name)
        assert directory / name in written
    md = (directory / "report.md").read_text()
    assert md.count(BEGIN) == 1 and md.count(END) == 1
    for name in FILES.values():
        assert f"]({name})" in md
    assert md.index("## Plots") < md.index("## Runs")
    assert "broken: run failed" in md  # the skipped run is named under the figure
    manifest = json.loads((directory / MANIFEST).read_text())
    tradeoffs = next(f for f in manifest["figures"] if f["file"] == FILES["tradeoffs"])
    assert any(s.startswith("gptq[bits=4]: memory/peak_rss unavailable") for s in tradeoffs["skipped"])


def test_markdown_does_not_link_plots_of_another_report(rendered, tmp_path):
    directory, _ = rendered[ORDERS[0]]
    shutil.copy(directory / MANIFEST, tmp_path / MANIFEST)
    newer = _report(_runs())
    newer.generated_at = "2026-01-02T00:00:00+00:00"
    MarkdownReporter().write(newer, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Plots" not in md and ".png)" not in md
    MarkdownReporter().write(_report(_runs()), tmp_path)  # the report the plots were drawn for
    assert "](plot_bubble.png)" in (tmp_path / "report.md").read_text()


def test_figures_that_cannot_be_drawn_are_removed_not_left_stale(tmp_path):
    small = [run(f"m[s={s}]", "m", {"s": s}, measurements=[m("perplexity", "embedded", p, "ppl"),
                                                           m("params", "nonzero", n, "params")])
             for s, p, n in ((0.1, 20.0, 9e6), (0.5, 30.0, 5e6))]
    write_plots(_report(small), tmp_path)
    assert (tmp_path / FILES["sweeps"]).is_file() and (tmp_path / FILES["tradeoffs"]).is_file()
    figures = write_plots(_report(small[:1]), tmp_path)  # one run: no sweep any more
    assert [f.file for f in figures] == [FILES["tradeoffs"]]
    assert not (tmp_path / FILES["sweeps"]).exists()
    nothing = write_plots(_report([run("baseline", "baseline", measurements=[m("params", "nonzero", 1.0)])]),
                          tmp_path)
    assert nothing == [] and not list(tmp_path.glob("*.png"))
    assert "no perplexity or accuracy" in (tmp_path / MANIFEST).read_text()
