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

``--peer NAME`` adds a row from another tool run the same way (its own fresh child, the
same directory, the same calibration token ids) with its own GPTQ at paqbench's settings
(W4 asymmetric g128, act order static, dampening 0.01, block 128, lm_head kept; its
sequential pipeline calibrates all Linears of a block on one pass of the unquantized block,
where paqbench's true_sequential re-runs the block per group of layers), on the CPU only:

    llmcompressor           llm-compressor's ``oneshot`` (GPTQModifier) on the model loaded
                            whole with ``from_pretrained`` on the CPU in float32, as its users do
    llmcompressor-offload   the same, loaded inside compressed-tensors' ``load_offloaded_model``
                            with ``device_map="auto_offload"`` and a CPU budget of
                            ``--peer-cpu-budget`` bytes (default 0: every weight on disk), the
                            way llm-compressor loads models larger than memory

The run order alternates paqbench's modes and the peers (loaded, llmcompressor, disk,
llmcompressor-offload, ...), ``--repeats N`` times, so that a loaded machine slows every
row alike. A peer's child checks that llm-compressor really quantized: every targeted
Linear has a ``weight_scale`` and its weight equals compressed-tensors' ``fake_quantize`` of
itself (on the W4 grid); ``layers`` counts them.
"""

from __future__ import annotations

import argparse
import importlib.util
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

MODES = ("loaded", "disk")
#: Peer rows: name -> the child that runs it (each prints the keys of :func:`child`).
PEERS: dict[str, Callable[[str, Path, argparse.Namespace], dict[str, Any]]] = {}
PEER_INSTALL = ("llmcompressor is not installed: pip install llmcompressor (it pins transformers 5.17, so use its "
                "own environment: tox -e bench-peers, then .tox/bench-peers/bin/python benchmarks/offload.py ...)")


def calibration_windows(vocab: int, windows: int, seqlen: int) -> list:
    """The random-token windows every row calibrates on (the same ids for paqbench and its peers)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (1, seqlen), generator=generator) for _ in range(windows)]


def child(mode: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One mode, in this (fresh) process."""
    import torch

    from paqbench.blockwise.offload import attach_offload, empty_model
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
    batches = calibration_windows(model.config.vocab_size, args.windows, args.seqlen)
    ctx = _run_context(Path(args.scratch), device, args)
    ctx.calibration_batches = lambda: batches  # type: ignore[method-assign]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    facts = GPTQ().apply(model, _paqbench_gptq_params(), ctx)
    gptq_s = time.perf_counter() - began
    row: dict[str, Any] = {
        "mode": mode, "load_s": load_s, "gptq_s": gptq_s, "peak_rss_bytes": _vm_hwm(),
        "layers": facts["layers"], "loss": facts["loss"],
    }
    if device.type == "cuda":
        row["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return row


def _run_context(scratch: Path, device, args: argparse.Namespace):
    """A run context for ``GPTQ.apply`` outside a suite (not paqbench.testing's: that one needs pytest,
    which the peers' environment has not got)."""
    import torch

    from paqbench import RunContext
    from paqbench.registry import get_registry
    from paqbench.suite.schema import CalibrationConfig, ModelConfig

    return RunContext(
        run_name="offload", tokenizer=None, device=device, dtype=torch.float32, seed=0, scratch_dir=scratch,
        registry=get_registry(), model_config=ModelConfig(source="tiny-random-llama"),
        calibration_config=CalibrationConfig(dataset="embedded", n_samples=args.windows, seqlen=args.seqlen, seed=0),
        limit=None, current_step="1 (offload benchmark)",
    )


def _vm_hwm() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def llmcompressor_child(mode: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    """llm-compressor's GPTQ on the same directory and windows, in this (fresh) process."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    from paqbench.models.embedded import byte_tokenizer

    began = time.perf_counter()
    if mode == "llmcompressor":
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    else:  # its documented path for models larger than memory
        from compressed_tensors.offload import load_offloaded_model

        with load_offloaded_model():
            model = AutoModelForCausalLM.from_pretrained(
                str(directory), dtype=torch.float32, device_map="auto_offload",
                max_memory={"cpu": args.peer_cpu_budget},
                offload_folder=str(Path(args.scratch) / f"ct-offload-{os.getpid()}"))
    load_s = time.perf_counter() - began
    on_disk = _modules_on_disk(model)
    rows = [window.reshape(-1).tolist() for window in calibration_windows(model.config.vocab_size, args.windows,
                                                                          args.seqlen)]
    dataset = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows]})
    symmetric = _paqbench_gptq_params().symmetric  # the grid child() runs
    recipe = GPTQModifier(
        targets="Linear", ignore=["lm_head"], block_size=128, dampening_frac=0.01, actorder="static",
        config_groups={"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 4, "type": "int", "strategy": "group", "group_size": 128, "symmetric": symmetric}}})
    began = time.perf_counter()
    # the windows are already token ids; oneshot still wants a processor (the random model has none)
    oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=len(rows),
            max_seq_length=args.seqlen, shuffle_calibration_samples=False, processor=byte_tokenizer())
    gptq_s = time.perf_counter() - began
    peak = _vm_hwm()
    return {"mode": mode, "load_s": load_s, "gptq_s": gptq_s, "peak_rss_bytes": peak,
            "layers": _quantized_on_grid(model), "loss": None, "modules_on_disk": on_disk}


def _modules_on_disk(model) -> int:
    """Modules whose weights compressed-tensors keeps on disk (0 when loaded whole)."""
    from compressed_tensors.offload.cache import DiskCache

    return sum(isinstance(module._parameters, DiskCache) for module in model.modules())


def _quantized_on_grid(model) -> int:
    """How many Linears llm-compressor quantized; raises unless each weight is on its W4 grid."""
    import torch
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    count = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            scheme = getattr(module, "quantization_scheme", None)
            if not isinstance(module, torch.nn.Linear) or scheme is None or scheme.weights is None:
                continue
            if int(scheme.weights.num_bits) != 4 or getattr(module, "weight_scale", None) is None:
                raise RuntimeError(f"llm-compressor left {name} without a 4-bit weight_scale")
            weight = module.weight.detach()
            zero_point = getattr(module, "weight_zero_point", None)
            grid = fake_quantize(weight, module.weight_scale.detach(),
                                 None if zero_point is None else zero_point.detach(), scheme.weights)
            if not torch.equal(grid, weight):
                raise RuntimeError(f"llm-compressor's {name} is not on its W4 grid")
            count += 1
    if count == 0:
        raise RuntimeError("llm-compressor quantized no Linear")
    return count


def _paqbench_gptq_params():
    """The GPTQ parameters every paqbench row runs (imported late: the parent never imports torch)."""
    from paqbench_plugins.methods.quant.gptq import GPTQ

    return GPTQ.Params(bits=4, group_size=128)


PEERS.update({"llmcompressor": llmcompressor_child, "llmcompressor-offload": llmcompressor_child})


def run_child(mode: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--directory", str(directory),
               "--windows", str(args.windows), "--seqlen", str(args.seqlen), "--device", args.device,
               "--scratch", args.scratch, "--peer-cpu-budget", str(args.peer_cpu_budget)]
    env = dict(os.environ)
    if mode in PEERS:  # llm-compressor onloads to a GPU whenever it sees one: keep it on the CPU
        env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_order(modes: list[str], peers: list[str], repeats: int) -> list[str]:
    """paqbench's modes and the peers interleaved (loaded, peer 1, disk, peer 2, ...), repeated."""
    order: list[str] = []
    for index in range(max(len(modes), len(peers))):
        order += modes[index:index + 1] + peers[index:index + 1]
    return order * repeats


def _fail(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)


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
    parser.add_argument("--repeats", type=int, default=1, help="run the interleaved order this many times")
    parser.add_argument("--device", default="cpu", help="execution device: cpu, cuda")
    parser.add_argument("--peer", action="append", default=[],
                        help=f"also run a peer tool ({', '.join(PEERS)}); repeatable")
    parser.add_argument("--peer-cpu-budget", type=int, default=0,
                        help="bytes of weights llmcompressor-offload may keep in CPU memory (default 0: all on disk)")
    parser.add_argument("--json", type=Path, default=Path("reports/offload.json"))
    parser.add_argument("--scratch", default=None, help="where the model is written (default: a temp dir)")
    parser.add_argument("--child", choices=MODES + tuple(PEERS), help=argparse.SUPPRESS)
    parser.add_argument("--directory", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = PEERS.get(args.child, child)
        print(json.dumps(run(args.child, args.directory, args)))
        return
    modes = [mode for mode in args.modes.split(",") if mode]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        _fail(f"--modes: unknown mode {unknown[0]!r}; expected a comma-separated list of {', '.join(MODES)}")
    unknown = [p for p in args.peer if p not in PEERS]
    if unknown:
        _fail(f"--peer: unknown peer {unknown[0]!r}; known: {', '.join(PEERS)}")
    if args.peer and importlib.util.find_spec("llmcompressor") is None:
        _fail(PEER_INSTALL)
    if args.peer and args.device != "cpu":
        _fail(f"--peer runs llm-compressor on the CPU only; got --device {args.device} (drop --device or --peer)")
    if args.repeats < 1:
        _fail(f"--repeats must be >= 1, got {args.repeats}")
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
        order = run_order(modes, args.peer, args.repeats)
        for index, mode in enumerate(order):
            print(f"running {mode} ...", file=sys.stderr)
            rows.append({**run_child(mode, directory, args), "repeat": index // (len(order) // args.repeats)})
    for row in rows:
        row["rss_over_fp32"] = row["peak_rss_bytes"] / fp32_bytes
    table = [[r["mode"], r["repeat"], f"{r['peak_rss_bytes'] / 2**30:.3f}", f"{r['rss_over_fp32']:.2f}",
              f"{r['load_s']:.1f}", f"{r['gptq_s']:.1f}", r["layers"]] for r in rows]
    print(tabulate(table, headers=["mode", "repeat", "peak RSS GiB", "RSS / fp32 bytes", "load s", "GPTQ s",
                                   "layers"], tablefmt="github"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "shape": asdict(shape), "fp32_bytes": fp32_bytes, "windows": args.windows, "seqlen": args.seqlen,
        "device": args.device, "rows": rows,
    }, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
