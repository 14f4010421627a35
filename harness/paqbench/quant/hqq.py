"""HQQ: data-free half-quadratic quantization (Badri & Shaji 2023), on paqbench's integer grid.

Written from the algorithm (the ``hqq`` package's ``optimize_weights_proximal_legacy``),
not copied. Per group, starting from the min-max grid, with inverse scale ``s`` and zero
``z`` (float):

1. ``q = clamp(round(W * s + z))``, ``W_r = (q - z) / s``;
2. shrinkage of the error: ``W_e = shrink_lp(W - W_r, beta)``, the generalized soft
   threshold of the lp-norm (p < 1: a sparse error model, outliers are allowed to miss);
3. closed-form zero: ``z = mean(q - (W - W_e) * s)``;
4. ``beta *= kappa``; stop after ``iterations`` or when no group's mean |error| falls.

Deviations, each for a reason:

- the best zero is kept *per group* (the reference stops on the whole tensor's error);
- paqbench's grids contain 0.0 exactly (pruned weights are stored as the zero code, see
  :mod:`paqbench.quant.quantizer`), so the optimized zero is rounded to an integer code in
  ``[0, maxq]`` and the scale is refitted by least squares for that zero (codes and scale
  alternated a few times), then stored as float16 and the codes recomputed with the
  stored scale;
- a group keeps the min-max (RTN) grid where HQQ's grid would not reduce both its squared
  error and its |W|-weighted squared error: HQQ never does worse than RTN on a group.

The result is a :class:`~paqbench.quant.quantizer.QuantizedWeight`, packed into the
ordinary :class:`~paqbench.quant.linear.QuantizedLinear`: every kernel, later step,
storage count and export applies unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paqbench.quant.quantizer import SCALE_DTYPE, QuantConfig, QuantizedWeight, quantize_rtn

_MIN_SCALE = 2.0**-24


@dataclass(frozen=True)
class HQQConfig:
    """The proximal solver's settings (defaults: the reference's)."""

    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    iterations: int = 20
    refit_steps: int = 3


@dataclass
class HQQResult:
    """The quantized weight, and how many groups kept HQQ's grid (the rest kept RTN's)."""

    quantized: QuantizedWeight
    groups: int
    hqq_groups: int


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalized soft-thresholding, the proximal step of ``|x|^p / beta`` (p <= 1)."""
    threshold = torch.full_like(x, 1.0 / beta) if p == 1 else (x.abs() + 1e-8).pow(p - 1) / beta
    return torch.sign(x) * torch.relu(x.abs() - threshold)


def _masked_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return (x * keep).sum(-1, keepdim=True) / keep.sum(-1, keepdim=True).clamp(min=1)


def optimize_zero(
    w: torch.Tensor, keep: torch.Tensor, inv_scale: torch.Tensor, zero: torch.Tensor, maxq: int, cfg: HQQConfig
) -> torch.Tensor:
    """The float zero point of each group (``w`` ``[..., n]``, the group on the last dim)
    after the half-quadratic iterations; the best one seen per group is returned."""
    beta = cfg.beta
    best_zero = zero.clone()
    best_error = torch.full_like(zero, float("inf"))
    for _ in range(cfg.iterations):
        q = torch.clamp(torch.round(w * inv_scale + zero), 0, maxq)
        w_r = (q - zero) / inv_scale
        error = _masked_mean((w - w_r).abs(), keep)
        better = error < best_error
        if not bool(better.any()):
            break
        best_error = torch.where(better, error, best_error)
        best_zero = torch.where(better, zero, best_zero)
        w_e = shrink_lp(w - w_r, beta, cfg.lp_norm)
        zero = _masked_mean(q - (w - w_e) * inv_scale, keep)
        beta *= cfg.kappa
    return best_zero


def refit_scale(
    w: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int, steps: int
) -> torch.Tensor:
    """Least-squares scale for an integer ``zero``: alternate codes and
    ``scale = sum(w (q - z)) / sum((q - z)^2)``; returns the float16-stored scale (as float32)."""
    for _ in range(steps):
        q = torch.clamp(torch.round(w / scale) + zero, 0, maxq) - zero
        num = (w * q * keep).sum(-1, keepdim=True)
        den = (q * q * keep).sum(-1, keepdim=True)
        fitted = num / den.clamp(min=1e-12)
        scale = torch.where((den > 0) & (fitted > 0), fitted, scale)
    return scale.clamp(min=_MIN_SCALE).to(SCALE_DTYPE).float()


def _hqq_grid(
    w: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int, cfg: HQQConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """HQQ's (scale, integer zero) for groups ``w`` ``[out, G, n]`` from the min-max grid."""
    inv_scale = 1.0 / scale
    zero_f = optimize_zero(w, keep, inv_scale, zero, maxq, cfg)
    zero_i = torch.round(zero_f).clamp(0, maxq)
    return refit_scale(w, keep, scale, zero_i, maxq, cfg.refit_steps), zero_i


def group_errors(w: torch.Tensor, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group (last dim): squared error and |W|-weighted squared error."""
    diff2 = (w - w_hat) ** 2
    return diff2.sum(-1, keepdim=True), (w.abs() * diff2).sum(-1, keepdim=True)


def _quantize_block(
    w: torch.Tensor, keep: torch.Tensor, rtn_scale: torch.Tensor, rtn_zero: torch.Tensor, maxq: int, cfg: HQQConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes ``[out, G, n]``, scale and zero ``[out, G, 1]`` of equal-width groups; per
    group the HQQ grid where it beats RTN on both errors, else RTN's grid."""
    scale, zero = _hqq_grid(w, keep, rtn_scale, rtn_zero, maxq, cfg)

    def codes_of(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.where(keep, torch.clamp(torch.round(w / s) + z, 0, maxq), z)

    q_hqq, q_rtn = codes_of(scale, zero), codes_of(rtn_scale, rtn_zero)
    sq_h, wt_h = group_errors(w, (q_hqq - zero) * scale)
    sq_r, wt_r = group_errors(w, (q_rtn - rtn_zero) * rtn_scale)
    use = (sq_h <= sq_r) & (wt_h <= wt_r)
    return torch.where(use, q_hqq, q_rtn), torch.where(use, scale, rtn_scale), torch.where(use, zero, rtn_zero)


@torch.no_grad()
def quantize_hqq(
    weight: torch.Tensor, config: QuantConfig, keep: torch.Tensor | None = None, cfg: HQQConfig | None = None
) -> HQQResult:
    """HQQ quantization of ``weight`` ``[out, in]`` on ``config``'s asymmetric group grid
    (contiguous groups, the last one shorter where the width is not a multiple). Where
    ``keep`` is False the code is the zero point: those weights dequantize to exactly 0."""
    if config.symmetric:
        raise ValueError("HQQ optimizes the zero point: use an asymmetric grid (symmetric=False)")
    cfg = cfg or HQQConfig()
    weight = weight.detach().float()
    out_features, in_features = weight.shape
    keep_b = torch.ones_like(weight, dtype=torch.bool) if keep is None else keep.to(weight.device, torch.bool)
    weight = weight * keep_b
    rtn = quantize_rtn(weight, config, keep_b)  # the starting grid, and the per-group fallback
    width = in_features if config.group_size == -1 else config.group_size
    codes, scales, zeros = [], [], []
    for start, stop in _blocks(in_features, width):
        n = min(width, stop - start)
        groups = slice(start // width, -(-stop // width))
        w = weight[:, start:stop].reshape(out_features, -1, n)
        k = keep_b[:, start:stop].reshape(out_features, -1, n)
        s0 = rtn.scales[:, groups].float().unsqueeze(-1)
        z0 = rtn.zeros[:, groups].float().unsqueeze(-1)
        q, s, z = _quantize_block(w, k, s0, z0, config.maxq, cfg)
        codes.append(q.reshape(out_features, -1))
        scales.append(s.squeeze(-1))
        zeros.append(z.squeeze(-1))
    scale, zero = torch.cat(scales, 1), torch.cat(zeros, 1)
    quantized = QuantizedWeight(
        codes=torch.cat(codes, 1).to(torch.uint8), scales=scale.to(SCALE_DTYPE), zeros=zero.to(torch.uint8),
        g_idx=rtn.g_idx, config=config,
    )
    changed = (scale != rtn.scales.float()) | (zero != rtn.zeros.float())
    return HQQResult(quantized, groups=scale.numel(), hqq_groups=int(changed.sum()))


def _blocks(in_features: int, width: int) -> list[tuple[int, int]]:
    """Column ranges of equal-width groups: all the full groups, then the short last one."""
    full = (in_features // width) * width
    blocks = [(0, full)] if full else []
    if full < in_features:
        blocks.append((full, in_features))
    return blocks
