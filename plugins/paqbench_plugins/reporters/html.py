"""report.html: one self-contained page (inline CSS and script, plots as data URIs) with
sortable tables, the plots, generation samples side by side, per-run details and the
environment. The page is built in :mod:`paqbench.report.html`."""

from __future__ import annotations

from pathlib import Path

from paqbench import Reporter, hookimpl
from paqbench.fsio import write_text_atomic
from paqbench.report.html import FILE, render_html


class HTMLReporter(Reporter):
    name = "html"
    description = ("report.html: one self-contained, offline page: sortable headline and full tables, plots "
                   "(when the plots reporter ran), generation samples side by side, per-run details, environment.")

    def write(self, report, directory: Path) -> list[Path]:
        return [write_text_atomic(Path(directory) / FILE, render_html(report, directory))]


@hookimpl
def paqbench_register_reporters(register):
    register(HTMLReporter)
