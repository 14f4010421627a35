"""Generation samples: greedy continuations of a few fixed prompts, so a person can read
what compression did to the model's text next to the baseline's (a perplexity of 40 says
less than a sentence that stops making sense).

The number is the mean count of generated tokens (greedy decoding may stop early at EOS);
the texts are in the measurement's ``details``. Decoding is greedy and the prompts fixed, so
the same model gives the same text on the same hardware and library versions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from pydantic import Field

from paqbench import Measurement, Metric, Params, RunContext, hookimpl
from paqbench.engines import Backend, EngineUnavailable, open_engine
from paqbench.measure.timing import eval_mode
from paqbench.models.device import input_device

#: Neutral prompts: factual, descriptive and instructional, nothing a filter would refuse.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "The water cycle describes how water moves between the oceans, the air and the land.",
    "Here is a short description of a quiet morning in a small harbour town:",
    "To make a simple cup of tea, you need",
)


class SamplesParams(Params):
    prompts: list[str] | None = Field(
        None, min_length=1, description="prompts to continue; default: three built-in neutral prompts"
    )
    max_new_tokens: int = Field(
        32, gt=0, le=1024, description="most tokens generated per prompt (greedy may stop earlier at EOS)"
    )
    chat: bool = Field(
        False, description="wrap each prompt in the tokenizer's chat template as a user turn (when it has one)"
    )
    backend: Backend = Field(
        "torch", description="torch: paqbench's model in memory; llama.cpp: the run's GGUF export; vllm: its "
        "compressed-tensors export (CUDA)"
    )
    threads: int | None = Field(None, gt=0, description="llama.cpp threads; default: torch's thread count")


def encode(prompt: str, tokenizer: Any, chat: bool) -> tuple[list[int], str]:
    """Token ids of the prompt and how they were made: the chat template (one user turn and
    the generation prompt) when asked for and present, else the plain text with the
    tokenizer's special prefix."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids], "chat template"
    return [int(i) for i in tokenizer(prompt).input_ids], "plain text"


def greedy_continuation(model: torch.nn.Module, ids: list[int], max_new_tokens: int, pad_token_id: int | None,
                        eos_token_id: Any) -> list[int]:
    """The greedy continuation's token ids (no sampling, one beam, stops at EOS)."""
    device = input_device(model)
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    output = model.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, num_beams=1,
        max_new_tokens=max_new_tokens, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
        temperature=None, top_p=None, top_k=None,
    )
    return output[0, len(ids):].tolist()


class Samples(Metric):
    name = "samples"
    description = (
        "Greedy continuations (do_sample=False) of a few fixed prompts, up to max_new_tokens each, as text in "
        "the report next to the baseline's. Value: mean generated tokens per prompt (informational). Params: "
        "prompts, max_new_tokens, chat, backend (torch | llama.cpp | vllm: the run's GGUF / "
        "compressed-tensors export in that engine), threads. Cost: one short generate call per prompt."
    )
    Params = SamplesParams

    def measure(self, model: torch.nn.Module, params: SamplesParams, ctx: RunContext) -> Iterator[Measurement]:
        tokenizer = ctx.tokenizer
        prompts = list(params.prompts or DEFAULT_PROMPTS)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            eos[0] if isinstance(eos, list) else eos)
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        encoded = [(prompt, *encode(prompt, tokenizer, params.chat)) for prompt in prompts]
        engine_details: dict[str, Any] = {}
        if params.backend == "torch":
            with eval_mode(model):
                continued = [greedy_continuation(model, ids, params.max_new_tokens, pad, eos) for _, ids, _ in encoded]
        else:
            try:
                continued, engine_details = _engine_continuations(params, ctx, [ids for _, ids, _ in encoded], eos_ids)
            except EngineUnavailable as exc:
                yield self.make("generated_tokens", None, "tokens", None, unavailable=str(exc))
                return
        outputs = []
        for (prompt, _, encoding), new in zip(encoded, continued, strict=True):
            outputs.append({
                "prompt": prompt,
                "text": tokenizer.decode(new, skip_special_tokens=True),
                "new_tokens": len(new),
                "token_ids": new,
                "stopped_at_eos": bool(new) and new[-1] in eos_ids,
                "encoding": encoding,
            })
        counts = [float(o["new_tokens"]) for o in outputs]
        yield self.make(
            "generated_tokens", sum(counts) / len(counts), "tokens", None, samples=counts,
            details={
                "outputs": outputs,
                "max_new_tokens": params.max_new_tokens,
                "chat": params.chat,
                "chat_template": bool(getattr(tokenizer, "chat_template", None)),
                "decoding": "greedy (do_sample=False, num_beams=1), stops at EOS or max_new_tokens",
                "device": str(input_device(model)),
                **engine_details,
            },
        )


def _engine_continuations(params: SamplesParams, ctx: RunContext, prompts: list[list[int]],
                          eos: set[int]) -> tuple[list[list[int]], dict[str, Any]]:
    """Greedy continuations of the run's export in ``params.backend`` (stops at EOS)."""
    engine = open_engine(params.backend, ctx, n_ctx=max(map(len, prompts)) + params.max_new_tokens,
                         threads=params.threads)
    try:
        return [engine.continuation(ids, params.max_new_tokens, eos) for ids in prompts], engine.describe()
    finally:
        engine.close()


@hookimpl
def paqbench_register_metrics(register):
    register(Samples)
