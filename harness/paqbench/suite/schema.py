"""The suite file schema (pydantic): what a user may write, with defaults.

Unknown keys are errors everywhere, like lm-eval task configs. Method and metric
parameters are checked later, against each plugin's own ``Params`` schema, once the
sweeps are expanded (see :mod:`paqbench.planner`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DType = Literal["auto", "float32", "float16", "bfloat16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    """Which model to compress and how to load it."""

    source: str = Field(
        description="embedded name (smollm2-135m, tiny-random-llama), hub id, local "
        "directory, or path to a .gguf file"
    )
    kind: Literal["auto", "hub", "local", "gguf", "named"] = Field(
        "auto", description="how to read `source`; auto guesses from its form"
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside a hub repo or directory")
    revision: str | None = None
    tokenizer: str | None = Field(None, description="load the tokenizer from here instead")
    dtype: DType = Field("auto", description="auto: float32 on CPU, bfloat16 on CUDA")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps")
    device_map: str | dict[str, Any] | None = None
    offload: Literal["none", "disk"] = Field(
        "none", description="disk: leave the weights in the model's safetensors files and onload one decoder "
        "block at a time (models larger than memory; docs/large-models.md)"
    )
    offload_folder: str | None = Field(
        None, description="with offload: disk, where weights a method changes are written (default: the run's "
        "scratch folder, removed after the run)"
    )
    trust_remote_code: bool = False
    options: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for from_pretrained"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _offload_alone(self) -> ModelConfig:
        if self.offload == "disk" and self.device_map is not None:
            raise ValueError(
                "model.offload: disk loads one decoder block at a time and cannot be combined with "
                "model.device_map; remove one of them"
            )
        if self.offload_folder is not None and self.offload != "disk":
            raise ValueError("model.offload_folder needs model.offload: disk")
        return self

    def hashed(self) -> dict[str, Any]:
        """The fields that decide a run's results: the offload fields only when offloading,
        so suites that never offload keep their configuration hashes."""
        data = self.model_dump()
        if self.offload == "none":
            data.pop("offload")
            data.pop("offload_folder")
        return data

    @field_validator("options")
    @classmethod
    def _no_code_switch_in_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        # Running a model's own Python must be asked for in exactly one visible place.
        if "trust_remote_code" in options:
            raise ValueError(
                "model.options.trust_remote_code is not allowed: only model.trust_remote_code decides "
                "whether a model's own Python code runs; remove it from options and set model.trust_remote_code"
            )
        return options


class CalibrationConfig(_Strict):
    """Calibration data, drawn as in the GPTQ / SparseGPT / Wanda papers."""

    dataset: str = "embedded"
    split: str = "train"
    n_samples: int = Field(128, gt=0)
    seqlen: int = Field(2048, gt=1)
    seed: int = 0


class MetricConfig(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _shorthand(value, key="name")


class StepConfig(_Strict):
    method: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _shorthand(value, key="method")


class SearchConfig(_Strict):
    """A step parameter written as ``{search: {low, high, tol}}``: bisection over it."""

    low: float = Field(description="smallest value searched")
    high: float = Field(description="largest value searched")
    tol: float | None = Field(
        None, gt=0, description="stop when the bracket is this narrow; default (high - low) / 16; 1 for integers"
    )
    max_probes: int = Field(12, ge=2, description="never run more probes than this (low and high included)")

    @model_validator(mode="after")
    def _ordered(self) -> SearchConfig:
        if not self.low < self.high:
            raise ValueError(f"low must be less than high (low={self.low:g}, high={self.high:g})")
        return self


class ObjectiveConfig(_Strict):
    """The bound a threshold search keeps: ``metric`` (``metric/name`` as in the report)
    at most ``max``, at least ``min``, or keeping at least ``min_recovery`` percent of the
    baseline run's value (direction-aware, as the report's recovery column)."""

    metric: str = Field(description="measurement key, metric/name, e.g. perplexity/embedded or race/high/acc")
    max: float | None = Field(None, description="the measurement must stay at or below this")
    min: float | None = Field(None, description="the measurement must stay at or above this")
    min_recovery: float | None = Field(
        None, gt=0, description="the measurement must keep at least this percentage of the baseline run's value "
        "(base/value for lower-is-better metrics such as perplexity, value/base for accuracy)"
    )
    find: Literal["largest", "smallest"] = Field(
        "largest", description="largest value that keeps the bound (damage grows with the parameter), or smallest"
    )

    @model_validator(mode="after")
    def _one_bound(self) -> ObjectiveConfig:
        if sum(bound is not None for bound in (self.max, self.min, self.min_recovery)) != 1:
            raise ValueError("give exactly one of max, min or min_recovery")
        return self


ExportTarget = Literal["compressed-tensors", "gguf"]


class PipelineConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")
    description: str = ""
    steps: list[StepConfig] = Field(default_factory=list)
    objective: ObjectiveConfig | None = Field(
        None, description="for a threshold search: the bound the searched parameter must keep"
    )
    export: list[ExportTarget] | None = Field(
        None, description="export targets for this pipeline's runs (docs/export.md); default: the suite's"
    )


class ExportCheckConfig(_Strict):
    """The token windows on which an exported model is reloaded in its engine and compared
    with the in-memory model (cut as the perplexity metric cuts them)."""

    enabled: bool = Field(True, description="reload each artifact in its engine and compare logits")
    dataset: str = "embedded"
    split: str = "test"
    seqlen: int = Field(256, gt=1)
    windows: int = Field(2, gt=0)


class RayResources(_Strict):
    """What each run asks of a Ray node (Ray's own task resources; docs/running.md)."""

    num_cpus: float = Field(1, ge=0, description="CPU cores reserved per run (Ray also sets OMP_NUM_THREADS to it)")
    num_gpus: float = Field(0, ge=0, description="GPUs per run; 1 gives each run a GPU of its own")
    memory: int | None = Field(None, gt=0, description="bytes of memory reserved per run (scheduling only)")


class RunnerConfig(_Strict):
    isolation: Literal["process", "in-process"] = "process"
    timeout: float | None = Field(None, gt=0, description="seconds per run; none = no limit")
    executor: Literal["process", "ray"] = Field(
        "process", description="process: runs one after another here; ray: runs as Ray tasks (docs/running.md)"
    )
    address: str | None = Field(
        None, description="ray only: a cluster to join (auto, host:port, ray://host:port); none starts a local one"
    )
    resources: RayResources | None = Field(None, description="ray only: resources per run")
    max_concurrent: int | None = Field(None, ge=1, description="ray only: at most this many runs at once")

    @model_validator(mode="after")
    def _ray_keys_need_ray(self) -> RunnerConfig:
        if self.executor != "ray":
            given = [k for k in ("address", "resources", "max_concurrent") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} applies only with executor: ray (executor is {self.executor!r})")
        elif self.isolation == "in-process":
            raise ValueError("isolation: in-process cannot be combined with executor: ray "
                             "(every Ray run is a worker process of its own)")
        return self


class Suite(_Strict):
    """A whole suite file."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    description: str = ""
    model: ModelConfig
    seed: int = 0
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    metrics: list[MetricConfig] = Field(default_factory=list)
    pipelines: list[PipelineConfig] = Field(default_factory=list)
    reporters: list[str] = Field(default_factory=lambda: ["json", "markdown", "html"])
    output: str | None = Field(None, description="output directory; default reports/<name>")
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    export: list[ExportTarget] = Field(
        default_factory=list, description="write every run to these targets after its steps (docs/export.md)"
    )
    export_check: ExportCheckConfig = Field(default_factory=ExportCheckConfig)

    @field_validator("pipelines")
    @classmethod
    def _unique_pipeline_names(cls, pipelines: list[PipelineConfig]) -> list[PipelineConfig]:
        seen: set[str] = set()
        for pipeline in pipelines:
            if pipeline.name in seen:
                raise ValueError(f"pipeline name {pipeline.name!r} is used twice")
            if pipeline.name == "baseline" and pipeline.steps:
                raise ValueError("'baseline' is reserved for the uncompressed model")
            seen.add(pipeline.name)
        return pipelines


def _shorthand(value: Any, key: str) -> Any:
    """Accept ``magnitude`` and ``{magnitude: {sparsity: 0.5}}`` as well as the long form
    ``{method: magnitude, params: {sparsity: 0.5}}``."""
    if isinstance(value, str):
        return {key: value}
    if isinstance(value, dict) and len(value) == 1 and key not in value:
        ((name, params),) = value.items()
        if isinstance(name, str) and (params is None or isinstance(params, dict)):
            return {key: name, "params": params or {}}
    return value
