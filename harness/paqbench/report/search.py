"""The threshold-search section of report.md: each search's answer, then its probes."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate


def _bound(objective: dict[str, Any]) -> str:
    if objective.get("max") is not None:
        return f"{objective['metric']} ≤ {objective['max']:g}"
    if objective.get("min_recovery") is not None:
        return f"{objective['metric']} recovery ≥ {objective['min_recovery']:g}% of the baseline"
    return f"{objective['metric']} ≥ {objective['min']:g}"


def search_lines(searches: list[dict[str, Any]]) -> list[str]:
    """Markdown lines for ``report.searches`` (nothing when the suite has no search)."""
    if not searches:
        return []
    lines = ["## Threshold searches", "",
             "Bisection over one parameter; each probe is a run of its own (see Runs). The answer is the "
             "last probed value that kept the bound; the true threshold lies inside the bracket.", ""]
    rows = []
    for s in searches:
        if s["status"] != "done":
            answer = f"{s['status']}: {s['reason']}"
        elif s.get("answer") is None:
            answer = f"none ({s['reason']})"
        else:
            answer = f"**{s['answer']:g}**" + (f" ({s['reason']})" if s.get("reason") else "")
        bracket = f"[{s['bracket'][0]:g}, {s['bracket'][1]:g}]" if s.get("bracket") else ""
        find = s["objective"].get("find", "largest")
        rows.append([s["name"], f"{find} {s['parameter']} in [{s['low']:g}, {s['high']:g}], tol {s['tol']:g}",
                     _bound(s["objective"]), answer, bracket, len(s["probes"])])
    lines += [tabulate(rows, headers=["search", "parameter", "bound", "answer", "bracket", "probes"],
                       tablefmt="github", disable_numparse=True), ""]
    for s in searches:
        rows = [[i, f"{p['value']:g}", p["run"], p["status"],
                 "" if p.get("measured") is None else f"{p['measured']:.6g}",
                 {True: "yes", False: "no"}.get(p.get("feasible"), "")]
                for i, p in enumerate(s["probes"], start=1)]
        lines += [f"Probes of `{s['name']}` ({_bound(s['objective'])}):", "",
                  tabulate(rows, headers=["#", s["parameter"], "run", "status", s["objective"]["metric"],
                                          "bound kept"], tablefmt="github", disable_numparse=True), ""]
    return lines
