"""Read a suite file: YAML with line numbers, then the schema, then clear errors."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel

from paqbench.suite.errors import Problem, SuiteError
from paqbench.suite.schema import Suite
from paqbench.suite.yaml_lines import LineMap, load_with_lines

#: The top-level key that pulls blocks from other files (like lm-eval's task YAML).
INCLUDE_KEY = "include"


@dataclass
class LoadedSuite:
    """A schema-valid suite plus what error messages need to point into its file.

    ``origins`` names the file each top-level key was read from when it came through
    ``include:``; every other key is in ``path``."""

    suite: Suite
    path: Path | None
    raw: dict[str, Any]
    lines: LineMap
    origins: dict[str, Path] = field(default_factory=dict)

    def line_of(self, path: tuple[str | int, ...]) -> int | None:
        return line_of(self.lines, path)

    def file_of(self, path: tuple[str | int, ...]) -> Path | None:
        """The file the field at ``path`` is written in."""
        return file_of(self.origins, self.path, path)

    def problem(self, path: tuple[str | int, ...], message: str) -> Problem:
        return Problem(self.file_of(path), self.line_of(path), path, message)


def line_of(lines: LineMap, path: tuple[str | int, ...]) -> int | None:
    """Line of ``path``, or of its nearest ancestor that is written in the file."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def file_of(origins: dict[str, Path], main: Path | None, path: tuple[str | int, ...]) -> Path | None:
    """The file a field is written in: an included one for a key that came from it."""
    return origins.get(path[0], main) if path and isinstance(path[0], str) else main


def load_suite(path: str | Path) -> LoadedSuite:
    """Load and schema-check a suite file; raise :class:`SuiteError` on any problem."""
    path = Path(path)
    return parse_suite(_read(path, None, (), None), path)


def parse_suite(text: str, path: Path | None = None) -> LoadedSuite:
    raw, lines = _parse_mapping(text, path, "expected a mapping with name, model and pipelines")
    raw, lines, origins = _resolve_includes(raw, lines, path, (path,) if path else ())
    try:
        suite = Suite.model_validate(raw)
    except pydantic.ValidationError as exc:
        problems = [_problem_from_pydantic(err, raw, lines, file_of(origins, path, _loc(err))) for err in exc.errors()]
        raise SuiteError(problems) from None
    return LoadedSuite(suite=suite, path=path, raw=raw, lines=lines, origins=origins)


def _read(path: Path, including: Path | None, where: tuple[str | int, ...], line: int | None) -> str:
    """The file's text; a missing or unreadable one is one problem, at the ``include`` that named it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        reason = "file not found"
    except OSError as exc:
        reason = f"cannot read file: {exc.strerror}"
    if including is None:
        raise SuiteError([Problem(path, None, (), reason)]) from None
    raise SuiteError([Problem(including, line, where, f"{reason}: {path}")]) from None


def _parse_mapping(text: str, path: Path | None, expected: str) -> tuple[dict[str, Any], LineMap]:
    try:
        raw, lines = load_with_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        message = f"invalid YAML: {reason}" + (f" ({context})" if context else "")
        raise SuiteError([Problem(path, line, (), message)]) from None
    if not isinstance(raw, dict):
        found = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise SuiteError([Problem(path, 1, (), f"{expected}; found {found}")])
    return raw, lines


def _include_names(raw: dict[str, Any], lines: LineMap, path: Path | None) -> list[str]:
    value = raw.pop(INCLUDE_KEY)
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise SuiteError([Problem(path, line_of(lines, (INCLUDE_KEY,)), (INCLUDE_KEY,),
                                  f"expected a file name or a list of file names; found {_show(value)}")])
    return names


def _resolve_includes(
    raw: dict[str, Any], lines: LineMap, path: Path | None, chain: tuple[Path, ...]
) -> tuple[dict[str, Any], LineMap, dict[str, Path]]:
    """Merge the files named by ``include:`` under this one's keys, like lm-eval's task YAML.

    Each included file (a path relative to the including one) is a mapping of top-level
    suite keys, read with its own includes first. Later includes override earlier ones and
    the including file overrides them all, key by key at the top level (no deep merge: a
    key is written in exactly one file, so every error names that file and line)."""
    if INCLUDE_KEY not in raw:
        return raw, lines, {}
    single = isinstance(raw.get(INCLUDE_KEY), str)
    merged: dict[str, Any] = {}
    merged_lines: LineMap = {}
    origins: dict[str, Path] = {}
    base = path.parent if path is not None else Path.cwd()
    for index, name in enumerate(_include_names(raw, lines, path)):
        target = (base / name).resolve()
        where: tuple[str | int, ...] = (INCLUDE_KEY,) if single else (INCLUDE_KEY, index)
        line = line_of(lines, where)
        if target in {p.resolve() for p in chain}:
            cycle = " -> ".join(str(p) for p in (*chain, target))
            raise SuiteError([Problem(path, line, where, f"include cycle: {cycle}")])
        text = _read(target, path, where, line)
        part, part_lines = _parse_mapping(text, target, "an included file must be a mapping of suite keys")
        part, part_lines, part_origins = _resolve_includes(part, part_lines, target, (*chain, target))
        for key, value in part.items():
            merged[key] = value
            origins[key] = part_origins.get(key, target)
            merged_lines = {p: n for p, n in merged_lines.items() if p[:1] != (key,)}
            merged_lines.update({p: n for p, n in part_lines.items() if p[:1] == (key,)})
    for key, value in raw.items():
        merged[key] = value
        origins.pop(key, None)
        merged_lines = {p: n for p, n in merged_lines.items() if p[:1] != (key,)}
    merged_lines.update({p: n for p, n in lines.items() if p[:1] != (INCLUDE_KEY,)})
    return merged, merged_lines, origins


def _loc(err: Any) -> tuple[Any, ...]:
    return tuple(part for part in err["loc"] if not _is_internal(part))


def _problem_from_pydantic(
    err: Any, raw: Any, lines: LineMap, path: Path | None
) -> Problem:
    loc = _loc(err)
    found = _lookup(raw, loc)
    kind = err["type"]
    if kind == "missing":
        message = "required field is missing"
    elif kind == "extra_forbidden":
        parent = loc[:-1]
        message = f"unknown field {loc[-1]!r}"
        allowed = _allowed_fields(parent)
        if allowed:
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            message += f"; did you mean {close[0]!r}?" if close else ""
            message += f" (allowed: {', '.join(allowed)})"
    else:
        message = f"{_expected(err)}; found {_show(found)}"
    return Problem(path, line_of(lines, loc), loc, message)


def _is_internal(part: Any) -> bool:
    # pydantic inserts tags such as 'function-before[...]' or union member names
    return isinstance(part, str) and ("[" in part or part in {"str", "dict[str,any]"})


def _expected(err: Any) -> str:
    msg: str = err["msg"]
    msg = msg.removeprefix("Value error, ")
    if msg.startswith("Input should be"):
        msg = "expected" + msg[len("Input should be"):]
    elif msg.startswith("String should match pattern"):
        msg = "expected a name of letters, digits, '-', '_', '+' or '.' (" + msg + ")"
    return msg


def _show(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_MISSING = object()


def _lookup(raw: Any, loc: tuple[Any, ...]) -> Any:
    current = raw
    for part in loc:
        try:
            current = current[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return current


def _allowed_fields(parent: tuple[Any, ...]) -> list[str]:
    """Field names of the schema model at ``parent`` (for 'did you mean')."""
    model: Any = Suite
    for part in parent:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return []
        annotation = field.annotation
        for candidate in getattr(annotation, "__args__", ()) or (annotation,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
        else:
            return []
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []
