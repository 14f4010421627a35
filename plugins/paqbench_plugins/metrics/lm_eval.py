"""Any lm-eval task, through ``lm_eval.simple_evaluate`` on an ``HFLM`` that wraps the
in-memory (compressed) model with the run's tokenizer.

Numbers are lm-eval's own: this module only builds the model wrapper, resolves task names
(lm-eval's built-in tasks and custom task YAMLs under ``include_path``) and turns lm-eval's
results into measurements. Nothing is cached between runs: no response cache
(``use_cache=None``), no request cache (``cache_requests=False``). Dataset downloads go
through ``datasets`` as the user's environment configures it (``HF_HOME``,
``HF_DATASETS_OFFLINE``); a task whose data cannot be reached is reported unavailable.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from torch import nn

from paqbench import Measurement, Metric, Params, RunContext, Unavailable, hookimpl

#: lm-eval metrics whose value is a proportion in [0, 1]; the report shows them in %.
FRACTION_METRICS = frozenset(
    {"acc", "acc_norm", "acc_bytes", "acc_mutual_info", "acc_all", "exact_match", "em", "f1"}
)
_UNITS = {
    "perplexity": "ppl", "word_perplexity": "ppl", "byte_perplexity": "ppl",
    "bits_per_byte": "bits/byte",
}


class LmEvalParams(Params):
    tasks: list[str] = Field(
        default_factory=lambda: ["hellaswag"], min_length=1,
        description="lm-eval task, group or tag names (globs such as mmlu_* allowed) or task "
        "YAML paths",
    )
    num_fewshot: int | None = Field(
        None, ge=0, description="few-shot examples (None: each task's own default, else 0)"
    )
    limit: int | None = Field(
        None, gt=0,
        description="evaluate only the first N documents of each task; --limit also caps",
    )
    batch_size: int = Field(
        1, gt=0, description="requests per forward pass (lm-eval's batch_size)"
    )
    include_path: str | None = Field(
        None,
        description="a folder (or YAML file) of custom lm-eval task configs, e.g. on local "
        "data files",
    )
    include_defaults: bool = Field(
        True,
        description="also index lm-eval's built-in tasks (False: only include_path; faster)",
    )
    bootstrap_iters: int = Field(
        100_000, ge=0,
        description="bootstrap draws for stderrs lm-eval cannot compute in closed form "
        "(0: no stderr at all)",
    )
    apply_chat_template: bool = Field(
        False, description="format prompts with the tokenizer's chat template (lm-eval's flag)"
    )

    @field_validator("tasks", mode="before")
    @classmethod
    def _one_task_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


@lru_cache(maxsize=4)
def task_manager(include_path: str | None, include_defaults: bool) -> Any:
    """lm-eval's task index; building it reads every task YAML (seconds), so one per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def resolve_tasks(manager: Any, names: list[str]) -> list[str]:
    """Known names and YAML paths as given, globs expanded; an unknown name is an error
    that suggests close matches."""
    resolved: list[str] = []
    for name in names:
        if name in manager.all_tasks or Path(name).expanduser().is_file():
            resolved.append(name)
            continue
        matched = manager.match_tasks([name]) if any(c in name for c in "*?[") else []
        if not matched:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"lm-eval has no task, group or tag {name!r}{hint} (lm_eval ls tasks lists them)"
            )
        resolved.extend(m for m in matched if m not in resolved)
    return resolved


def _unreachable_types() -> tuple[type[BaseException], ...]:
    import datasets.exceptions
    import huggingface_hub.errors

    names = [
        (datasets.exceptions, "DatasetNotFoundError"),
        (huggingface_hub.errors, "LocalEntryNotFoundError"),
        (huggingface_hub.errors, "OfflineModeIsEnabled"),
    ]
    return (ConnectionError, *(getattr(m, n) for m, n in names if hasattr(m, n)))


def _data_unreachable(exc: BaseException | None) -> bool:
    """Whether an exception (or one it was raised from) says that a task's data could not
    be fetched (offline, no such dataset), as opposed to a bug."""
    unreachable = _unreachable_types()
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, unreachable):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def unit_of(metric: str) -> str:
    if metric in FRACTION_METRICS:
        return "fraction"
    return _UNITS.get(metric, "score")


class LmEval(Metric):
    name = "lm-eval"
    description = (
        "Any lm-eval task (accuracy etc., with lm-eval's stderr) through lm_eval.simple_evaluate "
        "on an HFLM wrapping the compressed model in memory with the run's tokenizer. One "
        "measurement per task and metric, named <task>/<metric>. Custom task YAMLs (e.g. local "
        "data files for offline use) load from include_path. Cost: lm-eval's (a forward pass "
        "per request; multiple choice: one per option), plus seconds to index the task YAMLs."
    )
    Params = LmEvalParams

    def measure(self, model: nn.Module, params: LmEvalParams, ctx: RunContext) -> Iterator[Measurement]:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        manager = task_manager(params.include_path, params.include_defaults)
        tasks = resolve_tasks(manager, list(params.tasks))
        caps = [c for c in (params.limit, ctx.limit) if c is not None]
        limit = min(caps) if caps else None

        tokenizer = ctx.tokenizer
        if getattr(tokenizer, "pad_token_id", None) is None:
            # HFLM gives a tokenizer without one a pad token; keep the run's tokenizer as it is
            tokenizer = copy.deepcopy(tokenizer)
        was_training = model.training  # HFLM switches the model to eval()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=params.batch_size)
        try:
            results = simple_evaluate(
                model=lm, tasks=tasks, num_fewshot=params.num_fewshot, limit=limit,
                task_manager=manager, use_cache=None, cache_requests=False, log_samples=False,
                bootstrap_iters=params.bootstrap_iters,
                apply_chat_template=params.apply_chat_template,
            )
        except Exception as exc:
            if _data_unreachable(exc):
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise Unavailable(
                    f"lm-eval could not load the data of {', '.join(tasks)}: {first}"
                ) from exc
            raise
        finally:
            model.train(was_training)
        yield from measurements(self, results, limit, params)


def measurements(
    metric: Metric, results: dict[str, Any], limit: int | None, params: LmEvalParams
) -> list[Measurement]:
    """lm-eval's ``results`` dict as measurements: every numeric ``<metric>,<filter>`` of
    every task and group, with its ``_stderr`` as spread."""
    out = []
    groups = set(results.get("groups", {}) or {})
    for task, values in results["results"].items():
        better_of = (results.get("higher_is_better") or {}).get(task, {}) or {}
        samples = (results.get("n-samples") or {}).get(task)
        for key, value in values.items():
            if "," not in key or "_stderr," in key or isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)):
                continue
            name, filter_name = key.split(",", 1)
            label = f"{task}/{name}" if filter_name == "none" else f"{task}/{name}:{filter_name}"
            if math.isnan(value):
                out.append(Measurement.unavailable_because(
                    metric.name, label, unit_of(name), "lm-eval returned NaN"
                ))
                continue
            stderr = values.get(f"{name}_stderr,{filter_name}")
            better = better_of.get(name)
            details: dict[str, Any] = {
                "task": task, "metric": name, "filter": filter_name,
                "kind": "group" if task in groups else "task",
                "n_shot": (results.get("n-shot") or {}).get(task),
                "version": (results.get("versions") or {}).get(task),
                "limit": limit, "lm_eval_version": results.get("lm_eval_version"),
            }
            if samples:
                details["documents"] = samples.get("effective")
                details["total_documents"] = samples.get("original")
            if params.include_path:
                details["include_path"] = params.include_path
            if isinstance(stderr, (int, float)) and math.isnan(stderr):
                stderr = None
            out.append(metric.make(
                label, float(value), unit_of(name),
                None if better is None else ("higher" if better else "lower"),
                spread={"stderr": float(stderr)} if isinstance(stderr, (int, float)) else None,
                details={k: v for k, v in details.items() if v is not None},
            ))
    return out


@hookimpl
def paqbench_register_metrics(register):
    register(LmEval)
