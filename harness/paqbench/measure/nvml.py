"""A thin layer over NVML (``pynvml`` from nvidia-ml-py) that never raises.

Metrics that read the GPU's own counters (process VRAM, the energy counter, power) run on
machines without a GPU, without the NVML library, or inside containers whose PID
namespace hides the host's process ids. Every function here therefore returns a
:class:`Reading`: a value, or ``None`` with the reason it could not be read, which a metric
turns into an unavailable measurement instead of a zero.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_init_error: str | None = None
_initialized = False


@dataclass(frozen=True)
class Reading(Generic[T]):
    """A value read through NVML, or the reason there is none."""

    value: T | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None

    @classmethod
    def unavailable(cls, reason: str) -> Reading[Any]:
        return cls(None, reason)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _init() -> str | None:
    """Initialise NVML once per process; the reason it failed, or None."""
    global _init_error, _initialized
    with _lock:
        if _initialized or _init_error is not None:
            return _init_error
        try:
            import pynvml
        except ImportError as exc:
            _init_error = f"nvidia-ml-py is not installed ({exc})"
            return _init_error
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            _init_error = f"NVML could not be initialised: {exc}"
            return _init_error
        except OSError as exc:  # a broken driver install
            _init_error = f"NVML could not be loaded: {_error_text(exc)}"
            return _init_error
        _initialized = True
        return None


def availability() -> Reading[int]:
    """The number of GPUs NVML sees, or why NVML is not usable here."""
    reason = _init()
    if reason is not None:
        return Reading.unavailable(reason)
    import pynvml

    try:
        count = int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError as exc:
        return Reading.unavailable(f"NVML could not count devices: {exc}")
    if count == 0:
        return Reading.unavailable("NVML sees no GPU")
    return Reading(count)


def driver_version() -> Reading[str]:
    """The NVIDIA driver version, for the report's environment."""
    reason = _init()
    if reason is not None:
        return Reading.unavailable(reason)
    import pynvml

    try:
        version = pynvml.nvmlSystemGetDriverVersion()
    except pynvml.NVMLError as exc:
        return Reading.unavailable(f"NVML could not read the driver version: {exc}")
    return Reading(version.decode() if isinstance(version, bytes) else str(version))


def _handle(cuda_index: int) -> Reading[Any]:
    """The NVML handle of the GPU that torch calls ``cuda:<cuda_index>``.

    torch numbers GPUs after ``CUDA_VISIBLE_DEVICES``; NVML numbers all of them. The UUID
    identifies the same card in both; without it, the index is trusted only when no
    remapping is in force.
    """
    available = availability()
    if not available.ok:
        return available
    import pynvml

    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
        uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        return Reading(pynvml.nvmlDeviceGetHandleByUUID(uuid))
    except Exception as exc:  # torch without CUDA, an older torch, a MIG UUID, ...
        uuid_error = _error_text(exc)
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return Reading.unavailable(
            f"cannot match cuda:{cuda_index} to an NVML device ({uuid_error}) while "
            "CUDA_VISIBLE_DEVICES remaps the GPUs"
        )
    try:
        return Reading(pynvml.nvmlDeviceGetHandleByIndex(cuda_index))
    except pynvml.NVMLError as exc:
        return Reading.unavailable(f"NVML has no device {cuda_index}: {exc}")


def device_name(cuda_index: int = 0) -> Reading[str]:
    handle = _handle(cuda_index)
    if not handle.ok:
        return handle
    import pynvml

    try:
        name = pynvml.nvmlDeviceGetName(handle.value)
    except pynvml.NVMLError as exc:
        return Reading.unavailable(f"NVML could not read the device name: {exc}")
    return Reading(name.decode() if isinstance(name, bytes) else str(name))


def process_tree(pid: int | None = None) -> set[int]:
    """``pid`` (default: this process) and all its descendants."""
    import psutil

    root = psutil.Process(pid if pid is not None else os.getpid())
    pids = {root.pid}
    with contextlib.suppress(psutil.Error):
        pids.update(child.pid for child in root.children(recursive=True))
    return pids


def process_vram(pids: Iterable[int] | None = None, cuda_index: int | None = None) -> Reading[int]:
    """Bytes of GPU memory NVML attributes to ``pids`` (default: this process and its
    children), on one GPU or, with ``cuda_index=None``, summed over all GPUs.

    This is what ``nvidia-smi`` shows per process: the CUDA context and every allocation,
    including what PyTorch's caching allocator holds but does not use.
    """
    available = availability()
    if not available.ok:
        return available
    import pynvml

    wanted = set(pids) if pids is not None else process_tree()
    if cuda_index is None:
        handles = []
        for index in range(available.value or 0):
            try:
                handles.append(pynvml.nvmlDeviceGetHandleByIndex(index))
            except pynvml.NVMLError as exc:
                return Reading.unavailable(f"NVML has no device {index}: {exc}")
    else:
        handle = _handle(cuda_index)
        if not handle.ok:
            return handle
        handles = [handle.value]

    total = 0
    matched = listed = 0
    for handle in handles:
        processes = []
        for query in (pynvml.nvmlDeviceGetComputeRunningProcesses,
                      pynvml.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                processes.extend(query(handle))
            except pynvml.NVMLError as exc:
                return Reading.unavailable(f"NVML could not list GPU processes: {exc}")
        seen: set[int] = set()  # a process may be listed as compute and graphics
        for process in processes:
            listed += 1
            if process.pid not in wanted or process.pid in seen:
                continue
            seen.add(process.pid)
            if process.usedGpuMemory is None:
                return Reading.unavailable(
                    f"NVML does not report per-process memory here (pid {process.pid})"
                )
            matched += 1
            total += int(process.usedGpuMemory)
    if matched == 0:
        hint = (" (a container's PID namespace hides host pids from NVML)" if listed
                else " (no process holds GPU memory)")
        return Reading.unavailable(
            f"NVML lists {listed} GPU process(es), none of them pid(s) {sorted(wanted)}{hint}"
        )
    return Reading(total)


def energy_mj(cuda_index: int = 0) -> Reading[int]:
    """The GPU's total energy counter in millijoules since the driver loaded (Volta and
    newer). Differences of two readings give the energy of a window."""
    handle = _handle(cuda_index)
    if not handle.ok:
        return handle
    import pynvml

    try:
        return Reading(int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle.value)))
    except pynvml.NVMLError as exc:
        return Reading.unavailable(f"NVML has no energy counter for this GPU: {exc}")


def power_w(cuda_index: int = 0) -> Reading[float]:
    """The GPU's current power draw in watts (NVML reports milliwatts)."""
    handle = _handle(cuda_index)
    if not handle.ok:
        return handle
    import pynvml

    try:
        return Reading(pynvml.nvmlDeviceGetPowerUsage(handle.value) / 1000.0)
    except pynvml.NVMLError as exc:
        return Reading.unavailable(f"NVML cannot read this GPU's power: {exc}")
