"""Numbers with sensible precision and units, for tables a person reads."""

from __future__ import annotations

import math


def ran_on_text(where: dict | None) -> str:
    """``node 10.0.0.2 (host-a), GPU 0 (NVIDIA H100)`` for a run Ray placed; "" for a run of the process runner."""
    if not where or where.get("executor") != "ray":
        return ""
    text = f"node {where.get('node_ip')} ({where.get('host')})"
    if where.get("gpu_ids"):
        names = ", ".join(n for n in where.get("gpus") or () if n)
        text += f", GPU {','.join(where['gpu_ids'])}" + (f" ({names})" if names else "")
    return text


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    if unit == "bytes":
        return format_bytes(value)
    if unit == "s":
        return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.2f} s"
    if unit == "fraction":
        return f"{value * 100:.2f}%"
    if unit in ("count", "params"):
        return format_count(value)
    if unit == "MACs":
        return f"{format_count(value)} MACs"
    if unit == "×":
        return f"{value:.3f}×"
    text = format_number(value)
    return f"{text} {unit}" if unit and unit not in ("", "ppl") else text


def format_number(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.3g}" if magnitude < 10 else f"{value:.2f}"
    return f"{value:.4g}"


def format_bytes(value: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"


def format_count(value: float) -> str:
    for suffix, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{suffix}"
    return f"{value:.0f}"


def relative_change(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0 or math.isinf(base) or math.isinf(value):
        return None
    return (value - base) / abs(base)


def format_change(change: float | None) -> str:
    if change is None:
        return ""
    if abs(change) < 0.0005:
        return "±0%"
    return f"{change * 100:+.1f}%"
