"""report.html: one self-contained page (no network, everything inline), user text escaped,
tables sortable; rendered in a real headless Chromium when the machine has one."""

from __future__ import annotations

import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from paqbench.report.html import FILE
from paqbench.report.tables import measurement_keys
from paqbench_plugins.reporters.html import HTMLReporter
from paqbench_plugins.reporters.plots import PlotsReporter
from tests.report_data import report

CHROMIUM = Path("/usr/bin/chromium")


class _Collect(HTMLParser):
    """Every start tag with its attributes, and the text of each <th> of each table."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.headers: dict[str, list[str]] = {}
        self._table: str | None = None
        self._th: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self._table = dict(attrs).get("id") or f"table{len(self.headers)}"
            self.headers[self._table] = []
        elif tag == "th":
            self._th = []

    def handle_endtag(self, tag):
        if tag == "th" and self._th is not None and self._table is not None:
            self.headers[self._table].append("".join(self._th).strip())
            self._th = None

    def handle_data(self, data):
        if self._th is not None:
            self._th.append(data)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """report.html written before the plots (the plots reporter then embeds its figures)."""
    directory = tmp_path_factory.mktemp("html")
    the_report = report(description="Written for <Llama-3.2-3B> on a GPU & more.")
    HTMLReporter().write(the_report, directory)
    before = (directory / FILE).read_text(encoding="utf-8")
    PlotsReporter().write(the_report, directory)
    return directory, before, (directory / FILE).read_text(encoding="utf-8")


def _parsed(text: str) -> _Collect:
    parser = _Collect()
    parser.feed(text)
    return parser


def test_page_is_self_contained(page):
    _, _, text = page
    parsed = _parsed(text)
    assert not [t for t, _ in parsed.tags if t in ("link", "iframe", "object", "embed")]
    for tag, attrs in parsed.tags:
        for name in ("src", "href"):
            value = attrs.get(name)
            assert value is None or value.startswith(("data:image/png;base64,", "#")), (tag, value)
    assert "url(" not in text and "@import" not in text
    assert "default-src 'none'" in text  # the page may not fetch anything, even by mistake


def test_plots_are_embedded_once_the_plots_reporter_has_run(page):
    _, before, after = page
    assert "data:image/png" not in before
    images = [a for t, a in _parsed(after).tags if t == "img"]
    assert len(images) >= 2 and all(a["src"].startswith("data:image/png;base64,iVBOR") for a in images)


def test_user_text_is_escaped(page):
    _, _, text = page
    parsed = _parsed(text)
    assert not [t for t, _ in parsed.tags if t in ("b", "i", "llama-3.2-3b", "suite")]
    assert "rtn4 &lt;b&gt;&amp;" in text and "Say &lt;b&gt;hi&lt;/b&gt;" in text
    assert "boom &lt;i&gt;" in text and "&lt;Llama-3.2-3B&gt; on a GPU &amp; more." in text
    assert "<title>paqbench report: unit &lt;suite&gt;</title>" in text


def test_tables_are_sortable_and_every_measurement_has_a_column(page):
    _, _, text = page
    parsed = _parsed(text)
    sortable = [a.get("id") for t, a in parsed.tags if t == "table" and a.get("class") == "sortable"]
    assert sortable == ["headline", "full"]
    full = parsed.headers["full"]
    assert len(full) == 1 + len(measurement_keys(report().runs))
    assert len(parsed.headers["headline"]) == 8
    assert 'data-sort="20.0"' in text


def test_samples_side_by_side_runs_and_environment(page):
    _, _, text = page
    assert text.count('<div class="samples">') == 2 and text.count('<div class="sample">') == 10
    assert 'id="run-id-broken"' in text and "Traceback: boom" in text
    assert "paqbench git sha</dt><dd>abc123" in text and "transformers 5.23.0" in text


# -- a real browser ------------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium); CI installs it",
)

#: Appended to a copy of the page: click the perplexity header twice, as a person would.
CLICK = """<script>
var th = document.querySelectorAll('#headline th')[1];
th.click(); var up = Array.prototype.map.call(document.querySelectorAll('#headline tbody tr'),
  function (r) { return r.cells[0].textContent; }).join('|');
th.click(); var down = Array.prototype.map.call(document.querySelectorAll('#headline tbody tr'),
  function (r) { return r.cells[0].textContent; }).join('|');
document.body.setAttribute('data-up', up); document.body.setAttribute('data-down', down);
</script></body>"""


def _chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=180)


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@needs_chromium
def test_chromium_renders_the_page_without_console_errors(page, tmp_path):
    directory, _, _ = page
    shot = tmp_path / "report.png"
    result = _chromium(tmp_path, (directory / FILE).as_uri(), f"--screenshot={shot}", "--window-size=1280,1600")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    assert _console(result.stderr) == []
    dom = _chromium(tmp_path, (directory / FILE).as_uri(), "--dump-dom")
    assert 'data-sortable="ready"' in dom.stdout and 'data-sortable-tables="2"' in dom.stdout
    assert _console(dom.stderr) == []


@needs_chromium
def test_clicking_a_header_sorts_the_rows_missing_values_last(page, tmp_path):
    directory, _, text = page
    copy = tmp_path / FILE
    copy.write_text(text.replace("</body>", CLICK), encoding="utf-8")
    shutil.copy(directory / "plots.json", tmp_path / "plots.json")
    dom = _chromium(tmp_path, copy.as_uri(), "--dump-dom")
    assert _console(dom.stderr) == []
    up = unescape(re.search(r'data-up="([^"]*)"', dom.stdout).group(1)).split("|")
    down = unescape(re.search(r'data-down="([^"]*)"', dom.stdout).group(1)).split("|")
    assert up == ["baseline", "same-as-baseline", "rtn4 <b>&", "magnitude[sparsity=0.5]", "broken (failed)"]
    assert down == ["magnitude[sparsity=0.5]", "rtn4 <b>&", "baseline", "same-as-baseline", "broken (failed)"]
