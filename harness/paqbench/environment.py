"""The environment a number was measured in, so any number in a report can be traced."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

LIBRARIES = (
    "paqbench", "torch", "transformers", "accelerate", "datasets", "lm_eval", "safetensors",
    "gguf", "pluggy", "numpy", "tokenizers", "nvidia-ml-py", "bitsandbytes",
)


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_sha(start: Path | None = None) -> str | None:
    """The commit of the paqbench source tree, with ``-dirty`` if it has changes."""
    root = start or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def gpu_info() -> list[dict[str, Any]]:
    """GPUs seen by torch, with driver and total memory from NVML where present."""
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    driver = None
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
    except Exception:
        pass
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append({
            "name": props.name,
            "memory_bytes": props.total_memory,
            "capability": f"{props.major}.{props.minor}",
            "driver": driver,
        })
    return gpus


def capture_environment() -> dict[str, Any]:
    import torch

    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_cores": psutil.cpu_count(logical=False),
        "cpu_threads": psutil.cpu_count(logical=True),
        "torch_threads": torch.get_num_threads(),
        "ram_bytes": psutil.virtual_memory().total,
        "gpus": gpu_info(),
        "cuda": torch.version.cuda,
        "libraries": {name: v for name in LIBRARIES if (v := _version(name))},
        "git_sha": git_sha(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("PAQBENCH_")},
    }
