"""Keep peers' own progress logging out of a run's output unless the user asked for it.

llm-compressor and compressed-tensors log through loguru, not the standard ``logging``
module, so ``paqbench run``'s log level does not reach them: a GPTQ recipe prints a few
hundred INFO lines per run. :func:`peer_logging` switches their loguru loggers off for the
duration of a step when paqbench itself is quieter than INFO (no ``-v``), and back on after.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

LOGURU_PACKAGES = ("llmcompressor", "compressed_tensors")


def wants_peer_logs() -> bool:
    """True when paqbench runs with ``-v`` or more (the root logger at INFO or lower)."""
    return logging.getLogger("paqbench").getEffectiveLevel() <= logging.INFO


@contextmanager
def peer_logging(packages: Sequence[str] = LOGURU_PACKAGES) -> Iterator[None]:
    """Disable loguru messages from ``packages`` inside the block (unless -v); a no-op
    without loguru. Warnings and errors the peer raises still reach the run's record as
    exceptions."""
    try:
        from loguru import logger
    except ImportError:  # peer not installed: nothing to silence
        yield
        return
    if wants_peer_logs():
        yield
        return
    for package in packages:
        logger.disable(package)
    try:
        yield
    finally:
        for package in packages:
            logger.enable(package)
