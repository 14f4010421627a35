"""The method x format matrix: every ordered pair of built-in methods on a tiny random
Llama, the second step meeting whatever layer formats the first one left. Each pair
composes (zeros stay zero, shapes stay consistent, the model runs with a finite
perplexity) or the step refuses with UnsupportedLayerError naming the layer and the step
before changing anything (paqbench.testing.run_checked_step).

Kept small for CI: the tiny Llama, 2 calibration windows of 32 tokens, and fast settings
(few iterations, groups of 32) chosen per method below; each first step runs once and
is copied for every second one. A deliberately broken toy format makes the same check
fail (test_a_broken_format_fails_the_matrix_check).
"""

from __future__ import annotations

import copy

import pytest
import torch

from paqbench.layers import select_targets
from paqbench.layers.pipeline_check import CompositionError
from paqbench.models.embedded import byte_tokenizer, tiny_random_llama
from paqbench.quant.linear import replace_module
from paqbench.registry import get_registry
from paqbench.testing import make_run_context, run_checked_step

#: Built-in methods left out, and why: each runs an external engine or library (tested in
#: tests/peers and the llama.cpp tests), not paqbench's own layer formats.
EXCLUDED = {"llamacpp-quantize": "runs llama.cpp's quantizer binary and reads the GGUF back"}
PEERS = "paqbench_plugins.methods.peers."  # adapters of other libraries (docs/peers.md)

#: Fast settings for the tiny model (defaults elsewhere).
FAST: dict[str, dict] = {
    "rtn": {"group_size": 32},
    "gptq": {"group_size": 32, "block_size": 32},
    "awq": {"group_size": 32, "n_grid": 2, "n_sample_token": 64},
    "hqq": {"group_size": 32, "iterations": 2},
    "kmeans": {"iterations": 2},
    "vq": {"iterations": 2, "codebook_bits": 4},
    "sparsegpt": {"block_size": 32},
    "structured": {"importance": "l1", "round_to": 8},  # widths vq's dim=2 tiles (see below)
    "layer-drop": {"ratio": 0.3},  # one of two blocks, then none of the one left
    "distill": {"steps": 1, "n_samples": 2, "seqlen": 32},
    "embed-rtn": {"group_size": 32},
}


def _builtin_methods() -> list[str]:
    registry = get_registry()
    return sorted(
        name for name, entry in registry.entries["methods"].items()
        if entry.plugin.startswith("paqbench_plugins.") and not entry.plugin.startswith(PEERS)
        and name not in EXCLUDED
    )


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: threads only contend
METHODS = _builtin_methods()
IDS = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(0))


def _context(tmp_path, step: str):
    ctx = make_run_context(byte_tokenizer(), tmp_path, n_samples=2, seqlen=32,
                           teacher=lambda: tiny_random_llama(seed=0))
    ctx.current_step = step
    return ctx


def _step(name: str, model, tmp_path, index: int) -> str:
    cls = get_registry().method(name)
    ctx = _context(tmp_path, f"{index} ({name})")
    return run_checked_step(cls(), cls.Params(**FAST.get(name, {})), model, ctx, IDS)


_FIRST: dict[str, tuple[str, torch.nn.Module]] = {}


def _after_first(name: str, tmp_path_factory) -> tuple[str, torch.nn.Module]:
    if name not in _FIRST:
        model = tiny_random_llama(seed=0)
        outcome = _step(name, model, tmp_path_factory.mktemp("first"), 1)
        _FIRST[name] = (outcome, model)
    return _FIRST[name]


def test_the_matrix_covers_the_builtin_methods():
    assert len(METHODS) >= 15 and {"rtn", "gptq", "magnitude", "l1-structured", "structured"} <= set(METHODS)
    unknown = set(FAST) - set(METHODS)
    assert not unknown, f"fast settings for methods that are not in the matrix: {unknown}"


@pytest.mark.parametrize("second", METHODS)
@pytest.mark.parametrize("first", METHODS)
def test_pair_composes_or_refuses_up_front(first, second, tmp_path_factory):
    outcome, model = _after_first(first, tmp_path_factory)
    assert outcome == "composed", f"{first} alone refused on a dense model"
    model = copy.deepcopy(model)
    _step(second, model, tmp_path_factory.mktemp("second"), 2)


def test_odd_widths_are_refused_by_vq_naming_layer_and_step_before_any_change(tmp_path):
    """structured with round_to 1 leaves 141 MLP channels, which vq's dim=2 vectors cannot
    tile: a parameter choice, refused up front as a ValueError naming layer and step."""
    model = tiny_random_llama(seed=0)
    cls = get_registry().method("structured")
    cls().apply(model, cls.Params(importance="l1"), _context(tmp_path, "1 (structured)"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vq = get_registry().method("vq")
    with pytest.raises(ValueError, match=r"step 2 \(vq\).*layer 'model\.layers\.0\.mlp\.down_proj'"):
        vq().apply(model, vq.Params(**FAST["vq"]), _context(tmp_path, "2 (vq)"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_broken_format_fails_the_matrix_check(tmp_path):
    """Magnitude pruning of a model whose layers are a format with a broken zero_weights
    (a pruned code is left at 1) does not compose, and the check says so."""
    from tests.test_layer_contract import BrokenZeroInt8

    model = tiny_random_llama(seed=0)
    for name, linear in select_targets(model).items():
        replace_module(model, name, BrokenZeroInt8.from_linear(linear))
    with pytest.raises(CompositionError, match="nonzero weights where its mask pruned them"):
        _step("magnitude", model, tmp_path, 2)
