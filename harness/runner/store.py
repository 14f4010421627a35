"""results.jsonl: append-only, one finished run per line, written atomically.

Each line is written with a single ``write`` on a file opened in append mode and then
fsynced, so a suite killed at any moment leaves only whole lines; a torn last line (a
machine that lost power) is ignored on reading.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from paqbench.runner.result import RunResult

RESULTS_FILE = "results.jsonl"
MANIFEST_FILE = "suite.json"


class ResultStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / RESULTS_FILE
        self.manifest_path = self.directory / MANIFEST_FILE

    def exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def append(self, result: RunResult) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(result.to_dict(), default=str) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[RunResult]:
        if not self.path.is_file():
            return []
        results = []
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # torn final line
                try:
                    results.append(RunResult.from_dict(json.loads(line)))
                except (json.JSONDecodeError, TypeError, KeyError):
                    continue
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
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        tmp.replace(self.manifest_path)

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))
