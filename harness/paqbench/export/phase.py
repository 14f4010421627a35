"""The runner's export phase: after a run's steps, before its metrics.

Artifacts go to ``<output>/runs/<run name>/export/<target>/``. The check windows are the
first ``windows`` windows of ``seqlen`` tokens of the suite's ``export_check`` dataset,
cut as the perplexity metric cuts them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paqbench.export.run import METRIC, ExportOutcome, export_model
from paqbench.interfaces import Measurement
from paqbench.measure.perplexity import windows
from paqbench.models.embedded import smollm2_gguf_path

#: The embedded model sources whose weights came from a GGUF file (tokenizer copied from it).
_GGUF_SOURCES = ("smollm2-135m", "gguf")


def run_folder(output_root: Path, run_name: str) -> Path:
    """``<output>/runs/<run name>``, the name made safe for any file system."""
    return output_root / "runs" / re.sub(r"[^A-Za-z0-9_.=+\-]", "_", run_name)


def source_gguf(model_source: str, model_config: Any) -> Path | None:
    """The GGUF file the model was read from, when it was, for its tokenizer and metadata."""
    if model_source == "smollm2-135m":
        return smollm2_gguf_path()
    if model_source == "gguf":
        path = Path(model_config.source).expanduser()
        return path if path.is_file() else None
    return None


def check_ids(ctx: Any, check: dict[str, Any]) -> torch.Tensor:
    """``[windows, seqlen]`` token ids of the check dataset (``--limit`` also caps)."""
    corpus = ctx.dataset(check["dataset"], check["split"])
    ids = ctx.tokenizer(corpus.text, return_tensors="pt").input_ids
    caps = [c for c in (check["windows"], ctx.limit) if c is not None]
    return windows(ids, check["seqlen"], min(caps))


def export_phase(
    model: nn.Module, ctx: Any, targets: list[str], check: dict[str, Any] | None, output_root: Path,
    run_name: str, model_source: str,
) -> ExportOutcome:
    """Export ``model`` to ``targets`` and check each artifact on the check windows
    (no check when ``check`` is None or has ``enabled: false``)."""
    ids, why_unchecked = None, None
    if check and check.get("enabled", True):
        try:
            ids = check_ids(ctx, check)
        except Exception as exc:  # the artifacts are still written; only the check cannot run
            why_unchecked = f"the check windows could not be read: {type(exc).__name__}: {exc}"
    outcome = export_model(
        model, ctx.tokenizer, targets, run_folder(output_root, run_name) / "export", ids=ids,
        source_gguf=source_gguf(model_source, ctx.model_config),
    )
    if why_unchecked is not None:
        outcome.measurements.extend(
            Measurement.unavailable_because(METRIC, f"{record.target}/check", "", why_unchecked)
            for record in outcome.records if record.status == "ok"
        )
    if isinstance(getattr(ctx, "exports", None), dict):  # the metrics' engine backends read them
        ctx.exports.update({record.target: record for record in outcome.records})
    return outcome
