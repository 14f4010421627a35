"""Logging for ``paqbench run`` and its run processes: one format, and other libraries'
deprecation chatter kept out of the user's terminal unless they ask for debug output.

torchao (imported by transformers whenever it is installed) registers Enum classes with
torch's pytree, and torch 2.13 logs a deprecation WARNING for each one, in every run
process; on a CPU-only torch it also warns that its CUDA extensions and Triton are
missing. Those are messages for torchao's developers or for GPU users, not for someone
benchmarking a model on this machine, so they are shown only with ``-vv``.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(name)s: %(message)s"
#: Loggers whose warnings concern other libraries' use of torch, not the user's run.
LIBRARY_NOISE = ("torch.utils._pytree", "torchao")


def configure_logging(level: int) -> None:
    """``basicConfig`` at ``level``; above DEBUG, :data:`LIBRARY_NOISE` shows errors only."""
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S")
    for name in LIBRARY_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR if level > logging.DEBUG else logging.NOTSET)
