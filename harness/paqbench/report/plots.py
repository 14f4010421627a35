"""Figures of a report (matplotlib, Agg backend): quality against size, memory and latency
with the Pareto front; a bubble chart (size, perplexity, latency as bubble area); and every
sweep as lines over its swept parameter.

What is plotted is decided in :mod:`paqbench.report.selection` (pure, tested without
matplotlib); this module only draws. A run without a usable value is left out of a figure
and named, with the reason, under it and in ``report.md``; it is never drawn as a zero.

``plots.json`` next to the PNGs lists the figures written for one report (matched by a
fingerprint), so the markdown reporter links exactly these, in either reporter order.
"""

from __future__ import annotations

import hashlib
import io
import json
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from paqbench.fsio import write_bytes_atomic, write_text_atomic
from paqbench.report.selection import (
    Axis,
    Point,
    Selection,
    Sweep,
    collect,
    detect_sweeps,
    front_of,
    log_scale,
    select,
    stderr_of,
    value_or_reason,
)

MANIFEST = "plots.json"
FILES = {"tradeoffs": "plot_tradeoffs.png", "bubble": "plot_bubble.png", "sweeps": "plot_sweeps.png"}
BEGIN, END = "<!-- paqbench:plots -->", "<!-- /paqbench:plots -->"
BASELINE_COLOR = "black"


@dataclass
class FigureInfo:
    """One written figure: its file (relative to the report), title, caption and the runs
    it leaves out with the reason."""

    file: str
    title: str
    caption: str
    skipped: list[str] = field(default_factory=list)


@dataclass
class PlotOptions:
    """``overrides``: role -> measurement key, see :func:`paqbench.report.selection.select`."""

    overrides: dict[str, str] = field(default_factory=dict)
    dpi: int = 130


# -- report access (a Report object or report.json's dict) --------------------------------


def _get(report: Any, name: str, default: Any = None) -> Any:
    if isinstance(report, Mapping):
        return report.get(name, default)
    return getattr(report, name, default)


def report_runs(report: Any) -> list[dict[str, Any]]:
    return list(_get(report, "runs", []) or [])


def fingerprint(report: Any) -> str:
    """Identifies one built report: when it was generated and every run's id and status."""
    runs = [(r.get("id"), r.get("status"), r.get("finished_at")) for r in report_runs(report)]
    text = json.dumps([_get(report, "generated_at", ""), runs], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- drawing helpers -----------------------------------------------------------------------


def _colors(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One colour per run, the same in every figure; the baseline is black."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(runs) <= 10 else "tab20"]
    colors, index = {}, 0
    for run in runs:
        if run.get("pipeline") == "baseline":
            colors[run["name"]] = BASELINE_COLOR
        else:
            colors[run["name"]] = palette(index % palette.N)
            index += 1
    return colors


def _unit_scale(axis: Axis, values: Sequence[float]) -> tuple[float, str]:
    """Divide values by a power so the ticks read well, and the unit that results."""
    if axis.unit == "bytes":
        top = max((abs(v) for v in values), default=0)
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if top >= size:
                return size, unit
        return 1, "bytes"
    if axis.unit in ("params", "count", "MACs"):
        top = max((abs(v) for v in values), default=0)
        for suffix, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
            if top >= size:
                return size, f"{suffix} {axis.unit}" if axis.unit != "count" else suffix
        return 1, axis.unit
    if axis.unit == "fraction":
        return 0.01, "%"
    if axis.unit == "s":
        top = max((abs(v) for v in values), default=0)
        return (1e-3, "ms") if top < 1 else (1, "s")
    if axis.unit == "s/token":
        top = max((abs(v) for v in values), default=0)
        return (1e-3, "ms/token") if top < 1 else (1, "s/token")
    return 1, axis.unit


def _label(axis: Axis, unit: str) -> str:
    title = axis.label.split(" [")[0]
    arrow = {"lower": "lower is better", "higher": "higher is better"}.get(axis.better or "", "")
    parts = [title + (f" [{unit}]" if unit and unit != "ppl" else "")]
    if arrow:
        parts.append(f"({arrow})")
    return "\n".join(parts) if len(parts[0]) > 28 else " ".join(parts)


def _place_labels(ax, points: Sequence[Point], texts: Sequence[str], colors: Mapping[str, Any],
                  fontsize: float = 7.5, gaps: Sequence[float] | None = None) -> None:
    """Label each point so that no label covers a point or another label, nor leaves the
    axes: candidate spots right, left, above and below the point (``gaps[i]`` points away,
    e.g. a bubble's radius), then further up or down, first free spot wins; a label away
    from its point gets a thin leader line. Labels take their run's colour, so a label near
    two points still says which one it names."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    ax.get_xlim(), ax.get_ylim()  # settle autoscaling: data -> pixels is final from here
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    centres = [ax.transData.transform((p.x, p.y)) for p in points]
    radii = [max(5.0, gaps[i] if gaps is not None else 0.0) * px_per_pt for i in range(len(points))]
    obstacles = [Bbox.from_extents(cx - r, cy - r, cx + r, cy + r) for (cx, cy), r in zip(centres, radii, strict=True)]
    placed: list[Any] = []
    order = sorted(range(len(points)), key=lambda i: centres[i][1])
    for i in order:
        annotation = ax.annotate(texts[i], (points[i].x, points[i].y), xytext=(0, 0), textcoords="offset points",
                                 fontsize=fontsize, ha="left", va="bottom", zorder=6,
                                 color=colors.get(points[i].run, "black"),
                                 bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75})
        box = annotation.get_window_extent(renderer)
        w, h = box.width, box.height
        gap = (6 + (gaps[i] if gaps is not None else 0)) * px_per_pt
        cx, cy = centres[i]
        spots = [(gap, -h / 2), (-gap - w, -h / 2), (gap, 2), (-gap - w, 2), (gap, -h - 2), (-gap - w, -h - 2),
                 (-w / 2, gap), (-w / 2, -gap - h)]
        for k in range(1, 8):
            spots += [(gap, 2 + k * (h + 2)), (-gap - w, 2 + k * (h + 2)),
                      (gap, -h - 2 - k * (h + 2)), (-gap - w, -h - 2 - k * (h + 2))]

        def free(dx: float, dy: float, cx: float = cx, cy: float = cy, w: float = w, h: float = h,
                 i: int = i) -> bool:
            candidate = Bbox.from_extents(cx + dx, cy + dy, cx + dx + w, cy + dy + h)
            inside = (candidate.x0 >= frame.x0 and candidate.x1 <= frame.x1 and candidate.y0 >= frame.y0
                      and candidate.y1 <= frame.y1)
            return inside and not any(candidate.overlaps(o) for o in placed) and not any(
                candidate.overlaps(o) for j, o in enumerate(obstacles) if j != i)

        dx, dy = next((spot for spot in spots if free(*spot)), spots[0])
        annotation.xyann = (dx / px_per_pt, dy / px_per_pt)
        placed.append(Bbox.from_extents(cx + dx, cy + dy, cx + dx + w, cy + dy + h))
        if abs(dy + h / 2) > h + gap:  # moved away from its point: a leader line back to it
            anchor_x = dx if dx > 0 else dx + w
            ax.annotate("", (points[i].x, points[i].y), xytext=(anchor_x / px_per_pt, (dy + h / 2) / px_per_pt),
                        textcoords="offset points", zorder=5,
                        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5", "shrinkA": 0, "shrinkB": 3})


def _log_axis(ax) -> None:
    """Log y with plain tick labels (20, 50, 100, 200, ...), not powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)


def _errorbars(ax, points: Sequence[Point]) -> None:
    """The y measurement's standard error as a thin bar (perplexity, accuracy)."""
    for p in points:
        if p.yerr:
            ax.errorbar([p.x], [p.y], yerr=[p.yerr], fmt="none", ecolor="0.55", elinewidth=0.8, capsize=2, zorder=3)


def _scatter(ax, points: Sequence[Point], colors: Mapping[str, Any], sizes: Sequence[float] | None = None,
             alpha: float = 1.0) -> None:
    for i, p in enumerate(points):
        size = sizes[i] if sizes is not None else (180 if p.baseline else 50)
        ax.scatter([p.x], [p.y], s=size, color=colors.get(p.run, "grey"), marker="*" if p.baseline else "o",
                   edgecolors="black" if p.baseline else "white", linewidths=0.6, zorder=4, alpha=alpha)


def _scaled(points: Sequence[Point], sx: float, sy: float) -> list[Point]:
    return [Point(p.run, p.x / sx, p.y / sy, p.baseline, p.size, p.yerr / sy if p.yerr else None)
            for p in points]


def _notes_text(skipped: Sequence[str], width: int) -> str:
    unique = list(dict.fromkeys(skipped))
    if not unique:
        return ""
    lines = textwrap.wrap("Not plotted: " + "; ".join(unique), width=width)
    if len(lines) > 4:
        lines = [*lines[:4], f"... ({len(unique)} runs or values left out; see report.md)"]
    return "\n".join(lines)


def _finish(fig, path: Path, skipped: Sequence[str], dpi: int, legend_handles: list | None = None,
            spacious: bool = False, labels: Sequence[tuple] = ()) -> None:
    """Legend and notes below the axes (never over a point), then the point labels (placed
    in pixels, so after the layout), then save. ``spacious``: one row, room for big markers
    (the bubble sizes). ``labels``: ``_place_labels`` arguments, one tuple per axes."""
    width_chars = int(fig.get_figwidth() * 14)
    note = _notes_text(skipped, width_chars)
    n_legend_rows = 0
    if legend_handles:
        ncol = len(legend_handles) if spacious else max(1, min(len(legend_handles), int(fig.get_figwidth() // 2.6)))
        n_legend_rows = -(-len(legend_handles) // ncol) + (2 if spacious else 0)
    note_lines = note.count("\n") + 1 if note else 0
    inches = 0.25 + 0.24 * n_legend_rows + 0.17 * note_lines
    height = fig.get_figheight()
    fig.set_figheight(height + inches)
    fig.tight_layout(rect=(0, inches / (height + inches), 1, 1))
    if legend_handles:
        fig.legend(handles=legend_handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, (0.05 + 0.17 * note_lines) / (height + inches)),
                   **({"borderpad": 1.0, "columnspacing": 2.5, "handletextpad": 1.2} if spacious else {}))
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="0.3", ha="left", va="bottom")
    for args, kwargs in labels:
        _place_labels(*args, **kwargs)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)  # the figure was made at this dpi: labels placed in pixels stay put
    write_bytes_atomic(path, buffer.getvalue())


def _run_handles(points_by_run: Mapping[str, Point], colors: Mapping[str, Any]) -> list:
    from matplotlib.lines import Line2D

    handles = []
    for name, p in points_by_run.items():
        handles.append(Line2D([], [], linestyle="", marker="*" if p.baseline else "o", markersize=11 if p.baseline
                              else 7, color=colors.get(name, "grey"), markeredgecolor="black" if p.baseline
                              else "white", label=name))
    return handles


# -- the figures ----------------------------------------------------------------------------


def _tradeoff_panels(runs, selection: Selection) -> tuple[list[tuple[str, Axis, list[Point]]], list[str]]:
    """(role, x axis, points) for each measured role, and the runs left out: a note naming
    the panels it applies to unless it applies to all."""
    panels = []
    missing_in: dict[str, list[str]] = {}  # note -> the panels it applies to
    for role, axis in selection.roles.items():
        points, missing = collect(runs, axis, selection.quality)
        if points:
            panels.append((role, axis, points))
            for note in missing:
                missing_in.setdefault(note, []).append(role)
    skipped = [note if len(roles) == len(panels) else f"{note} [{', '.join(roles)}]"
               for note, roles in missing_in.items()]
    return panels, skipped


def _draw_front(ax, shown: Sequence[Point], front: Sequence[int]) -> None:
    """The Pareto front: a dashed line through its points, each ringed."""
    if len(front) > 1:
        ax.plot([shown[i].x for i in front], [shown[i].y for i in front], "--", color="0.45", lw=1.2, zorder=2)
    for i in front:
        ax.scatter([shown[i].x], [shown[i].y], s=190, facecolors="none", edgecolors="0.45", lw=1.0, zorder=3)


def _style_panel(ax, axis: Axis, quality: Axis, xunit: str, yunit: str, shown: Sequence[Point],
                 use_log: bool, no_front: bool) -> None:
    """Scale, labels, margins; one x value for all runs is centred and said."""
    if use_log:
        _log_axis(ax)
    else:
        ax.grid(True, alpha=0.3)
    ax.set_xlabel(_label(axis, xunit), fontsize=9)
    ax.set_ylabel(_label(quality, yunit), fontsize=9)
    ax.tick_params(labelsize=8)
    single = len({p.x for p in shown}) == 1
    ax.margins(x=0.0 if single else 0.25, y=0.12)
    if single:  # every run the same: show it, centred
        x0 = shown[0].x
        ax.set_xlim(x0 - (abs(x0) * 0.1 or 1), x0 + (abs(x0) * 0.1 or 1))
        ax.text(0.02, 0.02, "all runs equal on this axis", transform=ax.transAxes, fontsize=7, color="0.4")
    elif no_front:
        ax.text(0.02, 0.02, "all runs within noise of the baseline: no front", transform=ax.transAxes,
                fontsize=7, color="0.4")


def _tradeoff_panel(ax, axis: Axis, quality: Axis, points: Sequence[Point], colors, use_log: bool) -> tuple:
    """One subplot of the trade-off figure; returns its label-placement arguments."""
    sx, xunit = _unit_scale(axis, [p.x for p in points])
    sy, yunit = _unit_scale(quality, [p.y for p in points])
    shown = _scaled(points, sx, sy)
    front = front_of(points, axis.better, quality.better)
    _draw_front(ax, shown, front)
    _errorbars(ax, shown)
    _scatter(ax, shown, colors)
    noisy = any(p.xband or p.yband for p in points)
    _style_panel(ax, axis, quality, xunit, yunit, shown, use_log, noisy and not front and axis.better is not None)
    return (ax, shown, [p.run for p in shown], colors), {}


def _tradeoff_caption(quality: Axis, panels, use_log: bool) -> str:
    directions = f"{quality.key} {quality.better or 'informational'} is better"
    return (f"{quality.key} against " + ", ".join(a.key for _, a, _ in panels)
            + f"; one point per run, the baseline starred, the Pareto front dashed ({directions}"
            + ("; log scale" if use_log else "")
            + ("; bars: ±1 standard error" if any(p.yerr for _, _, pts in panels for p in pts) else "")
            + "). Timings within each other's p10–p90 noise band are not ranked; a panel where every run is "
              "within noise of the baseline has no front.")


def tradeoff_figure(runs, selection: Selection, path: Path, title: str, dpi: int) -> FigureInfo | None:
    """Quality against each of storage, nonzero parameters, memory and latency (those
    measured), one point per run, baseline starred, Pareto front dashed (never through
    points that differ only within noise)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    quality = selection.quality
    if quality is None or not selection.roles:
        return None
    panels, skipped = _tradeoff_panels(runs, selection)
    if not panels:
        return None
    colors = _colors(runs)
    ncols = 2 if len(panels) == 4 else len(panels)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows), squeeze=False, dpi=dpi)
    use_log = quality.metric == "perplexity" and log_scale([p.y for _, _, pts in panels for p in pts])
    labels = [_tradeoff_panel(ax, axis, quality, points, colors, use_log)
              for ax, (_role, axis, points) in zip(axes.flat, panels, strict=False)]
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    seen: dict[str, Point] = {}
    for _, _, points in panels:
        for p in points:
            seen.setdefault(p.run, p)
    handles = _run_handles({r["name"]: seen[r["name"]] for r in runs if r["name"] in seen}, colors)
    handles.append(Line2D([], [], linestyle="--", color="0.45", marker="o", markerfacecolor="none",
                          markersize=9, label="Pareto front"))
    _finish(fig, path, skipped, dpi, handles, labels=labels)
    plt.close(fig)
    return FigureInfo(path.name, title, _tradeoff_caption(quality, panels, use_log), list(dict.fromkeys(skipped)))


def _bubbles(ax, shown: Sequence[Point], sizes: Sequence[float], colors) -> None:
    """Each run as a translucent bubble of its area, with a dot (a star for the baseline)."""
    for i, p in enumerate(shown):
        ax.scatter([p.x], [p.y], s=sizes[i], color=colors.get(p.run, "grey"), alpha=0.55,
                   edgecolors="black" if p.baseline else colors.get(p.run, "grey"),
                   linewidths=1.6 if p.baseline else 0.8, zorder=3)
        ax.scatter([p.x], [p.y], s=10, color="black", marker="*" if p.baseline else ".", zorder=4)


def _bubble_axes(ax, size: Axis, quality: Axis, xunit: str, yunit: str, shown: Sequence[Point],
                 use_log: bool) -> None:
    if use_log:
        _log_axis(ax)
    else:
        ax.grid(True, alpha=0.3)
    ax.set_xlabel(_label(size, xunit), fontsize=9)
    ax.set_ylabel(_label(quality, yunit), fontsize=9)
    ax.tick_params(labelsize=8)
    ax.margins(x=0.22, y=0.18)
    if len({p.x for p in shown}) == 1:
        x0 = shown[0].x
        ax.set_xlim(x0 - (abs(x0) * 0.1 or 1), x0 + (abs(x0) * 0.1 or 1))


def _bubble_legend(bubble: Axis, top: float, area: float) -> list:
    """Reference bubbles at the largest value, a half and a quarter of it; the baseline star."""
    from matplotlib.lines import Line2D

    scale, unit = _unit_scale(bubble, [top])
    handles = [Line2D([], [], linestyle="", marker="o", markersize=(v * area) ** 0.5, color="0.6", alpha=0.55,
                      label=f"{bubble.name} {v / scale:.3g} {unit}") for v in (top, top / 2, top / 4)]
    handles.append(Line2D([], [], linestyle="", marker="*", color="black", markersize=8, label="baseline"))
    return handles


def bubble_figure(runs, selection: Selection, path: Path, title: str, dpi: int) -> FigureInfo | None:
    """The seed studies' chart: size on x, perplexity (or accuracy) on y, bubble area
    proportional to latency."""
    import matplotlib.pyplot as plt

    quality, size, bubble = selection.quality, selection.size, selection.bubble
    if quality is None or size is None or bubble is None:
        return None
    points, skipped = collect(runs, size, quality, bubble)
    if not points:
        return None
    colors = _colors(runs)
    sx, xunit = _unit_scale(size, [p.x for p in points])
    sy, yunit = _unit_scale(quality, [p.y for p in points])
    shown = _scaled(points, sx, sy)
    top = max(p.size for p in points) or 1.0
    area = 1800.0 / top  # points^2 per unit of the bubble measurement: area is proportional
    sizes = [max(p.size, 0.0) * area for p in points]
    fig, ax = plt.subplots(figsize=(7.5, 5.2), dpi=dpi)
    _bubbles(ax, shown, sizes, colors)
    use_log = quality.metric == "perplexity" and log_scale([p.y for p in points])
    _bubble_axes(ax, size, quality, xunit, yunit, shown, use_log)
    labels = [((ax, shown, [p.run for p in shown], colors), {"gaps": [(a ** 0.5) / 2 for a in sizes]})]
    fig.suptitle(title, fontsize=11)
    ax.set_title(f"bubble area proportional to {bubble.label.split(' [')[0]}", fontsize=8.5, color="0.3")
    _finish(fig, path, skipped, dpi, _bubble_legend(bubble, top, area), spacious=True, labels=labels)
    plt.close(fig)
    return FigureInfo(path.name, title,
                      f"x: {size.key}, y: {quality.key}, bubble area proportional to {bubble.key}"
                      + (" (log y)" if use_log else "") + ".", list(dict.fromkeys(skipped)))


@dataclass
class _SweepPanel:
    """What one subplot of the sweep figure collected while drawing."""

    values_y: list[float] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)


def _sweep_points(sweep: Sweep, metric: Axis, by_name: Mapping[str, Any], panel: _SweepPanel,
                  skipped: list[str]) -> tuple[list, list[float], list[float | None]]:
    """x (the parameter, or its category index), y and stderr of a sweep's runs with a value."""
    xs, ys, errs = [], [], []
    for name, value in zip(sweep.runs, sweep.values, strict=True):
        y, reason = value_or_reason(by_name[name], metric.key)
        if reason:
            skipped.append(f"{name}: {reason}")
            continue
        if sweep.numeric:
            xs.append(value)
        else:
            if str(value) not in panel.categories:
                panel.categories.append(str(value))
            xs.append(panel.categories.index(str(value)))
        ys.append(y)
        errs.append(stderr_of(by_name[name], metric.key))
    return xs, ys, errs


def _sweep_line(ax, sweep: Sweep, metric: Axis, by_name, panel: _SweepPanel, color, skipped: list[str]) -> bool:
    """One sweep as a line with its error bars; False when none of its runs has a value."""
    xs, ys, errs = _sweep_points(sweep, metric, by_name, panel, skipped)
    if not xs:
        return False
    scale, _ = _unit_scale(metric, ys)
    ys = [v / scale for v in ys]
    panel.values_y += ys
    ax.plot(xs, ys, "-o", color=color, lw=1.6, ms=5, zorder=3)
    if any(errs):
        ax.errorbar(xs, ys, yerr=[(e or 0) / scale for e in errs], fmt="none", ecolor=color, alpha=0.5,
                    elinewidth=0.9, capsize=3, zorder=2)
    return True


def _sweep_axes_style(ax, metric: Axis, parameter: str, panel: _SweepPanel, baseline, handles: dict) -> None:
    """The baseline's dotted line, the scale, ticks and labels of one sweep subplot."""
    from matplotlib.lines import Line2D

    scale, unit = _unit_scale(metric, panel.values_y or [1.0])
    base = value_or_reason(baseline, metric.key)[0] if baseline is not None else None
    if base is not None:
        ax.axhline(base / scale, color=BASELINE_COLOR, ls=":", lw=1.2, zorder=2)
        panel.values_y.append(base / scale)
        handles.setdefault("baseline", Line2D([], [], color=BASELINE_COLOR, ls=":", label="baseline"))
    if metric.metric == "perplexity" and panel.values_y and log_scale(panel.values_y):
        _log_axis(ax)
    else:
        ax.grid(True, alpha=0.3)
    if panel.categories:
        ax.set_xticks(range(len(panel.categories)), panel.categories, rotation=20)
    ax.set_xlabel(parameter, fontsize=9)
    ax.set_ylabel(_label(metric, unit), fontsize=9)
    ax.tick_params(labelsize=8)


def sweep_figure(runs, selection: Selection, sweeps: Sequence[Sweep], path: Path, title: str,
                 dpi: int) -> FigureInfo | None:
    """Each sweep as a line of quality over the swept parameter (one column per parameter,
    one row per quality measurement), the baseline as a horizontal reference."""
    import matplotlib.pyplot as plt
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    metrics = [a for a in (selection.quality, selection.secondary) if a is not None]
    if not metrics or not sweeps:
        return None
    parameters = list(dict.fromkeys(s.parameter for s in sweeps))
    by_name = {r["name"]: r for r in runs}
    baseline = next((r for r in runs if r.get("pipeline") == "baseline"), None)
    fig, axes = plt.subplots(len(metrics), len(parameters), figsize=(5.2 * len(parameters), 3.6 * len(metrics)),
                             squeeze=False, dpi=dpi)
    palette = colormaps["tab10"]
    line_colors = {label: palette(i % 10) for i, label in enumerate(dict.fromkeys(s.label for s in sweeps))}
    skipped: list[str] = []
    handles: dict[str, Any] = {}
    for row, metric in enumerate(metrics):
        for col, parameter in enumerate(parameters):
            ax, panel = axes[row][col], _SweepPanel()
            for sweep in (s for s in sweeps if s.parameter == parameter):
                color = line_colors[sweep.label]
                if _sweep_line(ax, sweep, metric, by_name, panel, color, skipped):
                    handles.setdefault(sweep.label, Line2D([], [], color=color, marker="o", label=sweep.label))
            _sweep_axes_style(ax, metric, parameter, panel, baseline, handles)
    fig.suptitle(title, fontsize=11)
    _finish(fig, path, skipped, dpi, list(handles.values()))
    plt.close(fig)
    return FigureInfo(path.name, title,
                      "; ".join(f"{s.label}: {s.parameter} = {', '.join(str(v) for v in s.values)}" for s in sweeps)
                      + f" -> {', '.join(m.key for m in metrics)}; dotted: the baseline; bars: ±1 standard error "
                      "where the metric records one.",
                      list(dict.fromkeys(skipped)))


# -- writing, manifest and the report.md section ---------------------------------------------


def write_plots(report: Any, directory: str | Path, options: PlotOptions | None = None) -> list[FigureInfo]:
    """Write the figures of ``report`` (a :class:`~paqbench.report.Report` or report.json's
    dict) into ``directory`` with ``plots.json``; update report.md's plot section if it is
    there. Figures that cannot be drawn this time are removed, never left stale."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    options = options or PlotOptions()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    runs = report_runs(report)
    suite = _get(report, "suite_name", "") or ""
    selection = select(runs, options.overrides)
    figures: list[FigureInfo] = []
    quality = selection.quality.label.split(" [")[0] if selection.quality else "quality"
    made = {
        "tradeoffs": tradeoff_figure(runs, selection, directory / FILES["tradeoffs"],
                                     f"{suite}: {quality} against size, memory and latency", options.dpi),
        "bubble": bubble_figure(runs, selection, directory / FILES["bubble"],
                                f"{suite}: size, {quality} and latency", options.dpi),
        "sweeps": sweep_figure(runs, selection, detect_sweeps(runs), directory / FILES["sweeps"],
                               f"{suite}: {quality} over each swept parameter", options.dpi),
    }
    for key, info in made.items():
        if info is None:
            (directory / FILES[key]).unlink(missing_ok=True)
        else:
            figures.append(info)
    notes = [] if selection.quality else ["no perplexity or accuracy measurement: nothing to plot quality against"]
    manifest = {"fingerprint": fingerprint(report), "figures": [asdict(f) for f in figures], "notes": notes}
    write_text_atomic(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    markdown = directory / "report.md"
    if markdown.is_file():
        patch_markdown(markdown, plots_markdown(manifest))
    return figures


def read_manifest(directory: str | Path, report: Any) -> dict[str, Any] | None:
    """plots.json of ``directory`` if it was written for this very report, else None."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if manifest.get("fingerprint") == fingerprint(report) else None


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*").replace(
        "_", "\\_").replace("[", "\\[").replace("]", "\\]")


def plots_markdown(manifest: Mapping[str, Any] | None) -> list[str]:
    """report.md's plot section (between markers, so the plots reporter can update it)."""
    lines = [BEGIN]
    if manifest and (manifest.get("figures") or manifest.get("notes")):
        lines += ["## Plots", ""]
        for figure in manifest.get("figures", []):
            lines += [f"![{_md_escape(figure['title'])}]({figure['file']})", "", _md_escape(figure["caption"]), ""]
            if figure.get("skipped"):
                lines += ["Not plotted:", "", *[f"- {_md_escape(s)}" for s in figure["skipped"]], ""]
        lines += [f"*{_md_escape(n)}*" for n in manifest.get("notes", [])]
    lines.append(END)
    return lines


#: Headings of report.md the plot section goes before when report.md has none yet.
_PLOTS_BEFORE = ("## Generation samples", "## Details", "## Runs", "## Environment")


def patch_markdown(path: Path, section: Sequence[str]) -> bool:
    """Replace the plot section of an existing report.md, or insert it before the first of
    :data:`_PLOTS_BEFORE` (the markdown reporter writes no empty section when the plots
    reporter is off); False when report.md has neither."""
    text = path.read_text(encoding="utf-8")
    start, end = text.find(BEGIN), text.find(END)
    body = "\n".join(section)
    if 0 <= start < end:
        write_text_atomic(path, text[:start] + body + text[end + len(END):])
        return True
    at = min((i for i in (text.find("\n" + h + "\n") for h in _PLOTS_BEFORE) if i >= 0), default=-1)
    if at < 0:
        return False
    write_text_atomic(path, text[: at + 1] + body + "\n\n" + text[at + 1:])
    return True
