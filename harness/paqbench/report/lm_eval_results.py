"""Accuracy measurements in lm-eval's results layout, one file per run, so tools that read
lm-eval output (its ``make_table``, leaderboards' loaders, notebooks) read paqbench's.

Layout, as lm-eval 0.4 writes it with ``--output_path DIR``:
``lm_eval_results/<run name sanitized as lm-eval sanitizes model names>/results_<finished
time>.json`` holding ``results`` (``{task: {"alias", "name", "sample_len", "acc,none",
"acc_stderr,none", ...}}``), ``groups``, ``group_subtasks``, ``configs``, ``versions``,
``n-shot``, ``higher_is_better``, ``n-samples`` (``{task: {"original", "effective"}}``),
``config`` (model, device, limit, ...), ``git_hash``, ``date``, ``lm_eval_version``,
``transformers_version``, ``model_name`` and ``model_name_sanitized``; plus a ``paqbench``
entry naming the run and its steps. Sources: the ``race`` metric (scored as lm-eval's
``race`` task, RACE-high; another subset is ``race_<subset>``) and the ``lm_eval`` metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from paqbench.fsio import write_text_atomic
from paqbench.report.records import phases

DIRECTORY = "lm_eval_results"
RACE_VERSION = 3.0  # lm-eval's race task version whose protocol paqbench's race metric follows

Run = Mapping[str, Any]


def sanitize(name: str) -> str:
    """lm-eval's ``sanitize_model_name``: the characters it replaces in directory names."""
    return re.sub(r"[\"<>:/|\\?*\[\]]+", "__", name)


def _entry(task: str, alias: str | None = None) -> dict[str, Any]:
    return {"name": task, "alias": alias or task, "sample_len": None}


def _race_tasks(run: Run) -> dict[str, dict[str, Any]]:
    """{task: {"metrics": {metric: (value, stderr)}, "details": ...}} from the race metric."""
    tasks: dict[str, dict[str, Any]] = {}
    for m in run.get("measurements") or ():
        if m["metric"] != "race" or m.get("value") is None or "/" not in m["name"]:
            continue
        subset, metric = m["name"].split("/", 1)
        details = m.get("details") or {}
        task = "race" if subset == "high" else f"race_{subset}"
        slot = tasks.setdefault(task, {"metrics": {}, "details": details, "version": RACE_VERSION, "n_shot": 0})
        slot["metrics"][(metric, "none")] = (m["value"], (m.get("spread") or {}).get("stderr"), True)
    return tasks


def _lm_eval_tasks(run: Run) -> dict[str, dict[str, Any]]:
    """The same from the lm_eval metric, whose measurements keep lm-eval's own names."""
    tasks: dict[str, dict[str, Any]] = {}
    for m in run.get("measurements") or ():
        details = m.get("details") or {}
        if m["metric"] != "lm_eval" or m.get("value") is None or "task" not in details:
            continue
        task = details["task"]
        slot = tasks.setdefault(task, {"metrics": {}, "details": details, "version": details.get("version"),
                                       "n_shot": details.get("n_shot"), "group": details.get("kind") == "group"})
        better = None if m.get("better") is None else m["better"] == "higher"
        slot["metrics"][(details.get("metric"), details.get("filter", "none"))] = (
            m["value"], (m.get("spread") or {}).get("stderr"), better)
    return tasks


def _fill(results: dict[str, Any], task: str, slot: Mapping[str, Any]) -> None:
    entry = _entry(task)
    details = slot["details"]
    effective, original = details.get("documents"), details.get("total_documents")
    entry["sample_len"] = effective
    for (metric, filter_name), (value, stderr, _) in slot["metrics"].items():
        entry[f"{metric},{filter_name}"] = value
        entry[f"{metric}_stderr,{filter_name}"] = stderr if stderr is not None else "N/A"
    results["results"][task] = entry
    if slot.get("group"):
        results["groups"][task] = dict(entry)
    results["versions"][task] = slot.get("version")
    results["n-shot"][task] = slot.get("n_shot") or 0
    results["higher_is_better"][task] = {metric: better for (metric, _), (_, _, better) in slot["metrics"].items()}
    if effective is not None:
        results["n-samples"][task] = {"original": original if original is not None else effective,
                                      "effective": effective}
    results["configs"][task] = {"task": task, **{k: v for k, v in details.items()
                                                 if k in ("subset", "split", "source", "origin", "protocol",
                                                          "filter", "n_shot", "data_fingerprint")}}


def _value(run: Run, key: str) -> Any:
    metric, name = key.split("/", 1)
    return next((m.get("value") for m in run.get("measurements") or ()
                 if m["metric"] == metric and m["name"] == name), None)


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def _unix(stamp: str | None) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp() if stamp else None
    except ValueError:
        return None


def results_for(run: Run, environment: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """One run's accuracy measurements in lm-eval's results layout; None when it has none."""
    tasks = {**_race_tasks(run), **_lm_eval_tasks(run)}
    if not tasks:
        return None
    environment = environment or {}
    libraries = environment.get("libraries") or {}
    results: dict[str, Any] = {"results": {}, "groups": {}, "group_subtasks": {}, "configs": {}, "versions": {},
                               "n-shot": {}, "higher_is_better": {}, "n-samples": {}}
    for task, slot in tasks.items():
        _fill(results, task, slot)
    if not results["groups"]:
        del results["groups"]
    model = (run.get("model") or {}).get("source") or "?"
    load = (run.get("load") or {}).get("info") or {}
    limit = next((s["details"].get("limit") for s in tasks.values() if s["details"].get("limit") is not None),
                 run.get("limit"))
    results["config"] = {
        "model": model, "model_args": None, "model_num_parameters": _count(_value(run, "params/total")),
        "model_dtype": load.get("dtype"), "batch_size": None, "batch_sizes": [], "device": load.get("device"),
        "use_cache": None, "limit": limit, "bootstrap_iters": None, "gen_kwargs": None,
        "random_seed": run.get("seed"), "numpy_seed": None, "torch_seed": None, "fewshot_seed": None,
    }
    name = f"{model} [{run['name']}]" if run.get("pipeline") != "baseline" else model
    results.update({
        "git_hash": environment.get("git_sha"), "date": _unix(run.get("started_at")),
        "transformers_version": libraries.get("transformers"), "lm_eval_version": libraries.get("lm_eval"),
        "model_source": "paqbench", "model_name": name, "model_name_sanitized": sanitize(name),
        "total_evaluation_time_seconds": str(sum(p.wall_s or 0 for p in phases(run, "metrics")
                                                 if p.name in ("race", "lm_eval"))),
        "paqbench": {"run": run["name"], "id": run.get("id"), "pipeline": run.get("pipeline"),
                     "steps": [{"name": s.name, "params": s.params} for s in phases(run, "steps")],
                     "report": "report.json"},
    })
    return results


def file_for(directory: Path, run: Run) -> Path:
    """``lm_eval_results/<run>/results_<finished time>.json`` (lm-eval's file name shape;
    the time is the run's, so rebuilding the report rewrites the same file)."""
    stamp = (run.get("finished_at") or run.get("started_at") or "unknown").split("+")[0].replace(":", "-")
    return directory / DIRECTORY / sanitize(run["name"]) / f"results_{stamp}.json"


def write_lm_eval_results(runs: Sequence[Run], environment: Mapping[str, Any] | None,
                          directory: str | Path) -> list[Path]:
    """Write one results file per run with accuracy measurements; remove the files of
    earlier builds that no current run wrote (never a stale result)."""
    directory = Path(directory)
    written = []
    for run in runs:
        results = results_for(run, environment)
        if results is None:
            continue
        path = file_for(directory, run)
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(write_text_atomic(path, json.dumps(results, indent=2, default=str) + "\n"))
    root = directory / DIRECTORY
    if root.is_dir():
        for old in root.glob("*/results_*.json"):
            if old not in written and not old.is_symlink():
                old.unlink()
        for folder in root.iterdir():
            if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                folder.rmdir()
        if not any(root.iterdir()):
            root.rmdir()
    return written
