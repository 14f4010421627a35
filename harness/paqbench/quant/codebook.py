"""Shared machinery of the codebook quantized layers (NF4, k-means LUT, VQ).

A codebook layer stores integer codes (packed with :mod:`paqbench.quant.packing`) that
index a table of float values, instead of a uniform grid's ``(code - zero) * scale``:

- :class:`paqbench.quant.nf4.NF4Linear`: a fixed 16-entry table (NormalFloat4) times a
  per-block absmax;
- :class:`paqbench.quant.lut.LUTLinear`: a learned table of ``2**bits`` fp16 values per
  output channel or per (channel, group);
- :class:`paqbench.quant.vq.VQLinear`: a learned table of ``K`` fp16 vectors of ``d``
  consecutive input weights.

This module holds what they share: :class:`CodebookLinear` (the compressed-layer
contract: kind ``quantized``, reference forward, mask bookkeeping, index checks,
accounting from the persistent buffers, dtype-stable storage buffers), the weighted
k-means fitting (:func:`lloyd_1d` for batched scalar tables, :func:`kmeans` for vectors
with k-means++ initialisation), and :func:`input_second_moments`, the calibration
statistic of the weighted variants.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from paqbench.export.capability import check_target, converted
from paqbench.layers.contract import SLICE_INPUTS, SLICE_OUTPUTS, ZERO_WEIGHTS, CompressedLayer
from paqbench.quant.sequential import record_inputs

if TYPE_CHECKING:
    from paqbench.export.capability import Capability

#: Points per chunk when computing point-to-center distances (chunk x K floats: cache-sized).
_CHUNK = 4096


class CodebookLinear(CompressedLayer):
    """Base class of the codebook layers (LUT, NF4, VQ): the capabilities and the export
    answer they share; everything else (the reference forward included) comes from
    :class:`CompressedLayer` (a subclass names its ``format_floats``: tables, absmax)."""

    capabilities = frozenset({ZERO_WEIGHTS, SLICE_INPUTS, SLICE_OUTPUTS})

    def export_capability(self, target: str) -> Capability:
        """No export target has a codebook type: the weight is written dequantized."""
        check_target(target)
        return converted("F16" if target == "gguf" else "float16 tensor",
                         f"{type(self).__name__} codebooks have no {target} type; written dequantized")


def used_and_inverse(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(used, remapped)``: the distinct values of an index tensor (ascending) and the
    index rewritten to positions in ``used`` (int32), so unused entries can be dropped."""
    used, inverse = torch.unique(index.long(), return_inverse=True)
    return used, inverse.to(torch.int32)


# ---------------------------------------------------------------------------- scalar k-means


@torch.no_grad()
def nearest_sorted(values: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index of the nearest center for each value, batched: ``values`` ``[B, N]``,
    ``centers`` ``[B, K]`` sorted ascending along K. Ties go to the lower center."""
    midpoints = (centers[:, 1:] + centers[:, :-1]) / 2
    return torch.searchsorted(midpoints.contiguous(), values.contiguous(), right=False)


@torch.no_grad()
def lloyd_1d(
    values: torch.Tensor,
    weights: torch.Tensor,
    centers: torch.Tensor,
    fixed: torch.Tensor,
    iterations: int,
    on_iteration: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted Lloyd iterations of many independent 1-D k-means problems.

    ``values`` and ``weights`` ``[B, N]`` (weight 0 = a point that must not pull any
    center, e.g. padding or a pruned weight), ``centers`` ``[B, K]`` the start, ``fixed``
    ``[B, K]`` bool: centers that never move (the exact-zero entry). Each iteration
    assigns every value to its nearest center and moves each free center to the weighted
    mean of its points (an empty center stays put), so the weighted squared error
    ``sum w (x - c)^2`` never increases. Returns ``(centers, codes)``, centers sorted
    ascending per row, codes int64 ``[B, N]``; ``on_iteration(i, centers)`` is called
    after each update (tests use it to watch the error fall).
    """
    values = values.float()
    weights = weights.float()
    centers, order = torch.sort(centers.float(), dim=1)
    fixed = fixed.gather(1, order)
    codes = nearest_sorted(values, centers)
    for iteration in range(iterations):
        total = torch.zeros_like(centers).scatter_add_(1, codes, weights * values)
        mass = torch.zeros_like(centers).scatter_add_(1, codes, weights)
        moved = torch.where((mass > 0) & ~fixed, total / mass.clamp_min(1e-30), centers)
        centers, order = torch.sort(moved, dim=1)
        fixed = fixed.gather(1, order)
        new_codes = nearest_sorted(values, centers)
        if on_iteration is not None:
            on_iteration(iteration, centers)
        if torch.equal(new_codes, codes):
            codes = new_codes
            break
        codes = new_codes
    return centers, codes


# ---------------------------------------------------------------------------- vector k-means


@torch.no_grad()
def assign(points: torch.Tensor, weights: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest center of every point under the weighted distance
    ``D[n, k] = sum_j weights[n, j] * (points[n, j] - centers[k, j])**2``, for ``points``
    and ``weights`` ``[N, d]``, ``centers`` ``[K, d]``: ``(codes int64 [N], distance [N])``.

    The point-only term is dropped for the argmin, so each chunk is one matmul
    ``[w*x, w] @ [-2c, c^2]^T`` (inner size ``2d``)."""
    codes = torch.empty(points.shape[0], dtype=torch.long, device=points.device)
    best = torch.empty(points.shape[0], dtype=torch.float32, device=points.device)
    right = torch.cat([-2 * centers, centers * centers], dim=1).T.contiguous()
    for start in range(0, points.shape[0], _CHUNK):
        x, w = points[start : start + _CHUNK], weights[start : start + _CHUNK]
        left = torch.cat([w * x, w], dim=1)
        value, index = (left @ right).min(dim=1)
        best[start : start + _CHUNK] = (value + (w * x * x).sum(dim=1)).clamp_min(0)
        codes[start : start + _CHUNK] = index
    return codes, best


def _distance_to(points: torch.Tensor, weights: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    difference = points - center
    return (weights * difference * difference).sum(dim=1)


@torch.no_grad()
def kmeans_plus_plus(
    points: torch.Tensor, weights: torch.Tensor, k: int, generator: torch.Generator
) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first center is a random
    point (among those with any weight), each next one is drawn with probability
    proportional to its weighted squared distance from the nearest chosen center. Once
    every point coincides with a chosen center (fewer distinct points than ``k``), the
    remaining centers repeat the first one. ``generator`` is a CPU generator: the draw
    is the same on every device."""
    n = points.shape[0]
    alive = weights.sum(dim=1) > 0
    candidates = torch.nonzero(alive).flatten()
    if candidates.numel() == 0:
        return torch.zeros(k, points.shape[1], device=points.device)
    first = candidates[int(torch.randint(candidates.numel(), (1,), generator=generator))]
    centers = points[first].unsqueeze(0).repeat(k, 1)
    nearest = _distance_to(points, weights, centers[0]).double()
    for i in range(1, k):
        cumulative = torch.cumsum(nearest, dim=0)
        total = float(cumulative[-1])
        if total <= 0:
            break
        draw = torch.rand(1, generator=generator, dtype=torch.float64).to(points.device) * total
        chosen = int(torch.searchsorted(cumulative, draw).clamp_max(n - 1))
        centers[i] = points[chosen]
        nearest = torch.minimum(nearest, _distance_to(points, weights, centers[i]).double())
    return centers


@torch.no_grad()
def kmeans(
    points: torch.Tensor,
    weights: torch.Tensor,
    k: int,
    iterations: int,
    generator: torch.Generator,
    on_iteration: Callable[[int, torch.Tensor], None] | None = None,
    seed_points: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted k-means of ``points`` ``[N, d]`` with per-coordinate ``weights`` ``[N, d]``
    (0 = a pruned coordinate that must not pull any center).

    k-means++ seeding on at most ``seed_points * k`` points drawn at random (all of them
    when N is smaller: then ``N <= k`` distinct points are reproduced exactly), then
    Lloyd iterations over all points (each center moves to the per-coordinate weighted
    mean of its points; an empty center, or a coordinate no point weighs, stays put),
    stopping early when no assignment changes. Returns ``(centers [K, d] float32,
    codes [N] int64)``; ``on_iteration(i, centers)`` is called after each update."""
    points = points.float()
    weights = weights.float()
    n = points.shape[0]
    if n > seed_points * k:
        sample = torch.randperm(n, generator=generator)[: seed_points * k].to(points.device)
        centers = kmeans_plus_plus(points[sample], weights[sample], k, generator)
    else:
        centers = kmeans_plus_plus(points, weights, k, generator)
    codes, _ = assign(points, weights, centers)
    for iteration in range(iterations):
        index = codes.unsqueeze(1).expand_as(points)
        total = torch.zeros_like(centers).scatter_add_(0, index, weights * points)
        mass = torch.zeros_like(centers).scatter_add_(0, index, weights)
        centers = torch.where(mass > 0, total / mass.clamp_min(1e-30), centers)
        new_codes, _ = assign(points, weights, centers)
        if on_iteration is not None:
            on_iteration(iteration, centers)
        if torch.equal(new_codes, codes):
            break
        codes = new_codes
    return centers, codes


# ---------------------------------------------------------------------------- calibration


@torch.no_grad()
def input_second_moments(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    batches: Sequence[torch.Tensor],
    progress: Callable[[Iterable[Any], str, int], Iterable[Any]] | None = None,
) -> dict[str, torch.Tensor]:
    """``E[x_i^2]`` of every input column of each module over the calibration windows
    (float32 ``[in]``), from one forward of the unmodified model: the diagonal of the
    layer's input Hessian ``X^T X / n``, the per-column importance of a weight's error
    (SqueezeLLM and AWQ weigh by such activation statistics)."""
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = dict.fromkeys(modules, 0)

    def record(name: str, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1]).float()
        square = (flat * flat).sum(dim=0)
        sums[name] = sums[name] + square if name in sums else square
        rows[name] += flat.shape[0]

    device = next(model.parameters()).device
    iterable: Iterable[Any] = batches if progress is None else progress(batches, "calibration", len(batches))
    with record_inputs(modules, record):
        for batch in iterable:
            model(batch.to(device), use_cache=False)
    missing = [name for name in modules if rows[name] == 0]
    if missing:
        raise RuntimeError(f"layer {missing[0]!r} received no input during calibration")
    return {name: sums[name] / rows[name] for name in modules}
