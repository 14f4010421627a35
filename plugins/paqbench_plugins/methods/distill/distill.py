"""``distill``: recover a compressed model by distilling the uncompressed one into it."""

from __future__ import annotations

import gc
import time
from typing import Any

from pydantic import Field
from torch import nn

from paqbench import Method, Params, RunContext, hookimpl
from paqbench.blockwise.steps import checked_targets
from paqbench.data.calibration import build_calibration
from paqbench.distill import DistillConfig, distill, select_trainable
from paqbench.text import prose


class DistillParams(Params):
    steps: int = Field(100, gt=0, description="optimizer steps (--limit caps them too)")
    batch_size: int = Field(1, gt=0, description="token windows per step")
    lr: float = Field(1e-4, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(
        0, ge=0, description="linear warm-up steps before the cosine decay to zero"
    )
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the KD loss")
    alpha: float = Field(
        1.0, ge=0, le=1,
        description="weight of the KD loss; 1 - alpha goes to next-token cross-entropy on the same text",
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; null: none")
    targets: str | None = Field(
        None, description="regex over module names; default: the Linear layers inside decoder blocks"
    )
    norms: bool = Field(True, description="also train every normalisation layer's parameters")
    embeddings: bool = Field(
        False, description="also train the input embedding (and the LM head when it is tied to it)"
    )
    dataset: str | None = Field(None, description="training text; default: the suite's calibration dataset")
    split: str | None = Field(None, description="its split; default: the calibration split")
    n_samples: int | None = Field(
        None, gt=0, description="token windows drawn; default: the calibration's n_samples"
    )
    seqlen: int | None = Field(None, gt=1, description="tokens per window; default: the calibration's seqlen")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass (less memory, one more forward per step)"
    )


class Distill(Method):
    name = "distill"
    family = "distill"
    description = prose("""
        Knowledge distillation from the uncompressed model (the teacher, loaded again from the suite's source) into the
        compressed one: AdamW on T^2 * KL(teacher || student) per token (Hinton et al. 2015), optionally mixed with
        next-token cross-entropy (`alpha`), over token windows drawn like the calibration set (other
        `dataset`/`n_samples`/`seqlen` possible), cosine learning-rate decay. Trains the dense and pruned target Linears
        (pruned weights stay exactly zero) and the norms; packed quantized layers stay frozen (reported). Cost: `steps`
        x (one teacher forward + one student forward and backward); memory: both models plus AdamW's two float copies of
        the trained parameters.
    """)
    Params = DistillParams
    accepts = frozenset({"dense", "pruned", "quantized"})
    needs_calibration = True

    def apply(self, model: nn.Module, params: DistillParams, ctx: RunContext) -> dict[str, Any] | None:
        targets = checked_targets(model, params.targets, self, ctx)
        trainable = select_trainable(model, targets, norms=params.norms, embeddings=params.embeddings)
        if not trainable.parameters:
            raise ValueError(
                f"step {ctx.current_step}: nothing to train: every target layer is "
                f"{', '.join(trainable.frozen_layers)}; set norms: true or distill before quantizing"
            )
        base = ctx.calibration_config
        data = base.model_copy(update={
            "dataset": params.dataset or base.dataset,
            "split": params.split or base.split,
            "n_samples": params.n_samples or base.n_samples,
            "seqlen": params.seqlen or base.seqlen,
        })
        windows = build_calibration(data, ctx)
        steps = params.steps if ctx.limit is None else min(params.steps, ctx.limit)
        config = DistillConfig(
            steps=steps, batch_size=params.batch_size, lr=params.lr, weight_decay=params.weight_decay,
            warmup_steps=params.warmup_steps, temperature=params.temperature, alpha=params.alpha,
            max_grad_norm=params.max_grad_norm, seed=ctx.seed,
        )
        # transformers >= 5 renamed gradient_checkpointing_* to activation_checkpointing_*
        prefix = next((p for p in ("activation_checkpointing", "gradient_checkpointing")
                       if hasattr(model, f"{p}_enable")), None)
        checkpointing = params.gradient_checkpointing and prefix is not None
        if checkpointing:
            getattr(model, f"{prefix}_enable")()
        began = time.perf_counter()
        try:
            losses = distill(model, ctx.teacher(), windows, trainable, config,
                             progress=lambda it: ctx.progress(it, "distill", total=steps))
        finally:
            if checkpointing:
                getattr(model, f"{prefix}_disable")()
            ctx.release_teacher()
            gc.collect()
        head = losses[: max(1, min(10, len(losses) // 4))]
        tail = losses[-len(head):]
        return {
            "steps": steps,
            "trained_parameters": trainable.count,
            "masked_tensors": len(trainable.masks),
            "frozen_layers": trainable.frozen_layers,
            "windows": len(windows),
            "tokens_per_step": config.batch_size * int(windows[0].shape[1]),
            "loss_first": sum(head) / len(head),
            "loss_last": sum(tail) / len(tail),
            "seconds_per_step": (time.perf_counter() - began) / steps,
        }


@hookimpl
def paqbench_register_methods(register):
    register(Distill)
