"""The memory metric and the NVML helper: weights bytes computed independently, RSS on
CPU, CUDA and NVML measurements unavailable (with a reason) where there is no GPU."""

from __future__ import annotations

import ctypes
import itertools

import psutil
import pytest
import torch

from paqbench.measure import nvml
from paqbench.models.embedded import tiny_random_llama
from paqbench_plugins.metrics.memory import Memory, PeakSampler, weight_bytes


def _nbytes_of_unique_tensors(model: torch.nn.Module) -> int:
    unique = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return sum(t.numel() * t.element_size() for t in unique.values())


def test_weight_bytes_is_the_sum_over_unique_tensors(tiny_llama):
    weights = weight_bytes(tiny_llama)
    assert weights.total == _nbytes_of_unique_tensors(tiny_llama)
    assert weights.by_device == {"cpu": weights.total}
    assert weights.meta_tensors == 0
    buffers = {id(b): b for b in tiny_llama.buffers()}.values()
    assert weights.buffers == sum(b.numel() * b.element_size() for b in buffers) > 0
    assert weights.parameters + weights.buffers == weights.total


def test_tied_weights_count_once():
    untied = tiny_random_llama()
    tied = tiny_random_llama(tie_word_embeddings=True)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    head = untied.lm_head.weight
    head_bytes = head.numel() * head.element_size()
    assert weight_bytes(tied).total == weight_bytes(untied).total - head_bytes


def test_views_of_one_storage_count_once():
    module = torch.nn.Module()
    base = torch.zeros(10, 4)
    module.register_buffer("whole", base)
    module.register_buffer("first_rows", base[:5])
    assert weight_bytes(module).total == 10 * 4 * 4


def test_memory_on_cpu(tiny_llama, make_context):
    params = Memory.Params(prompt_tokens=16, new_tokens=8)
    measurements = {m.name: m for m in Memory().measure(tiny_llama, params, make_context())}
    assert set(measurements) == {
        "weights", "peak_rss", "peak_allocated", "peak_reserved", "process_vram"
    }
    weights = measurements["weights"]
    assert weights.value == _nbytes_of_unique_tensors(tiny_llama)
    assert (weights.unit, weights.better) == ("bytes", "lower")
    rss = measurements["peak_rss"].value
    assert weights.value < rss < psutil.virtual_memory().total
    for name in ("peak_allocated", "peak_reserved", "process_vram"):
        m = measurements[name]
        assert m.value is None
        assert m.unavailable.startswith("no CUDA device")
        assert m.unit == "bytes"


def test_peak_sampler_keeps_the_largest_reading():
    values = iter([5, 9, 3])

    def read():
        value = next(values, 4)
        return nvml.Reading(value)

    with PeakSampler(read, interval=0.001) as sampler:
        torch.ones(1)  # any work; the thread samples meanwhile
    assert sampler.peak == 9
    assert sampler.reason is None


def test_peak_sampler_keeps_the_reason_of_a_failed_reading():
    with PeakSampler(lambda: nvml.Reading.unavailable("no GPU here"), interval=0.001) as sampler:
        pass
    assert sampler.peak is None
    assert sampler.reason == "no GPU here"


def _nvml_library_loads() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def test_nvml_helper_degrades_to_a_reason_or_reads_the_driver():
    status = nvml.availability()
    if not _nvml_library_loads():
        assert not status.ok and status.value is None
        assert "NVML" in status.reason
        readings = (nvml.process_vram(), nvml.energy_mj(0), nvml.power_w(0), nvml.driver_version())
        for reading in readings:
            assert reading.value is None
            assert reading.reason == status.reason
    else:
        driver = nvml.driver_version()
        assert driver.ok and driver.value[0].isdigit()
        assert status.ok == (status.value is not None)
        if status.ok:
            assert status.value >= 1
            power = nvml.power_w(0)
            assert power.ok and power.value > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_memory_on_cuda(make_context):
    model = tiny_random_llama().to("cuda")
    params = Memory.Params(prompt_tokens=16, new_tokens=8)
    measurements = {m.name: m for m in Memory().measure(model, params, make_context())}
    weights = measurements["weights"].value
    assert measurements["weights"].details["by_device"] == {"cuda:0": weights}
    assert measurements["peak_reserved"].value >= measurements["peak_allocated"].value >= weights
    vram = measurements["process_vram"]
    if vram.value is None:
        assert vram.unavailable
    else:
        assert vram.value >= measurements["peak_reserved"].value
