"""Knowledge distillation from the uncompressed model: the loss, which parameters
train, and the training loop.

Recovery after pruning (the seed studies' post-pruning distillation, LLM-Pruner's and
SparseGPT's follow-ups) trains the compressed student to match the original teacher's
next-token distribution on unlabelled text (Hinton et al., 2015):
``T^2 * KL(softmax(t / T) || softmax(s / T))`` per token, optionally mixed with the
ordinary next-token cross-entropy. Pruned weights stay exactly zero (their gradients are
masked and the mask is applied again after every step); packed quantized layers have no
float weight to train and stay frozen, so after quantization only norms (and any dense
layers) learn.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from paqbench.layers import capabilities, get_mask, layer_kind
from paqbench.layers.contract import FLOAT_WEIGHT
from paqbench.models.device import input_device


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over tokens of ``T^2 * KL(p_teacher || p_student)`` at temperature ``T``.

    The ``T^2`` keeps gradient magnitudes comparable across temperatures (Hinton et al.).
    Computed in float32 whatever the models' dtype; zero exactly when the logits agree up
    to a constant per token.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: distillation needs the same vocabulary"
        )
    vocab = student_logits.shape[-1]
    s = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Ordinary causal-LM cross-entropy: position ``i`` predicts token ``i + 1``."""
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), input_ids[:, 1:].reshape(-1))


@dataclass
class TrainableSet:
    """The parameters a distillation step trains, and the masks that keep pruned weights
    at zero."""

    parameters: dict[str, nn.Parameter] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Target layers left frozen, by kind (``{"quantized": 210}``).
    frozen_layers: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(p.numel() for p in self.parameters.values())

    @torch.no_grad()
    def mask_gradients(self) -> None:
        for name, mask in self.masks.items():
            grad = self.parameters[name].grad
            if grad is not None:
                grad.mul_(mask.to(grad.dtype))

    @torch.no_grad()
    def reapply_masks(self) -> None:
        for name, mask in self.masks.items():
            self.parameters[name].mul_(mask.to(self.parameters[name].dtype))



def select_trainable(
    model: nn.Module,
    targets: dict[str, nn.Module],
    *,
    norms: bool,
    embeddings: bool,
) -> TrainableSet:
    """Weights (and biases) of the dense and pruned ``targets``, plus every normalisation
    layer's parameters when ``norms``, plus the input embedding (and a head tied to it)
    when ``embeddings``. Other target kinds are counted in ``frozen_layers``."""
    chosen = TrainableSet()
    for name, module in targets.items():
        kind = layer_kind(module)
        if FLOAT_WEIGHT not in capabilities(module):  # a packed format has no float weight to train
            chosen.frozen_layers[kind] = chosen.frozen_layers.get(kind, 0) + 1
            continue
        for pname, parameter in module.named_parameters(recurse=False):
            chosen.parameters[f"{name}.{pname}"] = parameter
        mask = get_mask(module)
        if mask is not None:
            chosen.masks[f"{name}.weight"] = mask
    if norms:
        for name, module in model.named_modules():
            if "norm" in type(module).__name__.lower():
                for pname, parameter in module.named_parameters(recurse=False):
                    chosen.parameters[f"{name}.{pname}" if name else pname] = parameter
    if embeddings:
        embedding = model.get_input_embeddings()
        if layer_kind(embedding) != "other" or not isinstance(embedding, nn.Embedding):
            raise ValueError(
                f"embeddings: true needs a float nn.Embedding; the input embedding is "
                f"{type(embedding).__name__} ({layer_kind(embedding)})"
            )
        for pname, parameter in model.named_parameters():
            if parameter is embedding.weight:
                chosen.parameters[pname] = parameter
                break
    return chosen


@contextmanager
def training_only(model: nn.Module, trainable: TrainableSet) -> Iterator[None]:
    """Gradients for exactly ``trainable``, training mode; both restored afterwards."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    try:
        model.requires_grad_(False)
        for parameter in trainable.parameters.values():
            parameter.requires_grad_(True)
        model.train()
        yield
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(flags.get(name, False))
        model.train(was_training)


def batches(windows: list[torch.Tensor], batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """``steps`` batches of ``batch_size`` windows: seeded passes over the windows, each
    pass in a fresh random order."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        picked = []
        while len(picked) < batch_size:
            if not order:
                order = list(range(len(windows)))
                rng.shuffle(order)
            picked.append(order.pop())
        yield torch.cat([windows[i] for i in picked], dim=0)


def cosine_with_warmup(step: int, steps: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine to zero."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class DistillConfig:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    temperature: float
    alpha: float
    max_grad_norm: float | None
    seed: int


def distill(
    student: nn.Module,
    teacher: nn.Module,
    windows: list[torch.Tensor],
    trainable: TrainableSet,
    config: DistillConfig,
    progress: Callable[[range], Iterator[int]] = iter,
) -> list[float]:
    """Train ``trainable`` (parameters of ``student``) with AdamW to match ``teacher``'s
    logits on ``windows``; returns the loss of every step."""
    if not trainable.parameters:
        raise ValueError("nothing to train: no dense or pruned target layer, and norms/embeddings are off")
    optimizer = torch.optim.AdamW(
        list(trainable.parameters.values()), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, config.steps, config.warmup_steps)
    )
    losses: list[float] = []
    teacher.eval()
    batch_iter = batches(windows, config.batch_size, config.steps, config.seed)
    with training_only(student, trainable):
        for _ in progress(range(config.steps)):
            input_ids = next(batch_iter)
            with torch.no_grad():
                teacher_logits = teacher(input_ids=input_ids.to(input_device(teacher)), use_cache=False).logits
            input_ids = input_ids.to(input_device(student))
            student_logits = student(input_ids=input_ids, use_cache=False).logits
            teacher_logits = teacher_logits.to(student_logits.device)
            loss = config.alpha * kd_loss(student_logits, teacher_logits, config.temperature)
            if config.alpha < 1.0:
                loss = loss + (1.0 - config.alpha) * next_token_loss(student_logits, input_ids)
            del teacher_logits, student_logits
            if not torch.isfinite(loss):
                raise FloatingPointError(f"distillation loss became {loss.item()} at step {len(losses) + 1}; lower lr")
            loss.backward()
            trainable.mask_gradients()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(list(trainable.parameters.values()), config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            trainable.reapply_masks()
            losses.append(loss.item())
    return losses
