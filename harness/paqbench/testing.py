"""pytest fixtures for plugin authors: test a method or metric offline in seconds.

Enable them in a ``conftest.py``::

    pytest_plugins = ["paqbench.testing"]

Fixtures: ``tiny_llama`` (a fresh 2-layer random-weight Llama per test),
``tiny_tokenizer`` (byte-level, built in code), ``calibration_batch`` (8 windows of 64
tokens of the embedded text), and ``make_context`` (a :class:`paqbench.RunContext`
factory wired to the registry, with calibration drawn from the embedded text).

:func:`check_layer_format` is the contract test every layer format passes (built-in or
third-party): call it with a factory of filled layers. :func:`run_checked_step` applies
one method and checks it composed with what the model already is (zeros stay zero, shapes
consistent, finite perplexity) or refused up front with ``UnsupportedLayerError``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from paqbench.context import RunContext
from paqbench.layers.contract_check import FormatContractError, check_layer_format
from paqbench.layers.pipeline_check import CompositionError, check_invariants, run_checked_step
from paqbench.models.embedded import byte_tokenizer, tiny_random_llama
from paqbench.registry import get_registry
from paqbench.suite.schema import CalibrationConfig, ModelConfig


def make_run_context(
    tokenizer: Any,
    scratch_dir: Path,
    *,
    n_samples: int = 8,
    seqlen: int = 64,
    dataset: str = "embedded",
    limit: int | None = None,
    seed: int = 0,
    run_name: str = "test",
    teacher: Callable[[], torch.nn.Module] | None = None,
) -> RunContext:
    """A run context for calling ``Method.apply`` / ``Metric.measure`` directly.
    ``teacher`` loads the "original" model that ``ctx.teacher()`` returns (distillation)."""
    return RunContext(
        run_name=run_name,
        tokenizer=tokenizer,
        device=torch.device("cpu"),
        dtype=torch.float32,
        seed=seed,
        scratch_dir=scratch_dir,
        registry=get_registry(),
        model_config=ModelConfig(source="tiny-random-llama"),
        calibration_config=CalibrationConfig(dataset=dataset, n_samples=n_samples, seqlen=seqlen, seed=seed),
        limit=limit,
        current_step="1 (test)",
        _teacher_loader=teacher,
    )


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    """A fresh tiny Llama (2 layers, hidden 64, vocab 260) with seeded random weights."""
    return tiny_random_llama(seed=0)


@pytest.fixture
def tiny_tokenizer():
    return byte_tokenizer()


@pytest.fixture
def make_context(tiny_tokenizer, tmp_path):
    """Factory: ``make_context(n_samples=8, seqlen=64, ...)`` -> RunContext."""

    def factory(**kwargs: Any) -> RunContext:
        kwargs.setdefault("tokenizer", tiny_tokenizer)
        tokenizer = kwargs.pop("tokenizer")
        return make_run_context(tokenizer, tmp_path, **kwargs)

    return factory


@pytest.fixture
def calibration_batch(make_context) -> torch.Tensor:
    """``[8, 64]`` token ids drawn from the embedded calibration text."""
    return torch.cat(make_context().calibration_batches(), dim=0)


__all__ = [
    "CompositionError",
    "FormatContractError",
    "calibration_batch",
    "check_invariants",
    "check_layer_format",
    "make_context",
    "make_run_context",
    "run_checked_step",
    "tiny_llama",
    "tiny_tokenizer",
]
