"""Validation that protects the user before anything runs: alias bombs, the data a suite
names (text files, unknown names, what would download, offline), and the one key that
runs a model's own code."""

from __future__ import annotations

import itertools
import json

import pytest

from paqbench.planner import build_plan
from paqbench.registry import get_registry
from paqbench.suite import SuiteError, load_suite
from tests.helpers import TINY_SUITE, paqbench, write_suite

PPL_SUITE = """
name: ppl
model: tiny-random-llama
metrics:
  - params
  - perplexity: {dataset: DATASET, seqlen: 128}
"""


def problems_of(path) -> list[str]:
    with pytest.raises(SuiteError) as info:
        build_plan(load_suite(path), get_registry())
    return [str(p) for p in info.value.problems]


def _lol(levels: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    names = "abcdefghijklmnop"
    for previous, name in itertools.pairwise(names[:levels]):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    path = write_suite(tmp_path, _lol(9))
    result = paqbench("validate", str(path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {path}:") and "aliases expand to more than 100,000 values" in line


def test_a_recursive_alias_is_refused(tmp_path):
    (problem,) = problems_of(write_suite(tmp_path, "name: x\nmodel: &m [*m]\n"))
    assert "refers to the node that contains it" in problem


def test_ordinary_aliases_still_work(tmp_path):
    text = TINY_SUITE.replace("    steps:\n", "    steps: &steps\n") + "  - name: again\n    steps: *steps\n"
    plan = build_plan(load_suite(write_suite(tmp_path, text)), get_registry())
    assert [r.pipeline for r in plan.runs] == ["baseline", "magnitude", "magnitude", "again", "again"]


@pytest.mark.parametrize("dataset, expected", [
    ("wikitext3", ":5: metrics[1].perplexity.dataset: unknown dataset 'wikitext3'; did you mean 'wikitext2'?"),
    ("missing/file.txt", ":5: metrics[1].perplexity.dataset: dataset file 'missing/file.txt' does not exist"),
])
def test_perplexity_dataset_is_checked_like_calibration(tmp_path, dataset, expected):
    path = write_suite(tmp_path, PPL_SUITE.replace("DATASET", dataset))
    result = paqbench("validate", str(path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {path}{expected}")


@pytest.mark.parametrize("content, expected", [
    (b"\x87\x00\xff binary", "expected a UTF-8 text file; found byte 0x87 at offset 0 of"),
    (b"  \n\n", "expected text; found an empty file"),
    (b"a few words", "expected at least one window of seqlen=128 tokens; found"),
])
def test_text_files_are_checked_when_validating(tmp_path, content, expected):
    text = tmp_path / "corpus.txt"
    text.write_bytes(content)
    path = write_suite(tmp_path, PPL_SUITE.replace("DATASET", str(text)))
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:5: metrics[1].perplexity.dataset: {expected}")
    calib = write_suite(tmp_path, TINY_SUITE.replace("dataset: embedded, n_samples", f"dataset: {text}, n_samples"),
                        name="calib.yaml")
    problem = problems_of(calib)[0]
    assert problem.startswith(f"{calib}:3: calibration.dataset: {expected[:24]}")


def test_an_unknown_split_names_the_real_ones(tmp_path):
    path = write_suite(tmp_path, PPL_SUITE.replace("DATASET", "embedded, split: valid"))
    (problem,) = problems_of(path)
    assert problem == (f"{path}:5: metrics[1].perplexity.split: expected one of train, test (the splits of "
                       "'embedded'); found 'valid'")


def test_validate_says_what_is_offline_and_what_would_download(tmp_path, data_dir):
    suite = write_suite(tmp_path, PPL_SUITE.replace("DATASET", "wikitext2").replace(
        "  - params\n", "  - params\n  - perplexity: {dataset: c4, split: train, seqlen: 128}\n"))
    online = paqbench("validate", str(suite), env={"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
                                                   "HF_HOME": str(tmp_path / "hf")})
    assert online.returncode == 0, online.stderr
    assert f"data: metric perplexity wikitext2/test: offline, {data_dir}/wikitext-2-raw/" in online.stdout
    assert "data: metric perplexity c4/train: downloads hub dataset allenai/c4 on first use" in online.stdout
    offline = paqbench("validate", str(suite), env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert offline.returncode == 2
    (line,) = offline.stderr.splitlines()
    assert line.startswith(f"Error: {suite}:5: metrics[1].perplexity.dataset: metric perplexity c4/train is not "
                           "available offline")
    assert "PAQBENCH_DATA_DIR to a directory with c4/c4_train_2k.jsonl" in line


def test_the_race_study_offline_stops_at_validation_saying_what_to_set(data_dir, tmp_path):
    # the README's laptop command; --dry-run so that a regression prints a plan instead of running the study
    result = paqbench("run", "suites/race.yaml", "--model", "smollm2-135m", "--device", "cpu", "--limit", "20",
                      "-o", str(tmp_path / "out"), "--dry-run",
                      env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert [line.split(": ")[2] for line in lines] == ["calibration.dataset", "metrics[0].race.source"]
    assert "c4/train is not available offline" in lines[0] and "ehovy/race" in lines[1]
    assert not (tmp_path / "out").exists()  # stopped before anything ran


def test_uncalibrated_suites_do_not_need_their_calibration_data(tmp_path):
    text = TINY_SUITE.replace("dataset: embedded, n_samples", "dataset: c4, n_samples")
    result = paqbench("validate", str(write_suite(tmp_path, text)), env={"HF_HUB_OFFLINE": "1",
                                                                        "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stderr  # magnitude pruning reads no calibration data


def test_trust_remote_code_only_from_its_own_key(tmp_path):
    marker = tmp_path / "ran.txt"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"},
    }))
    (model / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    suite = write_suite(tmp_path, f"""
        name: evil
        model:
          source: {model}
          trust_remote_code: false
          options: {{trust_remote_code: true}}
        metrics: [params]
    """)
    for args in (["validate"], ["run", "--in-process", "-o", str(tmp_path / "out")]):
        result = paqbench(*args, str(suite))
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"Error: {suite}:5: model.options: model.options.trust_remote_code is not allowed")
        assert "only model.trust_remote_code decides" in line
    assert not marker.exists()
