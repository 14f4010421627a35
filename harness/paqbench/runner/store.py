"""results.jsonl: append-only, one finished run per line, never half-written.

A line is appended to a file opened in append mode with ``O_NOFOLLOW`` (never through a
symlink), every ``os.write`` is checked, and the line is fsynced. A write that fails (a
full disk) is cut back to the previous line boundary and raised as one
:class:`ResultsWriteError`: that run is simply not recorded and runs again next time.
Before appending, a torn last line (a crash or power loss mid-write) is moved to a side
file ``results.jsonl.torn-<time>`` with a warning, so the next record starts on a line of
its own. Reading skips corrupt lines; :meth:`ResultStore.corrupt_lines` names them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from paqbench.fsio import OutputError, write_all, write_bytes_atomic, write_text_atomic
from paqbench.runner.result import RunResult

RESULTS_FILE = "results.jsonl"
MANIFEST_FILE = "suite.json"

logger = logging.getLogger("paqbench")


class ResultsWriteError(OutputError):
    """A result could not be appended (full disk, I/O error); the file still ends at a whole line."""


class ResultStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / RESULTS_FILE
        self.manifest_path = self.directory / MANIFEST_FILE

    def exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def append(self, result: RunResult) -> None:
        """Append ``result`` as one line; raise :class:`ResultsWriteError` if it cannot be written whole."""
        self.directory.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(result.to_dict(), default=str) + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            reason = "it is a symbolic link, and paqbench does not write through links" if (
                exc.errno == errno.ELOOP) else exc.strerror or str(exc)
            raise ResultsWriteError(exc.errno, f"cannot open {self.path}: {reason}") from None
        try:
            self._quarantine_torn_tail(fd)
            end = os.fstat(fd).st_size
            try:
                write_all(fd, line)
                os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)  # back to the last whole line
                raise ResultsWriteError(
                    exc.errno, f"could not record run {result.name!r} in {self.path}: {exc.strerror or exc}; "
                    "it is not recorded and runs again when you rerun the suite"
                ) from None
        finally:
            os.close(fd)

    def _quarantine_torn_tail(self, fd: int) -> None:
        """Move a last line that is cut short or not JSON to a side file, so no record is glued onto it."""
        size = os.fstat(fd).st_size
        if size == 0:
            return
        start = _last_line_start(fd, size)
        tail = os.pread(fd, size - start, start)
        if tail.endswith(b"\n") and _is_record(tail):
            return
        side = self.path.with_name(f"{RESULTS_FILE}.torn-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        write_bytes_atomic(side, tail)  # the fragment's exact bytes
        os.ftruncate(fd, start)
        logger.warning("%s: its last line (line %d, %d bytes) was incomplete; moved it to %s",
                       self.path, _count_lines(fd, start) + 1, len(tail), side.name)

    def corrupt_lines(self) -> list[int]:
        """1-based numbers of the lines that are not a valid record (reading skips them)."""
        if not self.path.is_file():
            return []
        bad = []
        with self.path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not (line.endswith(b"\n") and _is_record(line)):
                    bad.append(number)
        return bad

    def read(self) -> list[RunResult]:
        if not self.path.is_file():
            return []
        results = []
        with self.path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # torn final line
                try:
                    results.append(RunResult.from_dict(json.loads(line)))
                except (json.JSONDecodeError, TypeError, KeyError, AttributeError):
                    continue  # corrupt_lines() names it
        return results

    def latest(self) -> dict[str, RunResult]:
        """The last record of each run id (a rerun supersedes an earlier failure)."""
        latest: dict[str, RunResult] = {}
        for result in self.read():
            latest[result.id] = result
        return latest

    def completed_ids(self) -> set[str]:
        return {rid for rid, result in self.latest().items() if result.status == "ok"}

    def archive(self) -> Path | None:
        """Move existing results aside (``--force``) without losing them."""
        if not self.path.exists():
            return None
        target = self.path.with_name(f"results.{time.strftime('%Y%m%d-%H%M%S')}.jsonl.bak")
        self.path.rename(target)
        return target

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.manifest_path, json.dumps(manifest, indent=2, default=str))

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))


def _last_line_start(fd: int, size: int) -> int:
    """Offset of the last line's first byte (the byte after the newline before the final byte)."""
    end = size - 1
    while end > 0:
        begin = max(0, end - 65536)
        newline = os.pread(fd, end - begin, begin).rfind(b"\n")
        if newline >= 0:
            return begin + newline + 1
        end = begin
    return 0


def _count_lines(fd: int, end: int) -> int:
    count, offset = 0, 0
    while offset < end:
        chunk = os.pread(fd, min(1 << 20, end - offset), offset)
        count += chunk.count(b"\n")
        offset += len(chunk)
    return count


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
