"""Peak memory of a window of work: process RSS (sampled) and device allocator peaks."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import psutil
import torch


@dataclass
class MemoryPeak:
    rss_bytes: int
    device_allocated_bytes: int | None = None
    device_reserved_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class PeakMemory:
    """Context manager measuring peak RSS of this process (and its children) by sampling
    every ``interval`` seconds, and the CUDA allocator's peaks (reset at entry)."""

    def __init__(self, device: torch.device | None = None, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.peak: MemoryPeak | None = None
        self._process = psutil.Process()
        self._max_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        total = self._process.memory_info().rss
        for child in self._process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._max_rss = max(self._max_rss, self._rss())

    def __enter__(self) -> PeakMemory:
        self._max_rss = self._rss()
        if self._cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    @property
    def _cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda" and torch.cuda.is_available()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._max_rss = max(self._max_rss, self._rss())
        peak = MemoryPeak(rss_bytes=self._max_rss)
        if self._cuda:
            torch.cuda.synchronize(self.device)
            peak.device_allocated_bytes = torch.cuda.max_memory_allocated(self.device)
            peak.device_reserved_bytes = torch.cuda.max_memory_reserved(self.device)
        self.peak = peak
