"""llmcompressor: any llm-compressor recipe as a step, fed the run's own calibration windows.

The step's ``recipe`` is llm-compressor's YAML (a mapping of modifiers such as
``GPTQModifier``, ``AWQModifier``, ``SmoothQuantModifier``, ``SparseGPTModifier``,
``WandaPruningModifier``, ``QuantizationModifier``, or a full staged recipe). ``oneshot``
runs it on the run's model with the same calibration windows paqbench's own methods get
(``ctx.calibration_batches()``, already tokenized), then every targeted Linear is converted
(:mod:`paqbench.peers.convert`):

- integer weight-only schemes -> packed QuantizedLinear codes, computed with
  compressed-tensors' own ``quantize`` and checked bitwise against its ``fake_quantize``
  (the weight llm-compressor's checkpoint stands for; act order ``static`` only, not ``group``);
- int8 weights with int8 dynamic per-token activations (W8A8) -> Int8DynamicLinear (weights
  exact, the activation rounding difference recorded);
- pruned weights (SparseGPT, Wanda) -> the same dense weights with their mask recorded;
- anything else (FP8, static activations, blocks) is refused with the scheme named.

llm-compressor 0.14 pins transformers 5.17, so it is tested in its own environment
(``tox -e peer-llmcompressor``, docs/peers.md).
"""

from __future__ import annotations

from typing import Any

import torch
import yaml
from pydantic import Field, field_validator
from torch import nn

from paqbench import Params, RunContext, hookimpl
from paqbench.blockwise.steps import checked_targets
from paqbench.layers.sparsity import record_mask
from paqbench.peers import ConversionRecord, Peer, PeerMethod
from paqbench.peers.convert import (
    ConversionError,
    LayerConversion,
    install_int8_dynamic,
    install_packed,
    int8_activation_note,
    integer_weight,
    layer_facts,
)
from paqbench.peers.params import RequireExact
from paqbench.peers.quiet import peer_logging
from paqbench.text import prose

PEER = Peer(module="llmcompressor", distribution="llmcompressor", extra="llmcompressor",
            note="it pins transformers 5.17: install it in its own environment, as tox -e peer-llmcompressor does")


def staged(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe of bare modifiers (``{GPTQModifier: {...}}``) wrapped in one stage, which
    llm-compressor needs (bare modifiers at the top level are silently ignored by it)."""
    if all(str(key).endswith("Modifier") for key in recipe):
        return {"paqbench_stage": {"paqbench_modifiers": recipe}}
    return recipe


class LLMCompressorParams(Params):
    recipe: dict[str, Any] = Field(
        ..., description="llm-compressor recipe as YAML: a mapping of modifiers (e.g. {GPTQModifier: {scheme: "
        "W4A16, targets: [Linear], ignore: [lm_head]}}) or a full staged recipe; YAML text is accepted too"
    )
    pipeline: str | None = Field(
        None, description="llm-compressor's calibration pipeline (sequential, basic, independent, datafree); "
        "default: its own choice"
    )
    require_exact: RequireExact = False
    targets: str | None = Field(None, description=prose("""
        regex over module names converted afterwards; default: the Linear layers inside decoder blocks (the recipe's own
        targets/ignore decide what llm-compressor changes; a changed layer outside these is an error)
    """))

    @field_validator("recipe", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise ValueError(f"recipe is not valid YAML: {exc}") from exc
        if not isinstance(value, dict) or not value:
            raise ValueError("recipe must be a non-empty mapping of llm-compressor modifiers, "
                             "e.g. {GPTQModifier: {scheme: W4A16, targets: [Linear], ignore: [lm_head]}}")
        return value


class LLMCompressor(PeerMethod):
    name = "llmcompressor"
    family = "other"
    peer = PEER
    description = prose("""
        llm-compressor's oneshot (peer implementation) with any recipe given as YAML in `recipe` (GPTQ, AWQ,
        SmoothQuant, SparseGPT, Wanda, QuantizationModifier, ...), calibrated on the run's own calibration windows; the
        result is converted into paqbench's layers: integer weight-only schemes into packed QuantizedLinear codes
        (checked bitwise against compressed-tensors' fake_quantize), W8A8 int8 into Int8DynamicLinear, sparsity into
        dense weights with recorded masks; other schemes are refused. Needs llmcompressor, which pins transformers 5.17
        (its own environment: tox -e peer-llmcompressor). Cost: the recipe's (GPTQ: minutes for a 135M model on CPU).
    """)
    Params = LLMCompressorParams
    accepts = frozenset({"dense", "pruned"})
    needs_calibration = True

    def apply(self, model: nn.Module, params: LLMCompressorParams, ctx: RunContext) -> dict[str, Any]:
        PEER.load()
        targets = checked_targets(model, params.targets, self, ctx)
        before = {name: module.weight.detach().clone() for name, module in targets.items()}
        facts = {name: layer_facts(module) for name, module in targets.items()}
        del targets
        batches = ctx.calibration_batches()
        recipe = yaml.safe_dump(staged(params.recipe), sort_keys=False)
        run_oneshot(model, recipe, batches, ctx, params.pipeline)
        model.eval()
        record = ConversionRecord()
        with torch.no_grad():
            changed = self._unexpected_changes(model, set(before))
            if changed:
                raise ConversionError(f"llm-compressor changed {changed[0]!r}, which is outside the step's "
                                      f"targets; widen `targets` or add it to the recipe's ignore list")
            for name in ctx.progress(list(before), "llmcompressor convert", total=len(before)):
                bias, mask, dtype = facts.pop(name)
                conversion = convert_module(model, name, model.get_submodule(name), before.pop(name), bias, mask,
                                            dtype)
                if conversion is not None:
                    record.add(conversion)
        if not record.layers:
            raise ConversionError("the recipe changed no targeted layer (check its targets, ignore and stages)")
        record.check(params.require_exact, "llm-compressor")
        return {**PEER.facts(), "recipe": staged(params.recipe), "calibration_windows": len(batches),
                **record.summary()}

    @staticmethod
    def _unexpected_changes(model: nn.Module, names: set[str]) -> list[str]:
        return [name for name, module in model.named_modules()
                if name not in names and getattr(module, "quantization_scheme", None) is not None]


def run_oneshot(model: nn.Module, recipe: str, batches: list[torch.Tensor], ctx, pipeline: str | None) -> None:
    """llm-compressor's ``oneshot`` on ``model`` with ``batches`` as its (tokenized) dataset.

    It reads the model's config from ``config.name_or_path`` on disk, which a GGUF or a
    random model does not have, so the config is written to the run's scratch folder for it."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.core import active_session

    rows = [window.reshape(-1).tolist() for window in batches]
    dataset = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows]})
    folder = ctx.scratch_dir / "llmcompressor-config"
    model.config.save_pretrained(folder)
    previous = model.config._name_or_path
    model.config._name_or_path = str(folder)
    kwargs: dict[str, Any] = {"pipeline": pipeline} if pipeline else {}
    try:
        with peer_logging():  # its loguru INFO flood, unless -v
            oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=len(rows),
                    max_seq_length=max(len(row) for row in rows), processor=ctx.tokenizer,
                    shuffle_calibration_samples=False, **kwargs)
    except Exception as exc:  # an invalid recipe, an unsupported layer: one line in the run's record
        message = " ".join(str(exc).split())
        raise RuntimeError(f"llm-compressor failed: {type(exc).__name__}: {message[:600]}") from exc
    finally:
        model.config._name_or_path = previous
        active_session().reset()


def convert_module(model: nn.Module, name: str, module: nn.Module, before: torch.Tensor, bias, mask, dtype
                   ) -> LayerConversion | None:
    """Convert one Linear after oneshot; None when llm-compressor left it as it was."""
    scheme = getattr(module, "quantization_scheme", None)
    if scheme is None or scheme.weights is None:
        weight = module.weight.detach()
        if torch.equal(weight, before):
            return None
        zeros = weight == 0
        if bool(zeros.any()):
            keep = ~zeros if mask is None else (~zeros & mask.to(torch.bool))
            record_mask(module, keep)
            return LayerConversion(name, "dense", True, 0.0, "pruned by the recipe: mask recorded from its zeros")
        return LayerConversion(name, "dense", True, 0.0, "weights changed by the recipe (e.g. smoothing), kept dense")
    return convert_quantized(model, name, module, scheme, bias, mask, dtype)


def convert_quantized(model: nn.Module, name: str, module: nn.Module, scheme: Any, bias, mask, dtype
                      ) -> LayerConversion:
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize, quantize

    args = scheme.weights
    strategy = str(getattr(args.strategy, "value", args.strategy))
    if str(getattr(args.type, "value", args.type)) != "int" or strategy not in ("group", "channel", "tensor"):
        raise ConversionError(f"{name}: weights of type {args.type} with strategy {strategy} have no paqbench "
                              f"format (integer group/channel/tensor only)")
    weight, scale = module.weight.detach(), module.weight_scale.detach()
    zero_point = getattr(module, "weight_zero_point", None)
    zero_point = None if zero_point is None else zero_point.detach()
    if getattr(module, "weight_g_idx", None) is not None:
        raise ConversionError(f"{name}: act-order 'group' (a g_idx per column) is not converted by this adapter; "
                              f"use actorder: static (llm-compressor's default)")
    reference = fake_quantize(weight, scale, zero_point, args).float()
    codes = quantize(weight, scale, zero_point, args)
    bits, qmin = int(args.num_bits), -(1 << (int(args.num_bits) - 1))
    activations = scheme.input_activations
    if activations is not None:
        act_kind = str(getattr(activations.strategy, "value", activations.strategy))
        if not (bits == 8 and args.symmetric and strategy == "channel" and activations.dynamic
                and act_kind == "token" and activations.symmetric and int(activations.num_bits) == 8
                and str(getattr(activations.type, "value", activations.type)) == "int"):
            raise ConversionError(f"{name}: activation quantization {activations} has no paqbench format "
                                  f"(int8 dynamic per token with int8 per-channel weights only)")
        return install_int8_dynamic(model, name, codes.to(torch.int8), scale.float(), reference,
                                    int8_activation_note("compressed-tensors"), bias, mask, dtype)
    quantized, note = integer_weight(codes.round().to(torch.int32), scale, zero_point, bits, qmin)
    return install_packed(model, name, quantized, reference, note, bias, mask, dtype)


@hookimpl
def paqbench_register_methods(register):
    register(LLMCompressor)
