"""Peak memory of GPTQ on a model loaded whole against its weights left on disk (issue 16).

A random-weight Llama at TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads, 4 KV
heads, MLP 5632; 4.4 GB in float32) is written as safetensors, then each mode runs GPTQ
W4 g128 (act order, static groups, true sequential) on random-token calibration windows
in a fresh child process:

    loaded   the model loaded whole with transformers' from_pretrained (as paqbench loads it)
    disk     model.offload: disk (paqbench.blockwise): blocks onloaded one at a time

Each child reports its peak RSS (VmHWM: Linux carries the parent's high-water mark across
fork + exec in ru_maxrss), its CUDA peak when it runs on a GPU, and the wall time of load
and GPTQ. The table gives peak RSS / fp32 weight bytes (the issue's goals: <= 1.2 loaded,
<= 0.5 on disk).

    python benchmarks/offload.py [--windows 32 --seqlen 512] [--modes loaded,disk]
        [--layers 22 --hidden 2048 --intermediate 5632 --heads 32 --kv-heads 4 --vocab 32000]
        [--device cpu|cuda] [--json reports/offload.json] [--peer llmcompressor]

``--peer NAME`` adds a row from another tool run the same way on the same directory; the
peers are the functions in PEERS (none is built in yet: llm-compressor's ``oneshot`` is
to be added there, as a child that prints the same JSON keys).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paqbench.blockwise.synthetic import TINYLLAMA, LlamaShape, write_random_llama

CHILD_MODES = ("loaded", "disk")


def child(mode: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One mode, in this (fresh) process."""
    import torch

    from paqbench.blockwise.offload import attach_offload, empty_model
    from paqbench.testing import make_run_context
    from paqbench_plugins.methods.quant.gptq import GPTQ

    device = torch.device(args.device)
    began = time.perf_counter()
    if mode == "loaded":
        from transformers import AutoModelForCausalLM  # load_pretrained's call (the model has no tokenizer)

        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).to(device).eval()
    else:
        model = empty_model(directory, torch.float32)
        attach_offload(model, directory, Path(args.scratch) / f"offload-{os.getpid()}", device, torch.float32)
    load_s = time.perf_counter() - began
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    batches = [torch.randint(0, vocab, (1, args.seqlen), generator=generator) for _ in range(args.windows)]
    ctx = make_run_context(None, Path(args.scratch))
    ctx.device = device
    ctx.calibration_batches = lambda: batches  # type: ignore[method-assign]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    facts = GPTQ().apply(model, GPTQ.Params(bits=4, group_size=128), ctx)
    gptq_s = time.perf_counter() - began
    row: dict[str, Any] = {
        "mode": mode, "load_s": load_s, "gptq_s": gptq_s, "peak_rss_bytes": _vm_hwm(),
        "layers": facts["layers"], "loss": facts["loss"],
    }
    if device.type == "cuda":
        row["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return row


def _vm_hwm() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def run_child(mode: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--directory", str(directory),
               "--windows", str(args.windows), "--seqlen", str(args.seqlen), "--device", args.device,
               "--scratch", args.scratch]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


#: Other tools, each ``(directory, args) -> row`` with the keys of :func:`child`.
PEERS: dict[str, Callable[[Path, argparse.Namespace], dict[str, Any]]] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=32, help="calibration windows (issue: 32)")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per window (issue: 512)")
    parser.add_argument("--layers", type=int, default=TINYLLAMA.layers, help="decoder blocks (TinyLlama: 22)")
    parser.add_argument("--hidden", type=int, default=TINYLLAMA.hidden, help="hidden size (TinyLlama: 2048)")
    parser.add_argument("--intermediate", type=int, default=TINYLLAMA.intermediate, help="MLP size (TinyLlama: 5632)")
    parser.add_argument("--heads", type=int, default=TINYLLAMA.heads, help="attention heads (TinyLlama: 32)")
    parser.add_argument("--kv-heads", type=int, default=TINYLLAMA.kv_heads, help="key/value heads (TinyLlama: 4)")
    parser.add_argument("--vocab", type=int, default=TINYLLAMA.vocab, help="vocabulary (TinyLlama: 32000)")
    parser.add_argument("--modes", default="loaded,disk", help="comma-separated: loaded, disk")
    parser.add_argument("--device", default="cpu", help="execution device: cpu, cuda")
    parser.add_argument("--peer", action="append", default=[],
                        help=f"also run a peer tool ({', '.join(PEERS) or 'none yet'})")
    parser.add_argument("--json", type=Path, default=Path("reports/offload.json"))
    parser.add_argument("--scratch", default=None, help="where the model is written (default: a temp dir)")
    parser.add_argument("--child", choices=CHILD_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--directory", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.directory, args)))
        return
    unknown = [p for p in args.peer if p not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peer {unknown[0]!r}; known: {', '.join(PEERS) or 'none yet (add one to PEERS)'}")
    from dataclasses import asdict

    from tabulate import tabulate


    shape = LlamaShape(layers=args.layers, hidden=args.hidden, intermediate=args.intermediate, heads=args.heads,
                       kv_heads=args.kv_heads, vocab=args.vocab)
    with tempfile.TemporaryDirectory(prefix="paqbench-offload-", dir=args.scratch) as scratch:
        args.scratch = scratch
        directory = Path(scratch) / "model"
        began = time.perf_counter()
        fp32_bytes = write_random_llama(directory, shape)
        print(f"wrote {fp32_bytes / 2**30:.2f} GiB of fp32 weights in {time.perf_counter() - began:.0f} s",
              file=sys.stderr)
        rows = []
        for mode in args.modes.split(","):
            print(f"running {mode} ...", file=sys.stderr)
            rows.append(run_child(mode, directory, args))
        for peer in args.peer:
            rows.append({"mode": peer, **PEERS[peer](directory, args)})
    for row in rows:
        row["rss_over_fp32"] = row["peak_rss_bytes"] / fp32_bytes
    table = [[r["mode"], f"{r['peak_rss_bytes'] / 2**30:.2f}", f"{r['rss_over_fp32']:.2f}",
              f"{r['load_s']:.0f}", f"{r['gptq_s']:.0f}"] for r in rows]
    print(tabulate(table, headers=["mode", "peak RSS GiB", "RSS / fp32 bytes", "load s", "GPTQ s"],
                   tablefmt="github"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "shape": asdict(shape), "fp32_bytes": fp32_bytes, "windows": args.windows, "seqlen": args.seqlen,
        "device": args.device, "rows": rows,
    }, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
