"""Run a plan's runs as Ray tasks (``runner.executor: ray``): fan a suite out over the
GPUs of one machine or the nodes of a cluster with Ray's own scheduler.

Each run is one Ray task that calls :func:`paqbench.runner.execute.execute_run` in a
worker process of its own (``max_calls=1``: a fresh process per run, so peak memory means
what it means in the process runner, and a crash takes only that run). The task first
yields where it runs (node, process, GPUs), then the result; only this driver appends to
``results.jsonl``, so resuming by configuration hash is unchanged. A run's timeout counts
from the moment its task starts (not while it waits for a free GPU); a task past it is
cancelled with its worker. A task that raises, a worker that dies (SIGKILL, segfault) or
that Ray's memory monitor kills is one failed run, with Ray's error; the others go on.
Probes of one threshold search run one after another (each depends on the last), each
search in a thread of its own that asks this loop for its next probe, so independent
searches and ordinary runs share the cluster.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import platform
import queue
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from paqbench.planner import BASELINE, Plan, RunSpec
from paqbench.runner.execute import execute_run
from paqbench.runner.isolation import timeout_message
from paqbench.runner.result import RunResult
from paqbench.runner.search import SearchOutcome, baseline_entry, bisect
from paqbench.runner.store import ResultStore
from paqbench.suite.schema import RayResources, RunnerConfig

INSTALL = "pip install 'paqbench[ray]'"
#: Variables a worker on another node needs to read the same data the same way.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM")
#: How often the driver looks at timeouts and new search probes while it waits.
POLL_S = 0.5


class ExecutorError(Exception):
    """The Ray executor cannot start: Ray missing, the cluster unreachable, resources no
    node has. The suite is at fault (exit 2); nothing has run."""


@dataclass
class _Job:
    spec: RunSpec
    label: str
    future: Future | None = None  # a search probe's answer goes here


@dataclass
class _Flight:
    job: _Job
    stream: Any  # ray.ObjectRefGenerator
    submitted: float
    started: float | None = None
    started_at: str = ""
    where: dict[str, Any] | None = None


@dataclass
class _Board:
    """The driver's view: what is waiting, what Ray holds, what is done."""

    pending: deque[_Job] = field(default_factory=deque)
    flights: list[_Flight] = field(default_factory=list)
    done: int = 0

    def counts(self) -> str:
        running = sum(1 for f in self.flights if f.started is not None)
        waiting = len(self.pending) + len(self.flights) - running
        return f"{self.done} done, {running} running, {waiting} pending"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


NOT_INSTALLED = f"runner.executor: ray needs Ray, which is not installed: {INSTALL}"


def check_installed() -> None:
    """For ``paqbench validate``: say that the suite needs Ray, without importing it (seconds)."""
    if importlib.util.find_spec("ray") is None:
        raise ExecutorError(NOT_INSTALLED)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(NOT_INSTALLED) from None
    return ray


def connect(runner: RunnerConfig, log_level: int) -> tuple[Any, bool]:
    """Join the cluster at ``runner.address`` or start a local one; returns (ray, started_here).

    A driver already connected (``ray.init`` in a notebook or a test) is reused as is.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    address = runner.address
    if address and address != "auto":
        _check_reachable(address)
    options: dict[str, Any] = {
        "logging_level": logging.WARNING, "log_to_driver": log_level <= logging.INFO,
        "runtime_env": {"env_vars": forwarded_env()},
    }
    if address is None:  # a fresh local instance, never somebody else's cluster
        options.update(address="local", include_dashboard=False)
    else:
        options["address"] = address
    try:
        ray.init(**options)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: all mean "cannot join"
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        hint = " (start one with `ray start --head`)" if address == "auto" else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExecutorError(f"runner.address: cannot connect to {where}{hint}: {first}") from None
    return ray, True


def _check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's long retries, when nothing listens at host:port."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"runner.address: expected auto, host:port or ray://host:port; found {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ExecutorError(f"runner.address: no Ray cluster answers at {address!r} "
                            f"({exc.strerror or exc}); is `ray start --head` running there?") from None


def forwarded_env() -> dict[str, str]:
    """PAQBENCH_* and the offline switches, so a worker on another node reads data as this driver does."""
    return {k: v for k, v in os.environ.items() if k.startswith("PAQBENCH_") or k in FORWARDED_ENV}


def task_resources(resources: RayResources | None) -> dict[str, Any]:
    resources = resources or RayResources()
    options: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}
    if resources.memory is not None:
        options["memory"] = resources.memory
    return options


def check_resources(ray: Any, resources: RayResources | None) -> None:
    """Refuse resources that no live node has: Ray would otherwise wait for them forever."""
    resources = resources or RayResources()
    wanted = {"CPU": resources.num_cpus, "GPU": resources.num_gpus, "memory": resources.memory or 0}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(all(node.get(key, 0) >= amount for key, amount in wanted.items()) for node in nodes):
        return
    have = "; ".join(f"{n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU, {n.get('memory', 0) / 2**30:.1f} GiB"
                     for n in nodes) or "none alive"
    asked = ", ".join(f"{k}: {v:g}" for k, v in (("num_cpus", wanted["CPU"]), ("num_gpus", wanted["GPU"])))
    if wanted["memory"]:
        asked += f", memory: {wanted['memory']}"
    raise ExecutorError(f"runner.resources: no node of the Ray cluster has {{{asked}}} for one run "
                        f"(nodes: {have}); lower them or add a node that has them")


def _run_task(spec_dict: dict[str, Any], suite_name: str, scratch_root: str):
    """The Ray task: say where it runs, then run. A generator, so the driver learns when it starts."""
    import ray

    where = {
        "executor": "ray", "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(), "hostname": platform.node(), "pid": os.getpid(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
    }
    yield where  # before the heavy imports: they count in the run's timeout, as in the process runner

    result = execute_run(RunSpec.from_dict(spec_dict), suite_name, Path(scratch_root))
    result.environment["executor"] = where
    yield result.to_dict()


def _failed(job: _Job, suite_name: str, flight: _Flight | None, kind: str, message: str, tb: str = "") -> RunResult:
    started = flight.started if flight and flight.started else (flight.submitted if flight else time.perf_counter())
    result = RunResult(
        id=job.spec.config_hash, name=job.spec.name, pipeline=job.spec.pipeline, status="failed",
        spec=job.spec.to_dict(), suite=suite_name, sweep=job.spec.sweep,
        error={"type": kind, "message": message, "traceback": tb},
        started_at=(flight.started_at if flight and flight.started_at else _now()), finished_at=_now(),
        wall_s=time.perf_counter() - started,
    )
    if flight and flight.where:
        result.environment = {"executor": flight.where}
    return result


def describe_failure(ray: Any, exc: BaseException) -> tuple[str, str, str]:
    """(type, one-line message, traceback) of a task that did not return a result."""
    errors = ray.exceptions
    if isinstance(exc, errors.OutOfMemoryError):
        return "OutOfMemoryError", "Ray's memory monitor killed the run's worker (out of memory)", str(exc)
    if isinstance(exc, errors.WorkerCrashedError):
        return "ProcessDied", ("the run's Ray worker died (killed by a signal, a native crash, or the "
                               "out-of-memory killer)"), str(exc)
    if isinstance(exc, errors.NodeDiedError):
        return "ProcessDied", "the Ray node running this run died", str(exc)
    if isinstance(exc, errors.RayTaskError):
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
        kind = type(cause).__name__ if cause else "RayTaskError"
        message = str(cause) if cause else str(exc).strip().splitlines()[-1]
        return kind, message, str(exc)
    return type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, (
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def where_text(where: dict[str, Any] | None) -> str:
    if not where:
        return "?"
    gpus = f", GPU {','.join(where['gpu_ids'])}" if where.get("gpu_ids") else ""
    return f"{where.get('hostname')} ({where.get('node_ip')}){gpus}"


@contextlib.contextmanager
def connected(runner: RunnerConfig, log_level: int) -> Iterator[RayCluster]:
    """Connect (or start a local instance) and check the resources, before anything is
    written; raises :class:`ExecutorError` naming the suite field at fault. A local
    instance started here is shut down on exit."""
    ray, started_here = connect(runner, log_level)
    try:
        check_resources(ray, runner.resources)
        yield RayCluster(ray, runner)
    finally:
        if started_here:
            ray.shutdown()


@dataclass
class RayCluster:
    """A connected Ray cluster and the runner settings to run a plan on it."""

    ray: Any
    runner: RunnerConfig

    def run(self, plan: Plan, store: ResultStore, summary: Any, *, done: set[str], reuse: bool, scratch: Path,
            echo: Callable[[str], None]) -> None:
        """Run every run of ``plan`` not in ``done`` (and the searches' probes), appending each
        result to ``store`` here as it ends. On KeyboardInterrupt, tasks in flight and waiting
        are cancelled and the interrupt is raised again; what finished is already recorded."""
        _Driver(self.ray, plan, store, summary, self.runner, done, reuse, scratch, echo).run()


class _Driver:
    """The single writer: submits tasks, watches them, records results."""

    def __init__(self, ray: Any, plan: Plan, store: ResultStore, summary: Any, runner: RunnerConfig,
                 done: set[str], reuse: bool, scratch: Path, echo: Callable[[str], None]) -> None:
        self.ray, self.plan, self.store, self.summary = ray, plan, store, summary
        self.done, self.reuse, self.echo = done, reuse, echo
        self.scratch = str(Path(scratch).resolve())
        self.limit = runner.max_concurrent
        self.remote = ray.remote(max_calls=1)(_run_task).options(
            num_returns="streaming", max_retries=0, retry_exceptions=False, **task_resources(runner.resources),
        )
        self.board = _Board()
        self.requests: queue.Queue[_Job] = queue.Queue()  # probes asked for by search threads
        self.searches: list[threading.Thread] = []
        self.outcomes: dict[int, SearchOutcome] = {}
        self.baseline_recorded = threading.Event()  # a min_recovery search needs the baseline's result first
        self.stopping = False

    def run(self) -> None:
        total = len(self.plan.runs)
        for position, spec in enumerate(self.plan.runs, start=1):
            label = f"[{position}/{total}] {spec.name}"
            if spec.config_hash in self.done:
                self.summary.skipped.append(spec)
                self.echo(f"{label}: already recorded ({spec.config_hash}), skipped")
            else:
                self.board.pending.append(_Job(spec, label))
        if not any(job.spec.pipeline == BASELINE for job in self.board.pending):
            self.baseline_recorded.set()
        latest = self.store.latest() if self.reuse else {}
        for index, search in enumerate(self.plan.searches):
            thread = threading.Thread(target=self._search, args=(index, search, latest), daemon=True,
                                      name=f"paqbench-search-{search.name}")
            self.searches.append(thread)
            thread.start()
        try:
            self._loop()
        except BaseException:
            self._cancel_all()
            raise
        for index in sorted(self.outcomes):
            self.summary.searches.append(self.outcomes[index])

    def _search(self, index: int, search: Any, latest: dict[str, RunResult]) -> None:
        def evaluate(spec: RunSpec) -> dict[str, Any] | None:
            label = f"[search {search.name}] {spec.name}"
            recorded = latest.get(spec.config_hash)
            if recorded is not None and recorded.status == "ok":
                self.summary.skipped.append(spec)
                self.echo(f"{label}: already recorded ({spec.config_hash}), reused")
                return recorded.to_dict()
            if self.stopping:
                raise CancelledError
            future: Future = Future()
            self.requests.put(_Job(spec, label, future))
            return future.result().to_dict()  # raises if the driver cancelled it

        if search.objective.get("min_recovery") is not None:
            self.baseline_recorded.wait()  # its probes are judged against the baseline's measurement
        with contextlib.suppress(CancelledError):  # Ctrl-C: the search is simply unfinished
            if self.stopping:
                raise CancelledError
            baseline = baseline_entry(self.plan.runs, self.store.latest())
            self.outcomes[index] = bisect(search, evaluate, baseline)

    def _loop(self) -> None:
        board, shown = self.board, ""
        while board.pending or board.flights or any(t.is_alive() for t in self.searches) or not self.requests.empty():
            while not self.requests.empty():
                board.pending.append(self.requests.get_nowait())
            while board.pending and (self.limit is None or len(board.flights) < self.limit):
                job = board.pending.popleft()
                stream = self.remote.remote(job.spec.to_dict(), self.plan.suite_name, self.scratch)
                board.flights.append(_Flight(job, stream, time.perf_counter()))
            if board.flights:
                ready, _ = self.ray.wait([f.stream for f in board.flights], num_returns=1, timeout=POLL_S)
                for stream in ready:
                    self._advance(next(f for f in board.flights if f.stream is stream))
                self._expire()
            else:
                time.sleep(0.05)
            if board.counts() != shown:
                shown = board.counts()
                self.echo(f"ray: {shown}")

    def _advance(self, flight: _Flight) -> None:
        """Take the next item of a flight's stream: where it started, then its result, or its failure."""
        try:
            item = self.ray.get(next(flight.stream))
        except StopIteration:
            self._finish(flight, _failed(flight.job, self.plan.suite_name, flight, "ProcessDied",
                                         "the Ray task ended without a result"))
            return
        except Exception as exc:
            kind, message, tb = describe_failure(self.ray, exc)
            self._finish(flight, _failed(flight.job, self.plan.suite_name, flight, kind, message, tb))
            return
        if flight.started is None:
            flight.started, flight.started_at, flight.where = time.perf_counter(), _now(), item
            self.echo(f"{flight.job.label}: running on {where_text(item)}")
            return
        self._finish(flight, RunResult.from_dict(item))

    def _expire(self) -> None:
        now = time.perf_counter()
        for flight in list(self.board.flights):
            timeout = flight.job.spec.timeout
            if timeout is not None and flight.started is not None and now - flight.started >= timeout:
                self.ray.cancel(flight.stream, force=True)
                self._finish(flight, _failed(flight.job, self.plan.suite_name, flight, "TimeoutError",
                                             timeout_message(timeout)))

    def _finish(self, flight: _Flight, result: RunResult) -> None:
        self.board.flights.remove(flight)
        self.board.done += 1
        self.store.append(result)
        self.summary.ran.append(result)
        label = flight.job.label
        if result.status == "ok":
            self.echo(f"{label}: ok in {result.wall_s:.1f} s on {where_text(flight.where)}")
        else:
            message = (result.error or {}).get("message", "unknown error")
            self.echo(f"{label}: FAILED in {result.wall_s:.1f} s: {message}")
        if flight.job.spec.pipeline == BASELINE:
            self.baseline_recorded.set()
        if flight.job.future is not None:
            flight.job.future.set_result(result)

    def _cancel_all(self) -> None:
        """Ctrl-C: cancel what runs and what waits; finished runs are already recorded."""
        self.stopping = True
        self.baseline_recorded.set()  # a search still waiting for it ends instead
        for flight in self.board.flights:
            with contextlib.suppress(Exception):  # already finished or gone
                self.ray.cancel(flight.stream, force=True)
            if flight.job.future is not None:
                flight.job.future.cancel()
        while not self.requests.empty():
            self.board.pending.append(self.requests.get_nowait())
        for job in self.board.pending:
            if job.future is not None:
                job.future.cancel()
        self.board.flights.clear()
        self.board.pending.clear()
