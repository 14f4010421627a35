"""Every installed peer on the embedded SmolLM2-135M through paqbench's step: converted
layers, the conversion record, and a model whose loss stays near the dense one."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from paqbench.layers import select_targets
from paqbench.registry import get_registry

pytestmark = [pytest.mark.slow, pytest.mark.realmodel, pytest.mark.usefixtures("one_thread")]

GPTQ_G64 = {"GPTQModifier": {"ignore": ["lm_head"], "config_groups": {"g": {"targets": ["Linear"], "weights": {
    "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64,
    "scale_dtype": "float16"}}}}}

#: step -> (module that must be installed, parameters: 4-bit, groups of 64, little calibration work)
CASES = {
    "torchao": ("torchao", {"scheme": "int4-weight-only", "group_size": 64}),
    "hqq-lib": ("hqq", {"bits": 4, "group_size": 64}),
    "auto-round": ("auto_round", {"bits": 4, "group_size": 64, "iters": 2, "lr": 0.005, "batch_size": 2}),
    "llmcompressor": ("llmcompressor", {"recipe": GPTQ_G64}),
}


def loss(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(ids, labels=ids).loss)


@pytest.mark.parametrize("step", sorted(CASES))
def test_peer_on_the_embedded_model(step, smollm2, make_context):
    module, params = CASES[step]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed here (its own tox env runs this: tox -e peer-...)")
    model, tokenizer = smollm2
    ctx = make_context(tokenizer=tokenizer, n_samples=2, seqlen=64)
    ids = tokenizer("The water cycle moves water between the oceans, the air and the land. " * 4,
                    return_tensors="pt").input_ids[:, :64]
    dense = loss(model, ids)
    compressed = copy.deepcopy(model)
    cls = get_registry().method(step)
    info = cls().apply(compressed, cls.Params(**params), ctx)
    conversion = info["conversion"]
    assert info["peer_version"] and conversion["layers"] == len(select_targets(model)) == 7 * 30
    assert conversion["exact"], conversion
    ratio = loss(compressed, ids) / dense
    assert 1.0 < ratio < 1.5, (step, dense, ratio)  # 4-bit g64 costs some loss, never most of it
