"""Text for ``paqbench list`` and ``paqbench plugins``."""

from __future__ import annotations

import typing
from typing import Any

from pydantic.fields import FieldInfo
from tabulate import tabulate

from paqbench.plugin_manager import plugin_distribution
from paqbench.registry import Registry


def type_name(annotation: Any) -> str:
    if annotation is None or annotation is type(None):
        return "none"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    return repr(value)


def parameter_rows(params_model: Any) -> list[list[str]]:
    return [
        [name, type_name(field.annotation), _default(field), field.description or ""]
        for name, field in params_model.model_fields.items()
    ]


def list_text(registry: Registry, kind: str, verbose: bool) -> str:
    table = registry.entries[kind]
    blocks = []
    rows = []
    for name, entry in sorted(table.items()):
        cls = entry.cls
        row = [name]
        if kind == "methods":
            accepts = ", ".join(sorted(cls.accepts))
            row += [cls.family, accepts, "yes" if cls.needs_calibration else "no"]
        if kind == "formats":
            row += [cls.paqbench_layer_kind, ", ".join(sorted(cls.capabilities)) or "-"]
        row += [entry.plugin, cls.summary()]
        rows.append(row)
        if verbose:
            text = [f"{name}  ({entry.plugin})", f"  {(cls.description or cls.__doc__ or '').strip()}"]
            if kind == "methods":
                text.append(f"  family: {cls.family}; accepts layers: {', '.join(sorted(cls.accepts))}; "
                            f"calibration: {'yes' if cls.needs_calibration else 'no'}")
            if kind == "datasets":
                text.append(f"  splits: {', '.join(cls.splits)}")
            if kind == "formats":
                text.append(f"  kind: {cls.paqbench_layer_kind}; capabilities: "
                            f"{', '.join(sorted(cls.capabilities)) or 'none'}; checkpoint marker: {cls.state_marker}")
                blocks.append("\n".join(text))
                continue
            param_rows = parameter_rows(cls.Params)
            if param_rows:
                table_text = tabulate(param_rows, headers=["parameter", "type", "default", "description"])
                text.append("\n".join("  " + line for line in table_text.splitlines()))
            else:
                text.append("  (no parameters)")
            blocks.append("\n".join(text))
    if verbose:
        return "\n\n".join(blocks)
    headers = ["name"]
    if kind == "methods":
        headers += ["family", "accepts", "calibration"]
    if kind == "formats":
        headers += ["kind", "capabilities"]
    headers += ["plugin", "description"]
    return tabulate(rows, headers=headers)


def plugins_text(pm: Any, registry: Registry) -> str:
    provided = registry.by_plugin()
    rows = []
    for name, _plugin in pm.list_name_plugin():
        dist, version = plugin_distribution(name)
        hooks = provided.get(name, {})
        registers = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in hooks.items()) or "-"
        rows.append([name, dist, version or "?", registers])
    return tabulate(rows, headers=["plugin", "distribution", "version", "registers"])
