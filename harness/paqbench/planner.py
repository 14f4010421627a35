"""Turn a loaded suite into a plan: one run per pipeline and swept value.

Everything a run needs is resolved here (defaults filled in, parameters validated by
each plugin's schema, names checked against the registry), so a plan that exists can
run, and every run has a stable hash of its resolved configuration for resuming.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import typing
from dataclasses import asdict, dataclass, field
from typing import Any

import pydantic

from paqbench.data.check import dataset_problems
from paqbench.data.resolve import open_dataset
from paqbench.data.sources import DATA_DIR_ENV, hub_cached, hub_offline
from paqbench.engines import missing_exports
from paqbench.models.resolve import ModelResolutionError, resolve_source
from paqbench.registry import Registry, UnknownNameError
from paqbench.suite.errors import Problem, SuiteError
from paqbench.suite.loader import LoadedSuite
from paqbench.suite.schema import ModelConfig, SearchConfig

BASELINE = "baseline"


@dataclass
class StepSpec:
    """One method step of a run: the registered method and its validated parameters
    (``Params.model_dump(mode="json")``, so the step crosses a process boundary as is)."""

    method: str
    params: dict[str, Any]


@dataclass
class MetricSpec:
    """One metric of a run: the registered metric and its validated parameters."""

    name: str
    params: dict[str, Any]


@dataclass
class RunSpec:
    """One run, fully resolved and JSON-serialisable (it crosses a process boundary).

    ``steps`` and ``metrics`` are typed specs; given as dicts (``to_dict`` output, read
    back from a child process or results.jsonl) they are converted on construction."""

    name: str
    pipeline: str
    steps: list[StepSpec]
    metrics: list[MetricSpec]
    model: dict[str, Any]
    model_source: str
    calibration: dict[str, Any]
    seed: int
    limit: int | None = None
    sweep: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    search: str | None = None  # the threshold search this run is a probe of (not part of the hash)
    export: list[str] = field(default_factory=list)  # export targets (docs/export.md)
    export_check: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.steps = [s if isinstance(s, StepSpec) else StepSpec(**s) for s in self.steps]
        self.metrics = [m if isinstance(m, MetricSpec) else MetricSpec(**m) for m in self.metrics]

    @property
    def config_hash(self) -> str:
        """Hash of everything that changes the results (not the timeout)."""
        payload = {
            "steps": [asdict(s) for s in self.steps],
            "metrics": [asdict(m) for m in self.metrics],
            "model": self.model,
            "calibration": self.calibration if self.steps else None,
            "seed": self.seed,
            "limit": self.limit,
        }
        if self.export:  # only then: suites without export keep their hashes
            payload["export"] = {"targets": self.export, "check": self.export_check}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "config_hash": self.config_hash}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        data = {k: v for k, v in data.items() if k != "config_hash"}
        return cls(**data)


@dataclass
class SearchSpec:
    """A threshold search: bisection over one step parameter of a pipeline, each probe a run.

    ``template`` is the pipeline's run with the searched parameter at ``low``; a probe is
    the template with the parameter at another value (its own config hash, so probes are
    recorded and resumed like any run).
    """

    name: str
    pipeline: str
    template: RunSpec
    step: int
    param: str
    label: str
    low: float
    high: float
    tol: float
    integer: bool
    max_probes: int
    objective: dict[str, Any]

    def probe(self, value: float) -> RunSpec:
        value = int(value) if self.integer else float(value)
        steps = [StepSpec(s.method, dict(s.params)) for s in self.template.steps]
        steps[self.step].params[self.param] = value
        sweep = {**self.template.sweep, self.label: value}
        data = {**asdict(self.template), "steps": steps, "sweep": sweep, "search": self.name,
                "name": f"{self.pipeline}[{_sweep_label(sweep)}]"}
        return RunSpec(**data)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "template": self.template.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpec:
        return cls(**{**data, "template": RunSpec.from_dict(data["template"])})


@dataclass
class Plan:
    suite_name: str
    runs: list[RunSpec]
    resolved_suite: dict[str, Any]
    searches: list[SearchSpec] = field(default_factory=list)
    #: one line per dataset the runs read, saying whether it is offline or downloaded
    data: list[str] = field(default_factory=list)


@dataclass
class Overrides:
    """Command-line overrides of a suite."""

    model: str | None = None
    device: str | None = None
    limit: int | None = None
    only: tuple[str, ...] = ()


def build_plan(loaded: LoadedSuite, registry: Registry, overrides: Overrides | None = None) -> Plan:
    """Validate ``loaded`` against the plugins and expand it into runs."""
    overrides = overrides or Overrides()
    suite = loaded.suite
    problems: list[Problem] = []
    model, model_source = _resolve_model(loaded, registry, overrides, problems)
    _check_calibration_and_reporters(loaded, registry, problems)
    metrics = _resolve_metrics(loaded, registry, problems)
    pipelines = _selected_pipelines(loaded, overrides, problems)
    common = {
        "metrics": metrics,
        "model": model.hashed(),
        "model_source": model_source,
        "calibration": suite.calibration.model_dump(),
        "seed": suite.seed,
        "limit": overrides.limit,
        "timeout": suite.runner.timeout,
        "export": list(suite.export),
        "export_check": suite.export_check.model_dump(),
    }
    runs, searches = _expand_runs(loaded, registry, pipelines, common, problems)
    specs = [*runs, *(s.template for s in searches)]
    _check_engine_exports(loaded, metrics, specs, problems)
    if model.offload == "disk":
        _check_offload(loaded, registry, specs, problems)
    data: list[str] = []
    if not problems:
        calibrates = any(registry.method(step.method).needs_calibration for spec in specs for step in spec.steps)
        data = _data_origins(loaded, registry, metrics, calibrates, problems)
    if problems:
        raise SuiteError(problems)
    resolved = suite.model_dump()
    resolved["model"] = common["model"]
    return Plan(suite_name=suite.name, runs=runs, resolved_suite=resolved, searches=searches, data=data)


def _resolve_model(
    loaded: LoadedSuite, registry: Registry, overrides: Overrides, problems: list[Problem]
) -> tuple[ModelConfig, str]:
    """The suite's model with the command line's overrides, and the source that loads it."""
    model = loaded.suite.model.model_copy()
    if overrides.model:
        model = model.model_copy(update={"source": overrides.model, "kind": "auto", "gguf_file": None})
    if overrides.device:
        model = model.model_copy(update={"device": overrides.device})
    model_source = ""
    try:
        model_source = resolve_source(model, registry)
    except ModelResolutionError as exc:
        origin = "--model" if overrides.model else None
        problems.append(_at(loaded, ("model", "source"), str(exc), origin))
    return model, model_source


def _check_calibration_and_reporters(loaded: LoadedSuite, registry: Registry, problems: list[Problem]) -> None:
    calibration = loaded.suite.calibration
    for name, message in dataset_problems(registry, calibration.dataset, calibration.split, calibration.seqlen):
        problems.append(loaded.problem(("calibration", name), message))
    for index, reporter in enumerate(loaded.suite.reporters):
        _check_name(loaded, registry, "reporters", reporter, ("reporters", index), problems)


def _resolve_metrics(loaded: LoadedSuite, registry: Registry, problems: list[Problem]) -> list[MetricSpec]:
    """Each metric with its validated parameters; the datasets they name are checked."""
    metrics = []
    for index, metric in enumerate(loaded.suite.metrics):
        path = ("metrics", index)
        cls = _check_name(loaded, registry, "metrics", metric.name, (*path, "name"), problems)
        if cls is None:
            continue
        params = _validate_params(loaded, cls, metric.params, (*path, "params"), problems)
        if params is None:
            continue
        metrics.append(MetricSpec(metric.name, params))
        if isinstance(params.get("dataset"), str):
            for name, message in dataset_problems(registry, params["dataset"], params.get("split"),
                                                  params.get("seqlen")):
                problems.append(loaded.problem(_yaml_path(loaded, (*path, "params", name)), message))
    return metrics


def _selected_pipelines(loaded: LoadedSuite, overrides: Overrides, problems: list[Problem]) -> list[Any]:
    """The pipelines ``--only`` keeps (all without it); an unknown name is a problem."""
    suite = loaded.suite
    if not overrides.only:
        return list(suite.pipelines)
    known = [p.name for p in suite.pipelines]
    for name in sorted(set(overrides.only) - set(known) - {BASELINE}):
        problems.append(Problem(loaded.path, None, ("pipelines",),
                                str(UnknownNameError("pipelines", name, known)) + " (from --only)"))
    return [p for p in suite.pipelines if p.name in overrides.only]


def _expand_runs(
    loaded: LoadedSuite, registry: Registry, pipelines: list[Any], common: dict[str, Any], problems: list[Problem]
) -> tuple[list[RunSpec], list[SearchSpec]]:
    """The baseline, then every pipeline's runs (one per swept combination) and searches."""
    suite = loaded.suite
    runs = [RunSpec(name=BASELINE, pipeline=BASELINE, steps=[], **common)]
    searches: list[SearchSpec] = []
    metric_names = {m.name for m in suite.metrics}
    for pipeline in pipelines:
        index = suite.pipelines.index(pipeline)
        for steps, sweep, search in _expand_pipeline(loaded, registry, index, problems, metric_names):
            if not steps:
                continue  # an empty pipeline is the baseline, which is always there
            name = pipeline.name + (f"[{_sweep_label(sweep)}]" if sweep else "")
            spec = RunSpec(name=name, pipeline=pipeline.name, steps=steps, sweep=sweep, **common)
            if pipeline.export is not None:
                spec.export = list(pipeline.export)
            if search is None:
                runs.append(spec)
            else:
                searches.append(SearchSpec(name=name, pipeline=pipeline.name, template=spec, **search))
    return runs, searches


def _check_offload(loaded: LoadedSuite, registry: Registry, specs: list[RunSpec], problems: list[Problem]) -> None:
    """With the weights left on disk only methods that work block by block can run."""
    refused: set[str] = set()
    for spec in specs:
        for step in spec.steps:
            name = step.method
            if name in refused or registry.method(name).supports_offload:
                continue
            refused.add(name)
            able = sorted(n for n, e in registry.entries["methods"].items() if e.cls.supports_offload)
            problems.append(loaded.problem(("model", "offload"), (
                f"method {name!r} (pipeline {spec.pipeline!r}) needs the whole model in memory and cannot run "
                f"with model.offload: disk; block-by-block methods: {', '.join(able)}"
            )))


def _check_engine_exports(
    loaded: LoadedSuite, metrics: list[MetricSpec], runs: list[RunSpec], problems: list[Problem]
) -> None:
    """A metric with an engine ``backend`` times a run's export: every run must write it."""
    for index, metric in enumerate(metrics):
        backend = metric.params.get("backend")
        if not isinstance(backend, str):
            continue
        lacking = [spec.name for spec in runs if missing_exports(backend, spec.export)]
        if lacking:
            target = missing_exports(backend, [])
            names = ", ".join(lacking[:5]) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")
            problems.append(loaded.problem(
                _yaml_path(loaded, ("metrics", index, "params", "backend")),
                f"backend {backend} runs each run's {target} export, and these runs do not export it: {names}; "
                f"add `export: [{target}]` to the suite (or to those pipelines)"))


def _data_origins(
    loaded: LoadedSuite, registry: Registry, metrics: list[MetricSpec], calibrates: bool, problems: list[Problem]
) -> list[str]:
    """One line per dataset the runs read: offline (where) or downloaded from the hub.

    With HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, data that only the hub has (and that
    is not in the Hugging Face cache) is a problem now, not minutes of retries later.
    """
    needed: list[tuple[tuple[str | int, ...], str, Any]] = []
    calibration = loaded.suite.calibration
    if calibrates:
        origin = open_dataset(registry, calibration.dataset).origin(calibration.split)
        needed.append((("calibration", "dataset"), f"calibration {calibration.dataset}/{calibration.split}", origin))
    for index, metric in enumerate(metrics):
        params, path = metric.params, ("metrics", index, "params")
        if isinstance(params.get("dataset"), str):
            origin = open_dataset(registry, params["dataset"]).origin(params.get("split") or "test")
            label = f"metric {metric.name} {params['dataset']}/{params.get('split')}"
            needed.append(((*path, "dataset"), label, origin))
        cls = registry.metric(metric.name)
        for field_name, origin in cls.data_origins(cls.Params.model_validate(params)):
            needed.append(((*path, field_name), f"metric {metric.name}", origin))
    lines = []
    for path, label, origin in needed:
        if origin is None:
            lines.append(f"{label}: read by its plugin (paqbench cannot tell whether it downloads)")
        elif not origin.hub:
            lines.append(f"{label}: offline, {origin.where}")
        elif hub_cached(origin.where):
            lines.append(f"{label}: hub dataset {origin.where}, found in the local Hugging Face cache")
        elif hub_offline():
            where = os.environ.get(DATA_DIR_ENV)
            problems.append(loaded.problem(_yaml_path(loaded, path), (
                f"{label} is not available offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set, hub dataset "
                f"{origin.where} is not in the Hugging Face cache and no local copy was found "
                f"({DATA_DIR_ENV}={where or '(not set)'}); to work offline, {origin.offline}; or unset the "
                "offline variables to download it")))
        else:
            lines.append(f"{label}: downloads hub dataset {origin.where} on first use "
                         f"(to work offline, {origin.offline})")
    return lines


def _at(loaded: LoadedSuite, path: tuple[str | int, ...], message: str, origin: str | None = None) -> Problem:
    if origin:
        return Problem(loaded.path, None, path, f"{message} (from {origin})")
    return loaded.problem(path, message)


def _check_name(loaded, registry, kind, name, path, problems) -> type | None:
    try:
        return registry.get(kind, name)
    except UnknownNameError as exc:
        problems.append(loaded.problem(path, str(exc)))
        return None


def _validate_params(
    loaded: LoadedSuite, cls: type, params: dict[str, Any], path: tuple[str | int, ...], problems: list[Problem]
) -> dict[str, Any] | None:
    try:
        validated = cls.Params.model_validate(params)
    except pydantic.ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            field_path = (*path, *loc)
            if err["type"] == "extra_forbidden":
                allowed = ", ".join(cls.Params.model_fields) or "none"
                message = f"{cls.name} has no parameter {loc[-1]!r} (parameters: {allowed})"
            elif err["type"] == "missing":
                message = f"{cls.name} needs parameter {loc[-1]!r}"
            else:
                found = _dig(params, loc)
                msg = err["msg"].removeprefix("Value error, ")
                msg = "expected" + msg[len("Input should be"):] if msg.startswith("Input should be") else msg
                message = f"{msg}; found {found!r}"
            problems.append(loaded.problem(_yaml_path(loaded, field_path), message))
        return None
    return validated.model_dump(mode="json")


def _dig(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _yaml_path(loaded: LoadedSuite, path: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Map a schema path onto the file when a step or metric used the shorthand form
    (``- magnitude: {sparsity: 0.5}``) so the reported line is right."""
    for container, key in (("steps", "method"), ("metrics", "name")):
        for i in range(len(path) - 2):
            if path[i] == container and i + 2 < len(path) and path[i + 2] == "params":
                item = _dig(loaded.raw, path[: i + 2])
                if isinstance(item, dict) and key not in item and len(item) == 1:
                    (short,) = item
                    return (*path[: i + 2], short, *path[i + 3:])
    return path


def _is_list_field(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    return any(_is_list_field(arg) for arg in typing.get_args(annotation)) if origin else False


def _is_search(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"search"}


def _is_int_field(annotation: Any) -> bool:
    if annotation is int:
        return True
    return typing.get_origin(annotation) is not None and int in typing.get_args(annotation) \
        and float not in typing.get_args(annotation)


def _search_axis(
    loaded: LoadedSuite, index: int, classes: list[Any], problems: list[Problem], metric_names: set[str]
) -> dict[str, Any] | None:
    """The pipeline's ``{search: ...}`` parameter and objective, checked; None if it has none."""
    pipeline = loaded.suite.pipelines[index]
    found = [(i, key, value) for i, step in enumerate(pipeline.steps) for key, value in step.params.items()
             if _is_search(value)]
    objective_path = ("pipelines", index, "objective")
    if not found:
        if pipeline.objective is not None:
            problems.append(loaded.problem(objective_path, "an objective needs a step parameter written as "
                                           "{search: {low: ..., high: ...}} to search over"))
        return None
    bad = False
    if len(found) > 1:
        step_index, key, _ = found[1]
        path = ("pipelines", index, "steps", step_index, "params", key)
        problems.append(loaded.problem(_yaml_path(loaded, path), "only one parameter per pipeline can be searched"))
        bad = True
    step_index, key, value = found[0]
    path = ("pipelines", index, "steps", step_index, "params", key)
    if pipeline.objective is None:
        problems.append(loaded.problem(("pipelines", index), f"{pipeline.steps[step_index].method}.{key} is "
                                       "searched, so the pipeline needs an objective: {metric: metric/name, "
                                       "max: ...} or {..., min: ...}"))
        bad = True
    else:
        metric = pipeline.objective.metric.split("/", 1)[0]
        if metric not in metric_names:
            problems.append(loaded.problem((*objective_path, "metric"), f"metric {metric!r} is not measured by "
                                           f"this suite (metrics: {', '.join(sorted(metric_names)) or 'none'})"))
            bad = True
    try:
        config = SearchConfig.model_validate(value["search"])
    except pydantic.ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown field {loc[-1]!r} (allowed: {', '.join(SearchConfig.model_fields)})"
            elif err["type"] == "missing":
                msg = f"search needs {loc[-1]!r}"
            problems.append(loaded.problem(_yaml_path(loaded, (*path, "search", *loc)), msg))
        return None
    except TypeError:
        problems.append(loaded.problem(_yaml_path(loaded, (*path, "search")), "expected {low: ..., high: ...}"))
        return None
    cls = classes[step_index]
    model_field = cls.Params.model_fields.get(key)
    if model_field is None:
        return None  # reported by the parameter validation
    integer = _is_int_field(model_field.annotation)
    if integer and not (config.low.is_integer() and config.high.is_integer()):
        problems.append(loaded.problem(_yaml_path(loaded, (*path, "search")),
                                       f"{cls.name}.{key} is an integer; low and high must be integers"))
        bad = True
    if bad:
        return None
    tol = 1.0 if integer else (config.tol if config.tol is not None else (config.high - config.low) / 16)
    objective = pipeline.objective.model_dump()
    return {
        "step": step_index, "param": key, "low": config.low, "high": config.high, "tol": tol,
        "integer": integer, "max_probes": config.max_probes, "objective": objective,
    }


Axis = tuple[int, str, list[Any]]  # (step index, parameter, swept values)


def _expand_pipeline(
    loaded: LoadedSuite, registry: Registry, index: int, problems: list[Problem], metric_names: set[str]
) -> list[tuple[list[StepSpec], dict[str, Any], dict[str, Any] | None]]:
    """All (steps, swept values, threshold search or None) combinations of one pipeline."""
    pipeline = loaded.suite.pipelines[index]
    classes, axes = _step_classes_and_axes(loaded, registry, index, problems)
    if any(cls is None for cls in classes):
        return []
    search = _search_axis(loaded, index, classes, problems, metric_names)
    has_search = any(_is_search(v) for step in pipeline.steps for v in step.params.values())
    if has_search and search is None:
        return []
    counts = _axis_counts(axes, search)
    if search is not None:
        step_name = pipeline.steps[search["step"]].method
        search["label"] = search["param"] if counts[search["param"]] == 1 else f"{step_name}.{search['param']}"
    combos = []
    for values in itertools.product(*(axis[2] for axis in axes)):
        chosen = {(axis[0], axis[1]): value for axis, value in zip(axes, values, strict=True)}
        combo = _combination(loaded, index, classes, chosen, counts, search, problems)
        if combo is None:
            return []  # one bad combination is enough to report
        steps, sweep = combo
        combos.append((steps, sweep, dict(search) if search is not None else None))
    return combos


def _step_classes_and_axes(
    loaded: LoadedSuite, registry: Registry, index: int, problems: list[Problem]
) -> tuple[list[Any], list[Axis]]:
    """Each step's method class (None if unknown) and the parameters the pipeline sweeps."""
    pipeline = loaded.suite.pipelines[index]
    axes: list[Axis] = []
    classes = []
    for step_index, step in enumerate(pipeline.steps):
        path = ("pipelines", index, "steps", step_index)
        cls = _check_name(loaded, registry, "methods", step.method, (*path, "method"), problems)
        classes.append(cls)
        if cls is None:
            continue
        for key, value in step.params.items():
            if not _is_sweep(cls, key, value):
                continue
            if not value:
                problems.append(loaded.problem(_yaml_path(loaded, (*path, "params", key)),
                                               "an empty list sweeps over nothing"))
                continue
            axes.append((step_index, key, value))
    return classes, axes


def _is_sweep(cls: Any, key: str, value: Any) -> bool:
    """A list is a sweep unless the parameter itself takes a list (then a list of lists is)."""
    model_field = cls.Params.model_fields.get(key)
    if model_field is None or not isinstance(value, list):
        return False
    return not _is_list_field(model_field.annotation) or bool(value and all(isinstance(v, list) for v in value))


def _axis_counts(axes: list[Axis], search: dict[str, Any] | None) -> dict[str, int]:
    """How many swept (or searched) parameters share each name: those get a ``method.`` prefix."""
    counts: dict[str, int] = {}
    for _, key, _ in axes:
        counts[key] = counts.get(key, 0) + 1
    if search is not None:
        counts[search["param"]] = counts.get(search["param"], 0) + 1
    return counts


def _combination(
    loaded: LoadedSuite, index: int, classes: list[Any], chosen: dict[tuple[int, str], Any],
    counts: dict[str, int], search: dict[str, Any] | None, problems: list[Problem],
) -> tuple[list[StepSpec], dict[str, Any]] | None:
    """The validated steps and swept values of one combination; None after a problem."""
    pipeline = loaded.suite.pipelines[index]
    steps = []
    sweep: dict[str, Any] = {}
    for step_index, (step, cls) in enumerate(zip(pipeline.steps, classes, strict=True)):
        params = dict(step.params)
        for (swept_step, key), value in chosen.items():
            if swept_step == step_index:
                params[key] = value
                sweep[key if counts[key] == 1 else f"{step.method}.{key}"] = value
        path = ("pipelines", index, "steps", step_index, "params")
        if search is not None and search["step"] == step_index:
            if not _search_ends_valid(loaded, cls, params, path, search, problems):
                return None
            params[search["param"]] = (int if search["integer"] else float)(search["low"])
        validated = _validate_params(loaded, cls, params, path, problems)
        if validated is None:
            return None
        steps.append(StepSpec(step.method, validated))
    return steps, sweep


def _search_ends_valid(
    loaded: LoadedSuite, cls: Any, params: dict[str, Any], path: tuple[str | int, ...],
    search: dict[str, Any], problems: list[Problem],
) -> bool:
    """Both ends of the searched range must be valid values of the parameter."""
    cast = int if search["integer"] else float
    for end in ("high", "low"):
        found: list[Problem] = []
        if _validate_params(loaded, cls, {**params, search["param"]: cast(search[end])}, path, found) is None:
            problems += [Problem(p.file, p.line, p.path, f"{p.message} (the search's {end} end)") for p in found]
            return False
    return True


def _sweep_label(sweep: dict[str, Any]) -> str:
    return ",".join(f"{key}={_short_value(value)}" for key, value in sweep.items())


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "+".join(_short_value(v) for v in value)
    return str(value)
