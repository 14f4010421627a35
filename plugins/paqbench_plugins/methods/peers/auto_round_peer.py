"""auto-round: Intel's AutoRound (signed-gradient rounding and clipping) as a step.

AutoRound tunes each decoder block's rounding offsets and min/max clipping on the run's own
calibration windows (``ctx.calibration_batches()``, passed as token tensors) for ``iters``
steps, then leaves every quantized Linear holding its fake-quantized weight with the
``scale`` and ``zp`` it chose. Each one is converted into a packed QuantizedLinear: codes
``round(W / scale) + zp``, checked bitwise against the weight auto-round left (the record
says where they differ). auto-round itself leaves layers with a dimension not divisible by
32 unquantized (its rule for integer weight-only schemes); those stay dense and are listed.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from paqbench import Params, RunContext, hookimpl
from paqbench.blockwise.steps import checked_targets
from paqbench.peers import ConversionRecord, Peer, PeerMethod
from paqbench.peers.convert import ConversionError, install_packed, integer_weight, layer_facts
from paqbench.peers.params import RequireExact, RowGroupSize
from paqbench.text import prose

PEER = Peer(module="auto_round", distribution="auto-round", extra="auto-round")


class AutoRoundParams(Params):
    bits: Literal[2, 3, 4, 8] = Field(4, description="bits per weight code")
    group_size: RowGroupSize = Field(128, ge=-1, description="input columns per scale and zero point; -1: one per row")
    symmetric: bool = Field(True, description="symmetric grid (auto-round's sym)")
    iters: int = Field(200, ge=0, description="tuning steps per block (auto-round's default 200; 0: RTN)")
    lr: float | None = Field(None, gt=0, description="learning rate of the rounding offsets; default: 1/iters")
    batch_size: int = Field(8, gt=0, description="calibration windows per tuning step")
    amp: bool = Field(
        False, description="let auto-round tune in its mixed precision (bfloat16 on CPU), which casts the whole model "
        "to bfloat16 (recorded; cast back afterwards). Default: tune in the run's dtype"
    )
    require_exact: RequireExact = False
    targets: str | None = Field(None, description=prose("""
        regex over module names converted afterwards; default: the Linear layers inside decoder blocks (auto-round
        decides what it quantizes; a layer it changed outside these is an error)
    """))


class AutoRoundPeer(PeerMethod):
    name = "auto-round"
    family = "quantize"
    peer = PEER
    description = prose("""
        Intel's AutoRound (peer implementation): signed-gradient tuning of rounding and clipping per decoder block on
        the run's calibration windows, `iters` steps, `bits`/`group_size`/`symmetric`; each quantized Linear becomes a
        packed QuantizedLinear of auto-round's scales and zero points, checked bitwise against its fake-quantized
        weight. Layers auto-round skips (a dimension not divisible by 32) stay dense, listed. Needs auto-round (pip
        install 'paqbench[auto-round]'). Cost: iters x blocks forward/backward passes (tens of minutes for 135M at 200
        iters on CPU).
    """)
    Params = AutoRoundParams
    accepts = frozenset({"dense"})
    needs_calibration = True

    def apply(self, model: nn.Module, params: AutoRoundParams, ctx: RunContext) -> dict[str, Any]:
        PEER.load()
        from auto_round import AutoRound

        targets = checked_targets(model, params.targets, self, ctx)
        dtype_before = next(model.parameters()).dtype
        before = {name: module.weight.detach().clone() for name, module in targets.items()}
        facts = {name: layer_facts(module) for name, module in targets.items()}
        del targets
        batches = ctx.calibration_batches()
        seqlen = min(int(b.shape[-1]) for b in batches)
        kwargs: dict[str, Any] = {"lr": params.lr} if params.lr is not None else {}
        try:
            compressor = AutoRound(
                model, ctx.tokenizer, bits=params.bits, group_size=params.group_size, sym=params.symmetric,
                iters=params.iters, nsamples=len(batches), seqlen=seqlen, batch_size=min(params.batch_size,
                len(batches)), dataset=[b.reshape(1, -1)[:, :seqlen] for b in batches], device_map=str(ctx.device),
                seed=ctx.seed, enable_torch_compile=False, amp=params.amp, **kwargs,
            )
            compressor.quantize()
        except Exception as exc:
            message = " ".join(str(exc).split())
            raise RuntimeError(f"auto-round failed: {type(exc).__name__}: {message[:600]}") from exc
        model.eval()
        cast = next(model.parameters()).dtype
        if cast != dtype_before:
            model.to(dtype_before)
        stray = [n for n, m in model.named_modules() if n not in before and torch.is_tensor(getattr(m, "scale", None))
                 and isinstance(m, nn.Linear) and getattr(m, "bits", 16) < 16]
        if stray:
            raise ConversionError(f"auto-round quantized {stray[0]!r}, outside the step's targets; widen `targets`")
        record = ConversionRecord()
        skipped = []
        with torch.no_grad():
            for name in ctx.progress(list(before), "auto-round convert", total=len(before)):
                module = model.get_submodule(name)
                bias, mask, dtype = facts.pop(name)
                if int(getattr(module, "bits", 16)) >= 16 or not torch.is_tensor(getattr(module, "scale", None)):
                    if not torch.equal(module.weight, before[name].to(cast).to(module.weight.dtype)):
                        raise ConversionError(f"auto-round changed {name!r} without quantizing it")
                    skipped.append(name)
                    continue
                record.add(convert_layer(model, name, module, params, bias, mask, dtype))
        if not record.layers:
            raise ConversionError("auto-round quantized none of the targeted layers")
        record.check(params.require_exact, "auto-round")
        facts_out: dict[str, Any] = {}
        if cast != dtype_before:
            facts_out["model_cast"] = (f"auto-round cast the model to {cast} (amp); cast back to {dtype_before}: "
                                       f"weights it did not quantize carry {cast} rounding")
        return {**PEER.facts(), **facts_out, "bits": params.bits, "group_size": params.group_size,
                "iters": params.iters, "calibration_windows": len(batches), "left_dense_by_auto_round": skipped,
                **record.summary()}


def convert_layer(model: nn.Module, name: str, module: nn.Module, params: AutoRoundParams, bias, mask, dtype):
    """Packed codes of one auto-round layer: ``W = (code - zp) * scale`` per row and group."""
    weight = module.weight.detach().float()
    out_features, in_features = weight.shape
    scale = module.scale.detach().reshape(out_features, -1)
    groups = scale.shape[1]
    zp = module.zp
    zero = torch.as_tensor(zp, dtype=torch.float32, device=weight.device)
    zero = zero.reshape(1, 1).expand(out_features, groups) if zero.numel() == 1 else zero.reshape(out_features, -1)
    size = in_features // groups
    expand = (lambda t: t.float().repeat_interleave(size, dim=1)) if groups > 1 else (lambda t: t.float())
    codes = torch.clamp(torch.round(weight / expand(scale)) + expand(zero), 0, (1 << params.bits) - 1)
    qmin = 0  # auto-round's codes are unsigned: zp in [0, 2**bits)
    quantized, note = integer_weight(codes.to(torch.int32), scale, zero.round().to(torch.int32), params.bits, qmin)
    return install_packed(model, name, quantized, module.weight.detach(), note, bias, mask, dtype)


@hookimpl
def paqbench_register_methods(register):
    register(AutoRoundPeer)
