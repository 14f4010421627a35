"""Regression thresholds: which metrics may get how much worse, and how keys pick metrics.

A key names a metric (``perplexity``: every measurement of that metric), a measurement
(``latency/tpot``, ``race/high/acc``) or a glob over ``metric/name`` (``latency/*_s``). A
limit is relative (``"2%"``: the value may get 2% worse) or absolute (``0.01``: worse by at
most 0.01 in the metric's own unit). The most specific key wins: an exact measurement key
before a metric key before a glob.

A recovery floor (``min_recovery: {perplexity: 95}``, ``--min-recovery perplexity=95``)
gates NEW alone: a quality measurement whose recovery (its value as a percentage of NEW's
own dense baseline run, direction-aware, as the report's recovery column) is below the
floor fails, whatever BASE measured (llm-compressor's CI gates on >= 95%).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ThresholdError(ValueError):
    """A threshold option or file that cannot be read; the message names it."""


@dataclass(frozen=True)
class Threshold:
    """How much worse the measurements matching ``key`` may get."""

    key: str
    limit: float
    kind: Literal["relative", "absolute"]

    @property
    def gated(self) -> bool:
        """False for ``none``: shown, never failing (a narrower key exempting part of a broader one)."""
        return not math.isinf(self.limit)

    def describe(self) -> str:
        if not self.gated:
            return "none"
        return f"{self.limit * 100:g}%" if self.kind == "relative" else f"{self.limit:g}"


def parse_limit(key: str, text: Any) -> Threshold:
    """``"2%"`` -> relative 0.02; ``0.01`` or ``"0.01"`` -> absolute 0.01; ``none`` -> not gated."""
    raw = str(text).strip()
    if text is None or raw.lower() in ("none", "null", "off"):
        return Threshold(key=key, limit=math.inf, kind="absolute")
    try:
        if raw.endswith("%"):
            value, kind = float(raw[:-1]) / 100, "relative"
        else:
            value, kind = float(raw), "absolute"
    except ValueError:
        raise ThresholdError(
            f"threshold for {key!r}: expected a number or a percentage like 2%, found {text!r}"
        ) from None
    if value < 0:
        raise ThresholdError(f"threshold for {key!r} must not be negative, found {text!r}")
    return Threshold(key=key, limit=value, kind=kind)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RecoveryFloor:
    """The least recovery (percent of the dense baseline) the measurements matching ``key`` must keep in NEW."""

    key: str
    percent: float

    def describe(self) -> str:
        return f">= {self.percent:g}%"


def parse_floor(key: str, text: Any) -> RecoveryFloor:
    """``95`` or ``"95%"`` -> a floor of 95 percent."""
    raw = str(text).strip().removesuffix("%")
    try:
        value = float(raw)
    except ValueError:
        raise ThresholdError(
            f"min_recovery for {key!r}: expected a percentage like 95, found {text!r}"
        ) from None
    if not 0 <= value <= 1000:
        raise ThresholdError(f"min_recovery for {key!r}: expected a percentage between 0 and 1000, found {text!r}")
    return RecoveryFloor(key=key, percent=value)


def parse_floor_option(text: str) -> RecoveryFloor:
    """One ``--min-recovery KEY=PERCENT`` option."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ThresholdError(f"--min-recovery expects KEY=PERCENT (e.g. perplexity=95), found {text!r}")
    return parse_floor(key.strip(), value)


def parse_option(text: str) -> Threshold:
    """One ``--max-regression KEY=LIMIT`` option."""
    key, sep, limit = text.partition("=")
    if not sep or not key.strip() or not limit.strip():
        raise ThresholdError(
            f"--max-regression expects KEY=LIMIT (e.g. perplexity=2% or race/acc=0.01), found {text!r}"
        )
    return parse_limit(key.strip(), limit)


def key_matches(key: str, metric_key: str) -> bool:
    metric = metric_key.split("/", 1)[0]
    if any(ch in key for ch in "*?["):
        return fnmatch.fnmatchcase(metric_key, key)
    return key in (metric, metric_key) or metric_key.startswith(key + "/")


def _specificity(key: str) -> tuple[int, int]:
    glob = any(ch in key for ch in "*?[")
    return (0 if glob else 1, len(key))


def best_match(keys: list[str], metric_key: str) -> str | None:
    """The most specific of ``keys`` that matches ``metric_key`` (or None)."""
    matching = [k for k in keys if key_matches(k, metric_key)]
    return max(matching, key=_specificity) if matching else None


@dataclass(frozen=True)
class CompareOptions:
    """Everything that decides a verdict, from the command line or a thresholds file."""

    thresholds: tuple[Threshold, ...] = ()
    baseline_relative: tuple[str, ...] = ()  # keys compared as ratios to each report's dense run
    noise_sigmas: float = 1.0  # width of the noise band, in combined spreads
    stderr_is_noise: bool = False  # also widen deterministic evaluations (perplexity, accuracy) by their stderr
    fail_on_missing: bool = False  # a BASE run or gated measurement absent from NEW fails the comparison
    strict_match: bool = False  # pair runs only by pipeline and parameters, never by run name
    ignore: tuple[str, ...] = field(default_factory=tuple)  # keys left out of the table
    min_recovery: tuple[RecoveryFloor, ...] = ()  # recovery floors NEW's quality measurements must keep

    def threshold_for(self, metric_key: str) -> Threshold | None:
        by_key = {t.key: t for t in self.thresholds}
        key = best_match(list(by_key), metric_key)
        return by_key[key] if key is not None else None

    def recovery_floor_for(self, metric_key: str) -> RecoveryFloor | None:
        by_key = {f.key: f for f in self.min_recovery}
        key = best_match(list(by_key), metric_key)
        return by_key[key] if key is not None else None

    def is_baseline_relative(self, metric_key: str) -> bool:
        return best_match(list(self.baseline_relative), metric_key) is not None

    def is_ignored(self, metric_key: str) -> bool:
        return best_match(list(self.ignore), metric_key) is not None


_FILE_KEYS = {"max_regression", "baseline_relative", "noise_sigmas", "stderr_is_noise", "fail_on_missing",
              "strict_match", "ignore", "min_recovery"}


def _read_mapping(path: Path) -> dict[str, Any]:
    """The file's YAML mapping with only known keys (a bare mapping is ``max_regression``)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ThresholdError(f"{path}: cannot read thresholds file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ThresholdError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ThresholdError(
            f"{path}: expected a mapping (max_regression: {{metric: limit}}), found {type(data).__name__}"
        )
    if not set(data) & _FILE_KEYS:
        data = {"max_regression": data}
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise ThresholdError(f"{path}: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(_FILE_KEYS))})")
    return data


def _limits(path: Path, limits: Any) -> tuple[Threshold, ...]:
    if not isinstance(limits, dict):
        raise ThresholdError(f"{path}: max_regression: expected a mapping of metric keys to limits")
    try:
        return tuple(parse_limit(str(k), v) for k, v in limits.items())
    except ThresholdError as exc:
        raise ThresholdError(f"{path}: max_regression: {exc}") from None


def _floors(path: Path, floors: Any) -> tuple[RecoveryFloor, ...]:
    if not isinstance(floors, dict):
        raise ThresholdError(f"{path}: min_recovery: expected a mapping of metric keys to percentages")
    try:
        return tuple(parse_floor(str(k), v) for k, v in floors.items())
    except ThresholdError as exc:
        raise ThresholdError(f"{path}: min_recovery: {exc}") from None


def _keys(path: Path, name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ThresholdError(f"{path}: {name}: expected a list of metric keys")
    return tuple(value)


def _sigmas(path: Path, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ThresholdError(f"{path}: noise_sigmas: expected a non-negative number, found {value!r}")
    return float(value)


def _flag(path: Path, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ThresholdError(f"{path}: {name}: expected true or false, found {value!r}")
    return value


def load_thresholds_file(path: str | Path) -> dict[str, Any]:
    """Read a thresholds YAML file into keyword arguments for :class:`CompareOptions`.

    ``max_regression`` maps keys to limits, ``min_recovery`` keys to percentages; the
    other keys mirror the options. A file that
    is only a mapping of keys to limits is read as ``max_regression``.
    """
    path = Path(path)
    data = _read_mapping(path)
    if not data:
        return {}
    out: dict[str, Any] = {"thresholds": _limits(path, data.get("max_regression") or {})}
    if data.get("min_recovery") is not None:
        out["min_recovery"] = _floors(path, data["min_recovery"])
    for name in ("baseline_relative", "ignore"):
        if data.get(name) is not None:
            out[name] = _keys(path, name, data[name])
    if "noise_sigmas" in data:
        out["noise_sigmas"] = _sigmas(path, data["noise_sigmas"])
    for name in ("stderr_is_noise", "fail_on_missing", "strict_match"):
        if name in data:
            out[name] = _flag(path, name, data[name])
    return out
