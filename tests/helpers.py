"""Small helpers shared by the core tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def write_suite(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def paqbench(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would."""
    full_env = {**os.environ, "PAQBENCH_PROGRESS": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "paqbench.cli", *args], cwd=cwd or ROOT, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )


TINY_SUITE = """
name: tiny
model: tiny-random-llama
calibration: {dataset: embedded, n_samples: 4, seqlen: 64}
metrics:
  - params
  - perplexity: {dataset: embedded, seqlen: 128, max_windows: 4}
pipelines:
  - name: magnitude
    steps:
      - magnitude: {sparsity: [0.25, 0.5]}
"""

#: Tests of the CPU int4 / int8 weight-only kernels skip where this torch build lacks them.
needs_int4 = pytest.mark.skipif(
    not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"), reason="this torch has no CPU int4 kernel"
)
needs_int8 = pytest.mark.skipif(
    not hasattr(torch.ops.aten, "_weight_int8pack_mm"), reason="this torch has no CPU int8 kernel"
)
