"""SparseGPT (Frantar & Alistarh, 2023) on one weight matrix, given its input Hessian.

Columns are processed left to right as in GPTQ: when a column is pruned (or quantized)
its error is spread over the columns not yet processed through the upper Cholesky
factor ``U`` of ``H^-1`` (``H = 2 X X^T / n``, dampened by ``damp * mean(diag H)``), so the
kept weights compensate and ``||W X - W' X||^2`` stays small. The mask is chosen
adaptively per block of ``block_size`` columns, just before the block is processed, from
the OBS saliency ``w^2 / [U]_jj^2`` of the *already updated* weights; an N:M pattern
chooses its ``N`` zeros per group of ``M`` columns the same way. Optionally the kept
weights are quantized in the same loop (SparseGPT's joint sparsification +
quantization), either on fresh min-max grids or on a fixed grid (the grid of an
already quantized layer, whose codes are then rewritten).

Differences from the reference code, on purpose:

- Exact counts: block ``b`` prunes ``round(s * rows * end_b) - pruned so far`` weights
  (the reference thresholds each block at ``int(s * numel)``, which overshoots by one per
  block and is not exact per layer), so the layer ends at exactly ``round(s * numel)``.
- An earlier recorded mask is respected: those weights are zero from the start, the
  first to go in their block, and count toward the target (a block whose earlier zeros
  exceed its share keeps them all, so the layer may end above the target).
- Dead input columns (never active in calibration) are kept like GPTQ here keeps them,
  not zeroed: nothing is known about them.
- Quantization grids are group-wise (any ``group_size``, shorter last group) and chosen
  when a group starts, from its weights with pending updates applied and pruned weights
  excluded; every grid contains 0, so pruned codes are the zero point (exactly 0.0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paqbench.prune.nm import NMPattern, check_width
from paqbench.quant.gptq import _inverse_hessian_factor, working_copies
from paqbench.quant.quantizer import QuantConfig, QuantizedWeight, minmax_params, quantize_codes


@dataclass
class SparseGPTResult:
    #: the pruned (and, with quantization, dequantized) weight, float32 ``[out, in]``
    weight: torch.Tensor
    #: keep-mask (True = kept), including any earlier mask
    keep: torch.Tensor
    #: the codes etc. when quantized jointly, else None
    quantized: QuantizedWeight | None
    #: SparseGPT's loss estimate: sum over weights of (w - q)^2 / (2 [U]_jj^2)
    loss: float
    #: the relative damping that made the Hessian factorisable
    damp: float
    #: input columns calibration never activated
    dead_columns: int


@dataclass(frozen=True)
class FixedGrid:
    """An existing quantization grid to requantize onto: ``scales`` / ``zeros`` ``[out, G]``
    (zeros as codes), ``g_idx`` ``[in]``, and the config it was made with."""

    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    config: QuantConfig


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float = 0.5,
    pattern: NMPattern | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    keep: torch.Tensor | None = None,
    quant: QuantConfig | None = None,
    grid: FixedGrid | None = None,
) -> SparseGPTResult:
    """Prune ``weight`` ``[out, in]`` to ``sparsity`` (or to ``pattern``) minimising
    ``||(W - W') X||^2`` for the inputs whose Hessian is ``hessian``; with ``quant`` (fresh
    grids) or ``grid`` (fixed grid) the kept weights are quantized in the same pass.
    Computed on the Hessian's device."""
    if quant is not None and grid is not None:
        raise ValueError("give either a fresh quantization config or a fixed grid, not both")
    device = hessian.device
    W, H = working_copies(weight, hessian)
    rows, cols = W.shape
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if pattern is not None:
        check_width(cols, pattern)
        if block_size % pattern.m:
            raise ValueError(f"block_size {block_size} must be a multiple of the pattern's M={pattern.m}")
    prior = None
    if keep is not None:
        prior = keep.to(device=device, dtype=torch.bool)
        W *= prior

    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    U, damp_used = _inverse_hessian_factor(H, damp)
    del H

    config = quant if quant is not None else (grid.config if grid is not None else None)
    quantizing = config is not None
    if quantizing:
        maxq = config.maxq
        codes = torch.zeros(rows, cols, dtype=torch.uint8, device=device)
        if grid is not None:
            g_idx = grid.g_idx.to(device=device, dtype=torch.long)
            scales = grid.scales.to(device=device, dtype=torch.float32)
            zeros = grid.zeros.to(device=device, dtype=torch.float32)
        else:
            g_idx = config.group_index(cols, device).long()
            n_groups = config.n_groups(cols)
            scales = torch.ones(rows, n_groups, dtype=torch.float32, device=device)
            zeros = torch.zeros(rows, n_groups, dtype=torch.float32, device=device)
        group = cols if config.group_size == -1 else config.group_size
    mask = torch.ones(rows, cols, dtype=torch.bool, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    pruned_so_far = 0
    scale = zero = None

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        diag1 = torch.diag(U1)
        prior1 = prior[:, i1:i2] if prior is not None else None
        drop1 = torch.zeros(rows, count, dtype=torch.bool, device=device)
        if pattern is None:
            saliency = W1.pow(2) / diag1.pow(2).unsqueeze(0)
            n_drop = round(sparsity * rows * i2) - pruned_so_far
            if prior1 is not None:
                saliency[~prior1] = -torch.inf
                n_drop = max(n_drop, int((~prior1).sum()))
            if n_drop > 0:
                drop1.view(-1)[torch.topk(saliency.flatten(), n_drop, largest=False).indices] = True
            pruned_so_far += max(n_drop, 0)

        for i in range(count):
            j = i1 + i
            if pattern is not None and i % pattern.m == 0:
                span = slice(i, i + pattern.m)
                saliency = W1[:, span].pow(2) / diag1[span].pow(2).unsqueeze(0)
                if prior1 is not None:
                    saliency[~prior1[:, span]] = -torch.inf
                drop1.scatter_(1, i + torch.topk(saliency, pattern.n, dim=1, largest=False).indices, True)
                if prior1 is not None:
                    drop1[:, span] |= ~prior1[:, span]
            w = W1[:, i]
            d = U1[i, i]
            q = torch.where(drop1[:, i], torch.zeros_like(w), w)
            if quantizing:
                if grid is not None:
                    g = int(g_idx[j])
                    scale, zero = scales[:, g], zeros[:, g]
                elif j % group == 0:
                    end = min(j + group, cols)
                    inside = min(end, i2) - i1
                    segment = W1[:, i:inside] * ~drop1[:, i:inside]
                    if end > i2:  # the group runs past this block: apply its pending updates
                        later = W[:, i2:end] - Err1[:, :i] @ U[i1:j, i2:end]
                        if prior is not None:
                            later = later * prior[:, i2:end]
                        segment = torch.cat([segment, later], dim=1)
                    scale, zero = minmax_params(segment.min(dim=1).values, segment.max(dim=1).values,
                                                config.bits, config.symmetric)
                    g = j // group
                    scales[:, g], zeros[:, g] = scale, zero
                c = quantize_codes(q, scale, zero, maxq)
                c = torch.where(drop1[:, i], zero, c)
                codes[:, j] = c.to(torch.uint8)
                q = (c - zero) * scale
            Q1[:, i] = q
            err = (w - q) / d
            loss += (err.double() ** 2).sum() / 2
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
        mask[:, i1:i2] = ~drop1

    quantized = None
    if quantizing:
        quantized = QuantizedWeight.from_solver(codes, scales, zeros, g_idx, config)
        W = quantized.dequantize()
    return SparseGPTResult(W, mask, quantized, float(loss), damp_used, int(dead.sum()))
