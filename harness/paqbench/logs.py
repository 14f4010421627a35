"""Logging for ``paqbench run`` and its run processes: one format, and other libraries'
deprecation chatter kept out of the user's terminal unless they ask for debug output.

torchao (imported by transformers whenever it is installed) registers Enum classes with
torch's pytree, and torch 2.13 logs a deprecation WARNING for each one, in every run
process. That is a message for torchao's developers, not for someone benchmarking a
model, so it is shown only with ``-vv``.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(name)s: %(message)s"
#: Loggers whose warnings concern other libraries' use of torch, not the user's run.
LIBRARY_NOISE = ("torch.utils._pytree",)


def configure_logging(level: int) -> None:
    """``basicConfig`` at ``level``; above DEBUG, :data:`LIBRARY_NOISE` shows errors only."""
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S")
    for name in LIBRARY_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR if level > logging.DEBUG else logging.NOTSET)
