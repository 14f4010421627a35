"""Read a suite file: YAML with line numbers, then the schema, then clear errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml

from paqbench.suite.errors import Problem, SuiteError
from paqbench.suite.schema import Suite
from paqbench.suite.yaml_lines import LineMap, load_with_lines


@dataclass
class LoadedSuite:
    """A schema-valid suite plus what error messages need to point into its file."""

    suite: Suite
    path: Path | None
    raw: dict[str, Any]
    lines: LineMap

    def line_of(self, path: tuple[str | int, ...]) -> int | None:
        return line_of(self.lines, path)

    def problem(self, path: tuple[str | int, ...], message: str) -> Problem:
        return Problem(self.path, self.line_of(path), path, message)


def line_of(lines: LineMap, path: tuple[str | int, ...]) -> int | None:
    """Line of ``path``, or of its nearest ancestor that is written in the file."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def load_suite(path: str | Path) -> LoadedSuite:
    """Load and schema-check a suite file; raise :class:`SuiteError` on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError([Problem(path, None, (), "file not found")]) from None
    except OSError as exc:
        raise SuiteError([Problem(path, None, (), f"cannot read file: {exc.strerror}")]) from None
    return parse_suite(text, path)


def parse_suite(text: str, path: Path | None = None) -> LoadedSuite:
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
        raise SuiteError(
            [Problem(path, 1, (), f"expected a mapping with name, model and pipelines; found {found}")]
        )
    try:
        suite = Suite.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise SuiteError([_problem_from_pydantic(err, raw, lines, path) for err in exc.errors()]) from None
    return LoadedSuite(suite=suite, path=path, raw=raw, lines=lines)


def _problem_from_pydantic(
    err: Any, raw: Any, lines: LineMap, path: Path | None
) -> Problem:
    loc = tuple(part for part in err["loc"] if not _is_internal(part))
    found = _lookup(raw, loc)
    kind = err["type"]
    if kind == "missing":
        message = "required field is missing"
    elif kind == "extra_forbidden":
        parent = loc[:-1]
        message = f"unknown field {loc[-1]!r}"
        allowed = _allowed_fields(parent)
        if allowed:
            import difflib

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
    from pydantic import BaseModel

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
