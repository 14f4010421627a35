"""Export one run's model to each requested target and check it in its engine.

Never raises for a target: a missing package, an architecture a target cannot hold or a
non-writable folder gives an ``unavailable`` record (with the install command where one
helps), any other error a ``failed`` one, and the run's other targets and metrics go on.
Measurements are named ``export/<target>/<quantity>``.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paqbench.export.capability import TARGETS
from paqbench.export.record import ExportRecord, unavailable_record
from paqbench.export.roundtrip import llamacpp, transformers_engine
from paqbench.export.roundtrip.compare import Agreement, Tolerance, compare, model_logits
from paqbench.interfaces import Measurement

logger = logging.getLogger("paqbench")

METRIC = "export"
CT_INSTALL = "pip install 'compressed-tensors>=0.20'"

#: Default tolerance per target. llama.cpp's CPU matmuls round the activations to 8 bits
#: (Q8_0 / Q8_1) for quantized weights, so its logits differ from a float engine's even on
#: identical weights: the embedded SmolLM2 GGUF itself, run in llama.cpp against its own
#: weights dequantized in transformers, agrees on top-1 at about 97.5% of positions
#: (docs/export.md), and exports of RTN / GPTQ W4 g32 at 97-98%. Every flip measured there
#: is a near-tie (paqbench's top-1 leads by < 0.31 logit); at the positions where it leads
#: by >= 0.5 logit, agreement is 100%. So llama.cpp must agree at >= 99% of those decisive
#: positions, and at >= 95% of all. The same rounding moves perplexity: llama.cpp's own
#: Q4_0 file, read back byte for byte into paqbench, computes 0.65% more in llama.cpp than
#: its exact dequantization in paqbench on 8 x 256 WikiText-2 windows (docs/benchmarks.md,
#: deploy), so llama.cpp's perplexity bound is 1%. transformers dequantizes to float and
#: agrees almost exactly: 0.5% and >= 99% of all positions.
TOLERANCES = {
    "compressed-tensors": Tolerance(ppl_rel=0.005, top1=0.99),
    "gguf": Tolerance(ppl_rel=0.01, top1=0.95, top1_decisive=0.99),
}


class TargetUnavailable(RuntimeError):
    """This target cannot be written or checked here; the message says why."""


@dataclass
class ExportOutcome:
    """What :func:`export_model` produced: one record per target and the measurements."""

    records: list[ExportRecord] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)


def export_model(
    model: nn.Module, tokenizer: Any, targets: list[str], directory: Path,
    ids: torch.Tensor | None = None, source_gguf: Path | None = None, tolerance: Tolerance | None = None,
) -> ExportOutcome:
    """Write ``model`` to every target under ``directory/<target>/`` and, when ``ids``
    (``[windows, seqlen]`` token ids) are given, compare the engine's logits with the
    model's on them (``tolerance``, else the target's entry in :data:`TOLERANCES`)."""
    outcome = ExportOutcome()
    reference = model_logits(model, ids) if ids is not None else None
    for target in targets:
        record = _export_one(model, tokenizer, target, directory, source_gguf)
        outcome.records.append(record)
        outcome.measurements.extend(_record_measurements(record))
        if record.status == "ok" and reference is not None and ids is not None:
            outcome.measurements.extend(_check(record, reference, ids, tolerance or TOLERANCES[target]))
    return outcome


def _export_one(
    model: nn.Module, tokenizer: Any, target: str, directory: Path, source_gguf: Path | None
) -> ExportRecord:
    if target not in TARGETS:
        return unavailable_record(target, f"unknown export target {target!r}; known: {', '.join(TARGETS)}")
    folder = directory / target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".writable"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return unavailable_record(target, f"output folder {folder} is not writable: {exc}")
    try:
        return WRITERS[target](model, tokenizer, folder, source_gguf)
    except TargetUnavailable as exc:
        return unavailable_record(target, str(exc))
    except Exception as exc:
        logger.warning("export to %s failed: %s", target, exc)
        record = ExportRecord(target=target, status="failed", reason=f"{type(exc).__name__}: {exc}")
        record.extra["traceback"] = traceback.format_exc()
        return record


def _write_gguf(model: nn.Module, tokenizer: Any, folder: Path, source_gguf: Path | None) -> ExportRecord:
    from paqbench.export.gguf_file.metadata import UnsupportedModel  # lazy: imports gguf
    from paqbench.export.gguf_file.writer import export_gguf  # lazy: imports gguf

    try:
        return export_gguf(model, tokenizer, folder / "model.gguf", source_gguf)
    except UnsupportedModel as exc:
        raise TargetUnavailable(str(exc)) from exc


def _write_compressed(model: nn.Module, tokenizer: Any, folder: Path, source_gguf: Path | None) -> ExportRecord:
    try:
        from paqbench.export.compressed.writer import UnsupportedCheckpoint, export_compressed  # lazy: optional
    except ImportError as exc:
        raise TargetUnavailable(f"compressed-tensors is not installed ({exc}); install it with: {CT_INSTALL}") from exc
    try:
        return export_compressed(model, tokenizer, folder)
    except UnsupportedCheckpoint as exc:
        raise TargetUnavailable(str(exc)) from exc


WRITERS: dict[str, Callable[[nn.Module, Any, Path, Path | None], ExportRecord]] = {
    "gguf": _write_gguf,
    "compressed-tensors": _write_compressed,
}


def _engine_logits(record: ExportRecord, ids: torch.Tensor) -> torch.Tensor:
    if record.target == "gguf":
        try:
            return llamacpp.logits(Path(record.path), ids)
        except llamacpp.EngineMissing as exc:
            raise TargetUnavailable(str(exc)) from exc

    return transformers_engine.logits(Path(record.path), ids)


def _check(record: ExportRecord, reference: torch.Tensor, ids: torch.Tensor, tolerance: Tolerance) -> list[Measurement]:
    prefix = record.target
    try:
        agreement = compare(reference, _engine_logits(record, ids), ids, tolerance)
    except TargetUnavailable as exc:
        return [Measurement.unavailable_because(METRIC, f"{prefix}/check", "", str(exc))]
    except Exception as exc:
        logger.warning("round trip of %s failed: %s", prefix, exc)
        record.extra["check_error"] = f"{type(exc).__name__}: {exc}"
        return [Measurement(METRIC, f"{prefix}/check", 0.0, "pass", "higher",
                            details={"error": record.extra["check_error"]})]
    record.extra["agreement"] = agreement.to_dict()
    return _agreement_measurements(prefix, agreement, tolerance, ids)


def _agreement_measurements(prefix: str, agreement: Agreement, tolerance: Tolerance,
                            ids: torch.Tensor) -> list[Measurement]:
    details = {"windows": int(ids.shape[0]), "seqlen": int(ids.shape[1]), "tolerance": vars(tolerance)}
    return [
        Measurement(METRIC, f"{prefix}/max_abs_logit", agreement.max_abs_logit, "logit", "lower"),
        Measurement(METRIC, f"{prefix}/mean_kl", agreement.mean_kl, "nats", "lower"),
        Measurement(METRIC, f"{prefix}/top1", agreement.top1, "fraction", "higher"),
        Measurement(METRIC, f"{prefix}/top1_decisive", agreement.top1_decisive, "fraction", "higher",
                    details={"positions": agreement.decisive_positions,
                             "margin": tolerance.decisive_margin}),
        Measurement(METRIC, f"{prefix}/ppl_engine", agreement.ppl_engine, "ppl", "lower", details=details),
        Measurement(METRIC, f"{prefix}/ppl_in_memory", agreement.ppl_reference, "ppl", "lower", details=details),
        Measurement(METRIC, f"{prefix}/ppl_rel_diff", agreement.ppl_rel, "fraction", "lower"),
        Measurement(METRIC, f"{prefix}/check", 1.0 if agreement.passed else 0.0, "pass", "higher", details=details),
    ]


def _record_measurements(record: ExportRecord) -> list[Measurement]:
    prefix = record.target
    if record.status != "ok":
        reason = record.reason if record.status == "unavailable" else f"export failed: {record.reason}"
        return [Measurement.unavailable_because(METRIC, f"{prefix}/bytes", "B", reason)]
    levels = record.levels()
    details = {"levels": levels, "notes": record.notes[:20], "path": record.path}
    return [
        Measurement(METRIC, f"{prefix}/bytes", float(record.bytes or 0), "B", "lower", details=details),
        Measurement(METRIC, f"{prefix}/layers_exact", float(levels.get("exact", 0)), "layers", None),
        Measurement(METRIC, f"{prefix}/layers_converted", float(levels.get("converted", 0)), "layers", None),
    ]
