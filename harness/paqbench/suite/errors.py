"""Errors in suite files, each naming the file, the line, the field and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def format_path(path: tuple[str | int, ...]) -> str:
    """``('pipelines', 0, 'steps', 1)`` -> ``pipelines[0].steps[1]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


@dataclass(frozen=True)
class Problem:
    file: Path | None
    line: int | None
    path: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        where = str(self.file) if self.file else "<suite>"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {format_path(self.path)}: {self.message}"


class SuiteError(Exception):
    """One or more problems with a suite; nothing has run yet."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
