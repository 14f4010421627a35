"""Memory of inference: the weights' bytes, and the peaks of one generate call (device
allocator peaks, process VRAM as NVML sees it, process RSS).

The window is one greedy generate call of the same kind the latency metric times, so the
peaks include the prefill's activations and the KV cache of ``prompt_tokens +
new_tokens`` positions. Measurements this machine cannot take (no CUDA device, no NVML) are
reported unavailable with the reason, never as zero.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from pydantic import Field

from paqbench import Measurement, Metric, Params, RunContext, engines, hookimpl
from paqbench.engines import Backend, EngineUnavailable, artifact, default_threads, open_engine
from paqbench.engines.llamacpp import measure_memory
from paqbench.engines.vllm import require_cuda
from paqbench.export.timing import gguf_types
from paqbench.measure import nvml
from paqbench.measure.memory import PeakMemory
from paqbench.measure.timing import Clock, eval_mode, prepare_generation, timed_generate


class MemoryParams(Params):
    prompt_tokens: int = Field(128, gt=0, description="prompt tokens of the measured call")
    new_tokens: int = Field(128, ge=1, description="tokens generated in the measured call")
    batch_size: int = Field(1, gt=0, description="rows of the measured call")
    sample_interval: float = Field(
        0.01, gt=0, description="seconds between RSS / NVML samples during the window"
    )
    dataset: str = Field("embedded", description="dataset the prompt text is taken from")
    split: str = Field("test", description="split of that dataset")
    backend: Backend = Field(
        "torch", description="torch: paqbench's model in memory; llama.cpp: the run's GGUF export, loaded and "
        "run in a child process of its own; vllm: its compressed-tensors export (CUDA)"
    )
    threads: int | None = Field(None, gt=0, description="llama.cpp threads; default: torch's thread count")


@dataclass
class WeightBytes:
    """Bytes of a model's tensors in memory, each storage once."""

    total: int = 0
    parameters: int = 0
    #: buffers: quantized codes and scales, pruning masks, rotary tables, ...
    buffers: int = 0
    by_device: dict[str, int] = field(default_factory=dict)
    #: tensors on the meta device (offloaded or not materialised) occupy nothing
    meta_tensors: int = 0


def weight_bytes(model: torch.nn.Module) -> WeightBytes:
    """Bytes the model's parameters and buffers occupy, each storage counted once (tied
    weights and views of one tensor share storage)."""
    seen: set[tuple[str, int]] = set()
    out = WeightBytes()
    tensors = [(t, "parameters") for t in model.parameters()]
    tensors += [(t, "buffers") for t in model.buffers()]
    for tensor, kind in tensors:
        if tensor.is_meta:
            out.meta_tensors += 1
            continue
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if storage.nbytes() == 0 or key in seen:
            continue
        seen.add(key)
        out.total += storage.nbytes()
        setattr(out, kind, getattr(out, kind) + storage.nbytes())
        out.by_device[key[0]] = out.by_device.get(key[0], 0) + storage.nbytes()
    return out


class PeakSampler:
    """Samples ``read()`` every ``interval`` seconds on a thread while the window runs and
    keeps the largest value; the first failed reading ends sampling and is kept as the
    reason (so a window without any reading is reported unavailable, not as zero)."""

    def __init__(self, read: Callable[[], nvml.Reading[int]], interval: float) -> None:
        self.read = read
        self.interval = interval
        self.peak: int | None = None
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _take(self) -> bool:
        reading = self.read()
        if not reading.ok:
            self.reason = reading.reason
            return False
        self.peak = reading.value if self.peak is None else max(self.peak, reading.value)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval) and self._take():
            pass

    def __enter__(self) -> PeakSampler:
        if self._take():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.reason is None:
            self._take()


class Memory(Metric):
    name = "memory"
    description = (
        "Memory of inference in bytes: weights (unique parameter and buffer storages), and over "
        "one greedy generate call of prompt_tokens + new_tokens: peak CUDA allocated and reserved "
        "(allocator peaks reset before the call), peak process VRAM through NVML (this process "
        "and its children), peak process RSS (sampled every sample_interval s). Unavailable "
        "with the reason where there is no CUDA device or no NVML. Params: prompt_tokens, "
        "new_tokens, batch_size, sample_interval, dataset, split, backend (torch | llama.cpp | vllm: the run's GGUF / "
        "compressed-tensors export in that engine), threads. Cost: two generate calls "
        "(one warm-up)."
    )
    Params = MemoryParams

    def measure(self, model: torch.nn.Module, params: MemoryParams, ctx: RunContext) -> Iterator[Measurement]:
        if params.backend != "torch":
            yield from self._engine(model, params, ctx)
            return
        setup = prepare_generation(
            model, ctx, prompt_tokens=params.prompt_tokens, new_tokens=params.new_tokens,
            batch_size=params.batch_size, dataset=params.dataset, split=params.split,
        )
        device = setup.device
        cuda = device.type == "cuda" and torch.cuda.is_available()
        cuda_index = None
        if cuda:
            cuda_index = device.index if device.index is not None else torch.cuda.current_device()
        clock = Clock(device)
        with eval_mode(model):
            # One untimed call first so lazy one-off allocations (kernels, workspaces) are
            # made; the window then shows what steady inference needs.
            timed_generate(model, setup, clock)
            # the process tree is read at every sample, so workers started meanwhile count
            vram = PeakSampler(lambda: nvml.process_vram(cuda_index=cuda_index),
                               params.sample_interval)
            with PeakMemory(device if cuda else None, interval=params.sample_interval) as peak, \
                    (vram if cuda else nullcontext()):
                timed_generate(model, setup, clock)

        details = setup.describe(model) | {"window": "one generate call, after one warm-up call"}
        weights = weight_bytes(model)
        yield self.make("weights", weights.total, "bytes", "lower", details={
            "parameters": weights.parameters, "buffers": weights.buffers,
            "by_device": weights.by_device, "meta_tensors": weights.meta_tensors,
            "counted": "parameters and buffers (also pruning masks, quantization codes), "
                       "each storage once (tied weights once)",
        })
        result = peak.peak
        yield self.make("peak_rss", result.rss_bytes, "bytes", "lower",
                        details=details | {"processes": "this process and its children",
                                           "sample_interval_s": params.sample_interval})
        if not cuda:
            reason = f"no CUDA device (the model runs on {device})"
            for name in ("peak_allocated", "peak_reserved"):
                yield self.make(name, None, "bytes", "lower", unavailable=reason)
            status = nvml.availability()
            vram_reason = reason if status.ok else f"{reason}; {status.reason}"
            yield self.make("process_vram", None, "bytes", "lower", unavailable=vram_reason)
            return
        yield self.make("peak_allocated", result.device_allocated_bytes, "bytes", "lower",
                        details=details | {"source": "torch.cuda.max_memory_allocated"})
        yield self.make("peak_reserved", result.device_reserved_bytes, "bytes", "lower",
                        details=details | {"source": "torch.cuda.max_memory_reserved; includes "
                                           "blocks the caching allocator held before the window"})
        if vram.reason is not None or vram.peak is None:
            yield self.make("process_vram", None, "bytes", "lower",
                            unavailable=vram.reason or "NVML gave no reading")
        else:
            yield self.make("process_vram", vram.peak, "bytes", "lower",
                            details=details | {"source": "NVML per-process used GPU memory",
                                               "pids": sorted(nvml.process_tree())})

    def _engine(self, model, params: MemoryParams, ctx):
        """The engine's memory: the artifact's bytes as ``weights`` and the peak RSS of
        loading and generating (llama.cpp: a child process of its own, sampled)."""
        setup = prepare_generation(
            model, ctx, prompt_tokens=params.prompt_tokens, new_tokens=params.new_tokens,
            batch_size=params.batch_size, dataset=params.dataset, split=params.split,
        )
        ids = setup.inputs["input_ids"][0].tolist()
        try:
            engines.require_package(params.backend)
            path = artifact(ctx, params.backend)
            if params.backend == "llama.cpp":
                measured = list(self._llama_cpp(path, ids, params))
            else:
                measured = list(self._vllm(ids, params, ctx))
        except EngineUnavailable as exc:
            for name in ENGINE_NAMES:
                yield self.make(name, None, "bytes", "lower", unavailable=str(exc))
            return
        yield from measured

    def _llama_cpp(self, path, ids: list[int], params: MemoryParams):
        if params.batch_size != 1:
            raise EngineUnavailable("the llama.cpp backend generates one row (batch_size 1)")
        threads = params.threads or default_threads()
        used = measure_memory(path, ids, params.new_tokens, threads, params.sample_interval)
        quant_type, tensor_types = gguf_types(path)
        engine = {"backend": "llama.cpp", "engine_version": f"llama-cpp-python {used.info['llama_cpp_version']}",
                  "threads": threads, "artifact": str(path), "quant_type": quant_type, "tensor_types": tensor_types,
                  "prompt_tokens": params.prompt_tokens, "new_tokens": params.new_tokens}
        yield self.make("weights", path.stat().st_size, "bytes", "lower", details=engine | {
            "counted": "bytes of the GGUF file llama.cpp loads (it maps the file into memory)"})
        yield self.make("peak_rss", used.peak_rss, "bytes", "lower", details=engine | {
            "window": "a child process that imports llama-cpp-python, loads the GGUF and generates "
                      "new_tokens greedily (no torch in it)",
            "rss_before_load": used.rss_before_load, "hwm_rss": used.hwm_rss, "rss_samples": used.samples,
            "sample_interval_s": params.sample_interval})
        reason = "the llama.cpp backend runs on the CPU here"
        for name in ("peak_allocated", "peak_reserved", "process_vram"):
            yield self.make(name, None, "bytes", "lower", unavailable=reason)

    def _vllm(self, ids: list[int], params: MemoryParams, ctx):
        """vLLM allocates in its own engine process: process VRAM (NVML, this process tree)
        over loading and one call is what it holds (untested on hardware here)."""
        require_cuda()
        vram = PeakSampler(lambda: nvml.process_vram(), params.sample_interval)
        with PeakMemory(None, interval=params.sample_interval) as peak, vram:
            engine = open_engine("vllm", ctx, n_ctx=params.prompt_tokens + params.new_tokens, threads=None)
            try:
                engine.generate(ids, params.new_tokens, params.batch_size)
                details = engine.describe()
            finally:
                engine.close()
        path = artifact(ctx, "vllm")
        size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        yield self.make("weights", size, "bytes", "lower", details=details | {"counted": "the export's safetensors"})
        yield self.make("peak_rss", peak.peak.rss_bytes, "bytes", "lower", details=details)
        if vram.peak is None:
            yield self.make("process_vram", None, "bytes", "lower", unavailable=vram.reason or "NVML gave no reading")
        else:
            yield self.make("process_vram", vram.peak, "bytes", "lower", details=details)
        reason = "vLLM allocates in its own engine process; see process_vram"
        for name in ("peak_allocated", "peak_reserved"):
            yield self.make(name, None, "bytes", "lower", unavailable=reason)


#: What the memory metric measures, whatever the backend.
ENGINE_NAMES = ("weights", "peak_rss", "peak_allocated", "peak_reserved", "process_vram")


@hookimpl
def paqbench_register_metrics(register):
    register(Memory)
