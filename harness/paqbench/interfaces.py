"""Base classes for everything a plugin can provide.

A plugin subclasses one of these, sets the class attributes, and registers the class
through the matching hook in :mod:`paqbench.hookspecs`. Parameters are pydantic models
so that a suite is validated (types, ranges, unknown keys) before anything runs, and so
that ``paqbench list methods --verbose`` can show every parameter with its default.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

    from paqbench.context import RunContext
    from paqbench.report.model import Report

Family = Literal["prune", "quantize", "distill", "other"]
Better = Literal["lower", "higher"]

class Params(BaseModel):
    """Base for parameter schemas: unknown keys are errors, defaults are documented."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Params):
    """For plugins that take no parameters."""


class _Described:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = NoParams

    @classmethod
    def summary(cls) -> str:
        """First line of the description, for listings."""
        text = cls.description or (cls.__doc__ or "")
        return text.strip().splitlines()[0] if text.strip() else ""


class Method(_Described, ABC):
    """A compression step: changes the model in place.

    ``accepts`` lists the layer kinds this method can handle; a method that meets any
    other kind must raise :class:`paqbench.layers.UnsupportedLayerError` naming the
    layer, never skip it silently.
    """

    family: ClassVar[Family] = "other"
    accepts: ClassVar[frozenset[str]] = frozenset({"dense"})
    #: Whether ``ctx.calibration_batches()`` is used; shown in listings.
    needs_calibration: ClassVar[bool] = False
    #: Whether it runs on a model whose weights are left on disk (``model.offload: disk``):
    #: it must reach the weights only through :mod:`paqbench.blockwise.driver`.
    supports_offload: ClassVar[bool] = False

    @abstractmethod
    def apply(self, model: torch.nn.Module, params: Any, ctx: RunContext) -> dict[str, Any] | None:
        """Compress ``model`` in place. May return a JSON-able dict of facts worth
        recording in the report (e.g. achieved sparsity)."""


@dataclass(frozen=True)
class DataOrigin:
    """Where data would be read from, known without reading it, so ``paqbench validate``
    can say what a run downloads and refuse what an offline run cannot get.

    ``where`` is a local path, ``embedded``, or (``hub``) the hub dataset id; ``offline``
    says what local copy would be read instead of the hub (for the error message).
    """

    where: str
    hub: bool = False
    offline: str = ""


class Metric(_Described, ABC):
    """Measures a model and yields :class:`Measurement` objects.

    A ``dataset`` parameter (with ``split`` and ``seqlen``) is checked at validation like
    ``calibration.dataset``; other data a metric reads is declared by :meth:`data_origins`.
    """

    #: Whether it measures a model whose weights are left on disk (``model.offload: disk``);
    #: otherwise the runner records it as unavailable for such a model.
    supports_offload: ClassVar[bool] = False

    @abstractmethod
    def measure(self, model: torch.nn.Module, params: Any, ctx: RunContext) -> Iterable[Measurement]:
        """Yield measurements. Raise :class:`Unavailable` (or yield unavailable
        measurements) when this environment cannot take them."""

    @classmethod
    def data_origins(cls, params: Any) -> list[tuple[str, DataOrigin]]:
        """``(parameter, origin)`` of data read other than through a ``dataset`` parameter."""
        return []

    @classmethod
    def make(
        cls,
        name: str,
        value: float | None,
        unit: str,
        better: Better | None,
        **extra: Any,
    ) -> Measurement:
        """Build a measurement attributed to this metric."""
        return Measurement(metric=cls.name, name=name, value=value, unit=unit, better=better, **extra)


class ModelSource(_Described, ABC):
    """Where a model and its tokenizer come from.

    Named sources (``generic = False``) are chosen by their exact name in a suite's
    ``model.source``; generic ones (``hub``, ``local``, ``gguf``) by ``model.kind`` or by
    what the source string looks like.
    """

    generic: ClassVar[bool] = False

    @abstractmethod
    def load(self, config: Any, ctx: RunContext) -> tuple[torch.nn.Module, Any]:
        """Return ``(model, tokenizer)`` with the model on ``ctx.device`` in ``ctx.dtype``."""


@dataclass
class TextCorpus:
    """Text of one dataset split, joined as the papers' protocol joins it.

    ``documents`` is set for corpora that calibration samples document by document
    (C4); ``text`` is always the evaluation text.
    """

    dataset: str
    split: str
    text: str
    origin: str
    documents: list[str] | None = None

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]


class Dataset(_Described, ABC):
    """A text dataset with named splits, from the hub or a local data directory."""

    splits: ClassVar[tuple[str, ...]] = ("test",)

    @abstractmethod
    def load(self, split: str, ctx: RunContext) -> TextCorpus:
        """Return the split's text."""

    def origin(self, split: str) -> DataOrigin | None:
        """Where ``load(split)`` would read from (without reading); None when unknown."""
        return None


class Reporter(_Described, ABC):
    """Writes report files into the output directory."""

    @abstractmethod
    def write(self, report: Report, directory: Path) -> list[Path]:
        """Write files and return their paths."""


class Unavailable(Exception):
    """Raised by a metric (or source) that cannot run here; the reason is reported,
    never a zero."""


@dataclass
class Measurement:
    """One number with its unit and direction.

    ``value`` is ``None`` exactly when ``unavailable`` holds the reason. ``spread``
    holds summary statistics (stderr, p10, p90, ...), ``samples`` raw values.
    """

    metric: str
    name: str
    value: float | None
    unit: str
    better: Better | None
    spread: dict[str, float] | None = None
    samples: list[float] | None = None
    unavailable: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.value is not None:
            self.value = float(self.value)
            if math.isnan(self.value):
                raise ValueError(f"measurement {self.metric}/{self.name} is NaN")

    @property
    def key(self) -> str:
        return f"{self.metric}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        optional = ("spread", "samples", "unavailable", "details")
        return {k: v for k, v in data.items() if k not in optional or v not in (None, {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        return cls(**data)

    @classmethod
    def unavailable_because(cls, metric: str, name: str, unit: str, reason: str) -> Measurement:
        return cls(metric=metric, name=name, value=None, unit=unit, better=None, unavailable=reason)
