"""Other libraries' deprecation chatter stays out of a run's output unless -vv."""

from __future__ import annotations

import logging

import pytest

from paqbench.logs import LIBRARY_NOISE, configure_logging


@pytest.fixture(autouse=True)
def restore_levels():
    before = {name: logging.getLogger(name).level for name in LIBRARY_NOISE}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("level", [logging.WARNING, logging.INFO])
def test_library_warnings_hidden_below_debug(level, caplog):
    configure_logging(level)
    with caplog.at_level(logging.WARNING):
        logging.getLogger("torch.utils._pytree").warning("<enum 'X'> is an Enum subclass ...")
        logging.getLogger("paqbench.runner").warning("a paqbench warning")
    assert [r.name for r in caplog.records] == ["paqbench.runner"]


def test_debug_shows_them(caplog):
    configure_logging(logging.DEBUG)
    with caplog.at_level(logging.WARNING):
        logging.getLogger("torch.utils._pytree").warning("<enum 'X'> is an Enum subclass ...")
    assert [r.name for r in caplog.records] == ["torch.utils._pytree"]
