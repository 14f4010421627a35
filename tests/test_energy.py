"""The energy metric: RAPL counter arithmetic (wrap-around, zones), the metric's own
arithmetic on a synthetic counter, and what this machine really offers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from paqbench.measure import nvml
from paqbench.models.embedded import tiny_random_llama
from paqbench_plugins.metrics import energy
from paqbench_plugins.metrics.energy import Energy, EnergyCounter, rapl_counter
from tests.fake_clock import FakeTime, costing

TINY = dict(prompt_tokens=16, new_tokens=8, warmup=1, min_iterations=2, min_seconds=0)
RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


def _zone(root: Path, name: str, energy_uj: int, max_range: int) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    (zone / "name").write_text("package\n")
    return zone


def test_rapl_sums_package_zones_and_handles_wrap_around(tmp_path):
    big = 262143328850
    zero = _zone(tmp_path, "intel-rapl:0", big - 100, big)
    one = _zone(tmp_path, "intel-rapl:1", 50, big)
    _zone(tmp_path, "intel-rapl:0:0", 7, big)  # a core subzone: part of package 0 already
    counter = rapl_counter(tmp_path)
    assert isinstance(counter, EnergyCounter)
    assert "intel-rapl:0, intel-rapl:1" in counter.source
    before = counter.read()
    (zero / "energy_uj").write_text("200\n")  # wrapped: 100 up to the top, 1 to zero, 200 on
    (one / "energy_uj").write_text("1050\n")
    after = counter.read()
    assert before == [big - 100, 50] and after == [200, 1050]
    assert counter.joules(before, after) == pytest.approx((301 + 1000) / 1e6)


def test_rapl_missing_or_unreadable_gives_a_reason(tmp_path):
    assert rapl_counter(tmp_path / "absent").startswith("RAPL not readable")
    assert "no intel-rapl" in rapl_counter(tmp_path)
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    assert "energy_uj" in rapl_counter(tmp_path)


def _rapl_readable() -> bool:
    try:
        int(RAPL.read_text())
    except (OSError, ValueError):
        return False
    return True


def test_energy_on_this_machine(tiny_llama, make_context):
    params = Energy.Params(**TINY)
    measurements = {m.name: m for m in Energy().measure(tiny_llama, params, make_context())}
    assert set(measurements) == {"joules_per_token", "average_watts"}
    if _rapl_readable():
        assert measurements["joules_per_token"].value > 0
        assert measurements["average_watts"].value > 0
    else:
        for m in measurements.values():
            assert m.value is None
            assert "RAPL not readable" in m.unavailable
            assert "model runs on cpu" in m.unavailable


def test_a_counter_that_does_not_advance_is_unavailable_not_zero(
    tiny_llama, make_context, tmp_path, monkeypatch
):
    _zone(tmp_path, "intel-rapl:0", 1000, 10**9)
    monkeypatch.setattr(energy, "POWERCAP_ROOT", tmp_path)
    measurements = list(Energy().measure(tiny_llama, Energy.Params(**TINY), make_context()))
    assert [m.name for m in measurements] == ["joules_per_token", "average_watts"]
    for m in measurements:
        assert m.value is None
        assert "did not advance" in m.unavailable


def test_joules_per_token_and_watts_from_a_synthetic_counter(make_context, monkeypatch):
    watts, now = 10.0, FakeTime()
    model = costing(tiny_random_llama(seed=0), now, 0.25, step_s=0.125)  # 0.25 + 7 x 0.125 s per call

    def read() -> list[int]:  # a 10 W device on the same (fake) clock: microjoules since time 0
        return [round(now() * watts * 1e6)]

    counter = EnergyCounter("synthetic", "test", read, lambda b, a: (a[0] - b[0]) / 1e6)
    monkeypatch.setattr(energy, "energy_counter", lambda device: counter)
    params = Energy.Params(**{**TINY, "batch_size": 2, "min_iterations": 1, "min_seconds": 2.0})
    measurements = {m.name: m for m in Energy(now=now).measure(model, params, make_context())}
    per_token, power = measurements["joules_per_token"], measurements["average_watts"]
    details = per_token.details
    assert details["iterations"] == 2 and details["window_s"] == 2.25  # 1.125 s < 2 s, so a second call
    assert details["generated_tokens"] == 2 * 2 * 8
    assert details["window_joules"] == pytest.approx(22.5)
    assert per_token.value == pytest.approx(22.5 / 32) and power.value == pytest.approx(watts)
    assert (per_token.unit, per_token.better) == ("J/token", "lower")
    assert (power.unit, power.better) == ("W", None)


def test_energy_counter_choice_follows_the_device():
    if not nvml.availability().ok:
        reason = energy.energy_counter(torch.device("cuda", 0))
        assert isinstance(reason, str) and reason.startswith("NVML not available")
    assert "no energy counter" in energy.energy_counter(torch.device("meta"))
