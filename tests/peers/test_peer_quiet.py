"""Peers' loguru output stays out of a run unless paqbench runs with -v."""

from __future__ import annotations

import logging

import pytest

from paqbench.peers.quiet import peer_logging


@pytest.fixture
def loguru_messages():
    loguru = pytest.importorskip("loguru")
    messages: list[str] = []
    sink = loguru.logger.add(lambda message: messages.append(message.record["message"]), level="INFO")
    namespace = {"__name__": "llmcompressor.modifiers.fake", "logger": loguru.logger}
    exec("def say(text):\n    logger.info(text)\n", namespace)  # a call that loguru attributes to llmcompressor
    yield namespace["say"], messages
    loguru.logger.remove(sink)


@pytest.fixture
def paqbench_level():
    log = logging.getLogger("paqbench")
    before = log.level
    yield log.setLevel
    log.setLevel(before)


def test_silent_without_verbose_and_restored_after(loguru_messages, paqbench_level):
    say, messages = loguru_messages
    paqbench_level(logging.WARNING)
    with peer_logging():
        say("inside")
    say("after")
    assert messages == ["after"]


def test_verbose_keeps_peer_logs(loguru_messages, paqbench_level):
    say, messages = loguru_messages
    paqbench_level(logging.INFO)
    with peer_logging():
        say("inside")
    assert messages == ["inside"]


def test_restored_when_the_peer_raises(loguru_messages, paqbench_level):
    say, messages = loguru_messages
    paqbench_level(logging.WARNING)
    with pytest.raises(RuntimeError), peer_logging():
        raise RuntimeError("peer failed")
    say("after")
    assert messages == ["after"]
