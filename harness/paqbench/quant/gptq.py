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
    cols = W.shape[1]
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
        W = W.index_select(1, perm)  # index_select: the gather of W[:, perm], faster
        H = H.index_select(0, perm).index_select(1, perm)
        if keep is not None:
            keep = keep.index_select(1, perm)

    U, damp_used = _inverse_hessian_factor(H, damp)
    del H

    # group of each (possibly permuted) column position
    if static_groups:
        position_group = static_index.long() if perm is None else static_index.long()[perm]
    else:
        position_group = torch.arange(cols, device=device) // group
    solver = _ColumnSolver(W, U, keep, config, group, position_group, static_scale, static_zero)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        Err1 = solver.quantize_block(i1, i2)
        errors = Err1.double().flatten()
        loss += errors.dot(errors) / 2
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    codes, g_idx = solver.codes, position_group
    if perm is not None:
        inverse = torch.argsort(perm)
        codes = codes.index_select(1, inverse)
        g_idx = position_group[inverse]
    quantized = QuantizedWeight.from_solver(codes, solver.scales, solver.zeros, g_idx, config)
    return GPTQResult(quantized, float(loss), damp_used, int(dead.sum()))


class _ColumnSolver:
    """The column loop of :func:`gptq_quantize`, one lazy-update block at a time.

    A column is a few thousand numbers, so the loop is bound by the number of tensor
    operations per column and by how fast the in-block update runs. Each column costs
    ten elementwise operations and two views: the block is worked on transposed (a
    column is one contiguous row, and the update of the later columns runs over
    contiguous rows: about ten times faster than over ``W[:, i:]``), the per-column views
    are made once per block (``unbind``), results are written in place (``out=``), codes
    stay float in a block buffer converted once, static grids are gathered once per block
    and the loss is summed once per block. Every code and every weight update is the
    same elementwise arithmetic as the textbook loop (no fused multiply-add, the same
    matrix products in the same layout), so the results are bitwise the same
    (tests/test_gptq_speed_paths.py keeps that loop as the reference).
    """

    def __init__(
        self, W: torch.Tensor, U: torch.Tensor, keep: torch.Tensor | None, config: QuantConfig, group: int,
        position_group: torch.Tensor, static_scale: torch.Tensor | None, static_zero: torch.Tensor | None,
    ) -> None:
        rows, cols = W.shape
        self.W, self.U, self.keep, self.config, self.group = W, U, keep, config, group
        self.position_group = position_group
        self.static = static_scale is not None
        self.codes = torch.zeros(rows, cols, dtype=torch.uint8, device=W.device)
        if static_scale is not None and static_zero is not None:
            self.scales, self.zeros = static_scale, static_zero
        else:
            self.scales = torch.ones(rows, config.n_groups(cols), dtype=torch.float32, device=W.device)
            self.zeros = torch.zeros(rows, config.n_groups(cols), dtype=torch.float32, device=W.device)
        #: the current dynamic grid (scale, zero), each ``[rows]``; a group may span several blocks
        self.grid: tuple[torch.Tensor, torch.Tensor] | None = None

    def quantize_block(self, i1: int, i2: int) -> torch.Tensor:
        """Quantize columns ``i1:i2`` (codes and grids written), applying each column's
        error to the block's later columns; returns the scaled errors ``Err1`` ``[rows, i2 - i1]``.

        The block is worked on transposed (one contiguous row per column), so every
        per-column operation and every update runs over contiguous memory."""
        W1t = self.W[:, i1:i2].t().contiguous()
        Err1t = torch.zeros_like(W1t)
        C1t = torch.empty_like(W1t)  # codes, as float until the block is done
        U1 = self.U[i1:i2, i1:i2]
        maxq = self.config.maxq
        w_rows, e_rows, c_rows = W1t.unbind(), Err1t.unbind(), C1t.unbind()
        u_cols, diagonal = U1.unsqueeze(-1).unbind(), U1.diagonal().unbind()
        k_rows = None if self.keep is None else self.keep[:, i1:i2].t().contiguous().unbind()
        if self.static:
            index = self.position_group[i1:i2]
            s_rows, z_rows = self.scales.t()[index].unbind(), self.zeros.t()[index].unbind()
        for i in range(i2 - i1):
            if self.static:
                scale, zero = s_rows[i], z_rows[i]
            else:
                if (i1 + i) % self.group == 0:
                    self.grid = self._choose_grid(W1t, Err1t, i, i1, i2)
                assert self.grid is not None
                scale, zero = self.grid
            w, err, c = w_rows[i], e_rows[i], c_rows[i]
            # quantize_codes(w, scale, zero, maxq), written into the code buffer
            torch.div(w, scale, out=c).round_().add_(zero).clamp_(0, maxq)
            if k_rows is not None:
                torch.where(k_rows[i], c, zero, out=c)
            q = torch.sub(c, zero).mul_(scale)
            torch.sub(w, q, out=err).div_(diagonal[i])
            W1t[i + 1:].sub_(u_cols[i][i + 1:] * err)
        self.codes[:, i1:i2] = C1t.t().to(torch.uint8)
        return Err1t.t().contiguous()

    def _choose_grid(
        self, W1t: torch.Tensor, Err1t: torch.Tensor, i: int, i1: int, i2: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The min-max grid of the group starting at column ``j = i1 + i`` (recorded in
        ``scales``/``zeros``), from its weights with their pending updates applied."""
        j, cols = i1 + i, self.W.shape[1]
        end = min(j + self.group, cols)
        segment = W1t[i : min(end, i2) - i1].t()
        if end > i2:  # the group runs past this block: apply its pending updates
            # the errors so far, laid out as an untransposed block buffer (as the
            # block-end product uses them), so the product rounds the same way
            Err1 = torch.zeros(Err1t.shape[1], Err1t.shape[0], dtype=Err1t.dtype, device=Err1t.device)
            Err1[:, :i] = Err1t[:i].t()
            later = self.W[:, i2:end] - Err1[:, :i] @ self.U[i1:j, i2:end]
            segment = torch.cat([segment, later], dim=1)
        if self.keep is not None:
            segment = segment * self.keep[:, j:end]
        scale, zero = minmax_params(segment.min(dim=1).values, segment.max(dim=1).values,
                                    self.config.bits, self.config.symmetric)
        g = j // self.group
        self.scales[:, g], self.zeros[:, g] = scale, zero
        return scale, zero


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
