"""GPTQ (Frantar et al., 2022) on one weight matrix, given its layer's input Hessian.

Columns are quantized one at a time; the error each one makes is spread over the
columns not yet quantized, weighted by the inverse Hessian ``H^-1`` of the layer-wise
objective ``||W X - Q X||^2`` (``H = 2 X X^T / n``). Following the paper, the upper
Cholesky factor of ``H^-1`` replaces repeated inverse updates, updates are applied
lazily in blocks of ``block_size`` columns, and ``H`` is dampened by
``damp * mean(diag H)``. Options: act-order (columns in order of decreasing ``diag H``,
the group of each column recorded in ``g_idx``), static groups (grids fixed from the
unquantized weight before act-order), any group size including a shorter last group.

Differences from the reference code, on purpose:

- Mask-aware: where ``keep`` is False the code is the zero point (the weight becomes
  exactly 0.0), and the error of forcing it to zero is compensated like any other
  quantization error (the joint prune+quantize update of SparseGPT). Pruned weights may
  drift during earlier updates but always end at exactly 0.
- Dead columns (inputs that were always zero in calibration) are rounded to nearest
  rather than zeroed: with no information about them, keeping the weight is safer for
  inputs calibration did not show.
- When a group's grid is chosen, the pending in-block updates of its columns are applied
  first, so the grid fits the weights as they will be quantized.
- If the Cholesky factorisation fails, damping is raised tenfold (up to three times) and
  the damping used is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from paqbench.quant.quantizer import (
    QuantConfig,
    QuantizedWeight,
    group_params,
    minmax_params,
    quantize_codes,
)


class HessianAccumulator:
    """Running ``H = 2 X X^T / n`` over the ``n`` input rows (tokens) seen so far, in
    float32 on ``device``."""

    def __init__(self, columns: int, device: torch.device | str | None = None) -> None:
        self.hessian = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.rows = 0

    @torch.no_grad()
    def add(self, inputs: torch.Tensor) -> None:
        """Add a batch of layer inputs ``[..., columns]``."""
        x = inputs.reshape(-1, inputs.shape[-1]).to(device=self.hessian.device, dtype=torch.float32)
        total = self.rows + x.shape[0]
        if total == 0:
            return
        self.hessian.mul_(self.rows / total)
        x = x * math.sqrt(2.0 / total)
        self.hessian.addmm_(x.T, x)
        self.rows = total


@dataclass
class GPTQResult:
    quantized: QuantizedWeight
    #: sum over weights of (w - q)^2 / (2 [H^-1]_jj): GPTQ's own loss estimate
    loss: float
    #: the relative damping that made the Hessian factorisable
    damp: float
    #: input columns that calibration never activated
    dead_columns: int


@torch.no_grad()
def working_copies(weight: torch.Tensor, hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 copies of ``weight`` ``[out, in]`` (moved to the Hessian's device) and of
    ``hessian`` ``[in, in]`` that a second-order solver (GPTQ, SparseGPT) may overwrite;
    refuses a Hessian of the wrong width."""
    W = weight.detach().to(device=hessian.device, dtype=torch.float32).clone()
    H = hessian.detach().to(dtype=torch.float32).clone()
    if H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"Hessian {tuple(H.shape)} does not match weight {tuple(W.shape)}")
    return W, H


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    config: QuantConfig,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    static_groups: bool = False,
    keep: torch.Tensor | None = None,
) -> GPTQResult:
    """Quantize ``weight`` ``[out, in]`` minimising ``||(W - Q) X||^2`` for the inputs
    whose Hessian is ``hessian`` ``[in, in]``; computed on the Hessian's device."""
    device = hessian.device
    W, H = working_copies(weight, hessian)
    rows, cols = W.shape
    maxq = config.maxq
    if keep is not None:
        keep = keep.to(device=device, dtype=torch.bool)
        W *= keep

    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0

    group = cols if config.group_size == -1 else config.group_size
    n_groups = config.n_groups(cols)
    static_scale = static_zero = None
    if static_groups:
        static_index = config.group_index(cols, device)
        static_scale, static_zero = group_params(W, static_index, n_groups, config)

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        if keep is not None:
            keep = keep[:, perm]

    U, damp_used = _inverse_hessian_factor(H, damp)
    del H

    # group of each (possibly permuted) column position
    if static_groups:
        position_group = static_index.long() if perm is None else static_index.long()[perm]
    else:
        position_group = torch.arange(cols, device=device) // group
    codes = torch.zeros(rows, cols, dtype=torch.uint8, device=device)
    scales = torch.ones(rows, n_groups, dtype=torch.float32, device=device)
    zeros = torch.zeros(rows, n_groups, dtype=torch.float32, device=device)
    if static_groups:
        scales, zeros = static_scale, static_zero
    loss = torch.zeros((), dtype=torch.float64, device=device)
    scale = zero = None

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if static_groups:
                g = int(position_group[j])
                scale, zero = scales[:, g], zeros[:, g]
            elif j % group == 0:
                end = min(j + group, cols)
                segment = W1[:, i : min(end, i2) - i1]
                if end > i2:  # the group runs past this block: apply its pending updates
                    later = W[:, i2:end] - Err1[:, :i] @ U[i1:j, i2:end]
                    segment = torch.cat([segment, later], dim=1)
                if keep is not None:
                    segment = segment * keep[:, j:end]
                scale, zero = minmax_params(segment.min(dim=1).values, segment.max(dim=1).values,
                                            config.bits, config.symmetric)
                g = j // group
                scales[:, g], zeros[:, g] = scale, zero
            w = W1[:, i]
            d = U1[i, i]
            c = quantize_codes(w, scale, zero, maxq)
            if keep is not None:
                c = torch.where(keep[:, j], c, zero)
            q = (c - zero) * scale
            codes[:, j] = c.to(torch.uint8)
            err = (w - q) / d
            loss += (err.double() ** 2).sum() / 2
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    g_idx = position_group
    if perm is not None:
        inverse = torch.argsort(perm)
        codes = codes[:, inverse]
        g_idx = position_group[inverse]
    quantized = QuantizedWeight.from_solver(codes, scales, zeros, g_idx, config)
    return GPTQResult(quantized, float(loss), damp_used, int(dead.sum()))


def _inverse_hessian_factor(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, raising the damping
    tenfold (up to three times) while the factorisation fails."""
    mean_diag = float(torch.diag(H).mean())
    for _ in range(4):
        dampened = H.clone()
        dampened.diagonal().add_(damp * mean_diag)
        lower, info = torch.linalg.cholesky_ex(dampened)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                return upper, damp
        damp = max(damp * 10, 1e-3)
    raise RuntimeError(
        f"the layer's Hessian is not positive definite even with damping {damp / 10:g}; "
        "use more or longer calibration windows"
    )
