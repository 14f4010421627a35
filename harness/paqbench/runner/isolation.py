"""Run one run in a fresh spawned process: clean peak memory, crash isolation, and
the child's traceback brought back to the parent. Also the in-process run's timeout."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from paqbench.logs import configure_logging
from paqbench.planner import RunSpec
from paqbench.runner.execute import RunTimedOut, execute_run
from paqbench.runner.result import RunResult

_SIGNAL_HINTS = {
    signal.SIGKILL: "SIGKILL: usually the out-of-memory killer, or a kill from outside",
    signal.SIGSEGV: "SIGSEGV: a crash in native code",
    signal.SIGABRT: "SIGABRT: a native abort",
}


def _exit_with_parent(parent_pid: int) -> None:
    """A run whose parent died (killed suite) has nobody to report to: stop burning CPU."""
    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="paqbench-parent-watch").start()


def _child(
    spec_dict: dict[str, Any], suite_name: str, scratch_root: str, log_level: int, conn, parent_pid: int,
    label: str | None,
) -> None:
    _exit_with_parent(parent_pid)

    configure_logging(log_level)

    def progress(message: str) -> None:
        print(f"{label}: {message}", file=sys.stderr, flush=True)

    try:
        result = execute_run(RunSpec.from_dict(spec_dict), suite_name, Path(scratch_root),
                             progress=progress if label else None)
        conn.send(result.to_dict())
    except BaseException as exc:  # report even import errors to the parent
        conn.send({"__crash__": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))})
    finally:
        conn.close()


def run_in_subprocess(
    spec: RunSpec, suite_name: str, scratch_root: Path, timeout: float | None, log_level: int,
    label: str | None = None,
) -> RunResult:
    """Run ``spec`` in a spawned process; a child that dies or passes ``timeout`` is a failed result.

    With ``label``, the child prints its phases to stderr as ``<label>: <phase>``.
    """
    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    process = ctx.Process(
        target=_child,
        args=(spec.to_dict(), suite_name, str(scratch_root), log_level, child_conn, os.getpid(), label),
        name=f"paqbench-run-{spec.config_hash}",
    )
    process.start()
    child_conn.close()
    payload: dict[str, Any] | None = None
    try:
        deadline = None if timeout is None else started + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.perf_counter())
            if parent_conn.poll(min(remaining, 1.0) if remaining is not None else 1.0):
                try:
                    payload = parent_conn.recv()
                except EOFError:
                    payload = None
                break
            if not process.is_alive():
                break
            if deadline is not None and time.perf_counter() >= deadline:
                _stop(process)
                return _failed(spec, suite_name, started, started_at, "TimeoutError", timeout_message(timeout))
        process.join(timeout=30)
    except BaseException:
        _stop(process)
        raise
    finally:
        parent_conn.close()

    if payload is None:
        code = process.exitcode
        if code is not None and code < 0:
            sig = signal.Signals(-code)
            hint = _SIGNAL_HINTS.get(sig, sig.name)
            message = f"run process was killed by signal {-code} ({hint})"
        else:
            message = f"run process exited with code {code} before reporting a result"
        return _failed(spec, suite_name, started, started_at, "ProcessDied", message)
    if "__crash__" in payload:
        return _failed(spec, suite_name, started, started_at, "ChildCrash",
                       payload["__crash__"].strip().splitlines()[-1], payload["__crash__"])
    return RunResult.from_dict(payload)


def _stop(process) -> None:
    if process.is_alive():
        process.terminate()
        process.join(timeout=10)
    if process.is_alive():
        process.kill()
        process.join(timeout=10)


def _failed(spec: RunSpec, suite_name: str, started: float, started_at: str, kind: str, message: str,
            tb: str = "") -> RunResult:
    return RunResult(
        id=spec.config_hash, name=spec.name, pipeline=spec.pipeline, status="failed",
        spec=spec.to_dict(), suite=suite_name, sweep=spec.sweep,
        error={"type": kind, "message": message, "traceback": tb},
        started_at=started_at, finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        wall_s=time.perf_counter() - started,
    )


def timeout_message(timeout: float) -> str:
    return f"run exceeded its timeout of {timeout:g} s and was stopped"


@contextlib.contextmanager
def deadline(timeout: float | None) -> Iterator[None]:
    """Stop an in-process run after ``timeout`` seconds by raising ``RunTimedOut`` in it (SIGALRM).

    A thread cannot be killed safely, so the in-process runner interrupts the main
    thread instead: the exception arrives at the next Python bytecode, so a single long
    native call (one huge matmul) finishes first, and a plugin that catches
    BaseException could swallow it. Where there is no SIGALRM (Windows) or this is not
    the main thread, the limit cannot be enforced and a warning says so.
    """
    if timeout is None:
        yield
        return
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        logging.getLogger("paqbench").warning(
            "--timeout is not enforced for an in-process run here (needs SIGALRM on the main thread)")
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise RunTimedOut(timeout_message(timeout))

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


def failed_by_timeout(spec: RunSpec, suite_name: str, started: float, started_at: str) -> RunResult:
    """The result of a run whose deadline passed outside its own error handling."""
    return _failed(spec, suite_name, started, started_at, "TimeoutError", timeout_message(spec.timeout or 0))
