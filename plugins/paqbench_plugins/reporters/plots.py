"""PNG figures next to report.md: quality against size, memory and latency with the Pareto
front, a bubble chart (size, perplexity, latency), and sweeps as lines. The drawing is in
:mod:`paqbench.report.plots`, the choice of what to draw in :mod:`paqbench.report.selection`."""

from __future__ import annotations

from pathlib import Path

from paqbench import Reporter, hookimpl
from paqbench.fsio import write_text_atomic
from paqbench.report.html import FILE, belongs_to, render_html
from paqbench.report.plots import MANIFEST, write_plots


class PlotsReporter(Reporter):
    name = "plots"
    description = (
        "PNG figures (matplotlib): quality (perplexity, else accuracy) against storage, nonzero parameters, "
        "memory and latency with the Pareto front (never through points within noise); a bubble chart (size, "
        "perplexity, latency as area); sweeps as lines over the swept parameter. Runs without a value are named "
        "under the figure, never drawn as zero. report.md links the figures; report.html embeds them."
    )

    def write(self, report, directory: Path) -> list[Path]:
        directory = Path(directory)
        figures = write_plots(report, directory)
        written = [directory / f.file for f in figures] + [directory / MANIFEST]
        page = directory / FILE
        if belongs_to(page, report):  # the html reporter ran first: embed the figures now
            written.append(write_text_atomic(page, render_html(report, directory)))
        return written


@hookimpl
def paqbench_register_reporters(register):
    register(PlotsReporter)
