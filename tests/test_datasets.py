"""Text datasets: local files give exactly the hub's text; calibration is seeded."""

from __future__ import annotations

import json

import pytest
import torch

from paqbench.data.calibration import random_windows
from paqbench.data.sources import wikitext_rows_from_raw


def test_wikitext_raw_file_converts_to_the_hub_rows(data_dir):
    rows = json.loads((data_dir / "wikitext-2-raw" / "test.hf_rows.json").read_text())
    assert wikitext_rows_from_raw(data_dir / "wikitext-2-raw" / "wiki.test.raw") == rows


def test_wikitext2_local_text_is_the_papers_join(make_context, data_dir):
    corpus = make_context().dataset("wikitext2", "test")
    rows = json.loads((data_dir / "wikitext-2-raw" / "test.hf_rows.json").read_text())
    assert corpus.text == "\n\n".join(rows)
    assert corpus.origin.endswith("test.hf_rows.json")


def test_ptb_and_c4_local(make_context, data_dir):
    ptb = make_context().dataset("ptb", "test")
    assert ptb.text.startswith("no it was n't black monday but while")
    assert "  " not in ptb.text[:1000]  # stripped sentences joined by single spaces
    c4 = make_context().dataset("c4", "validation")
    assert len(c4.documents) == 2000 and c4.text.startswith(c4.documents[0])


def test_missing_split_is_a_clear_error(make_context):
    from paqbench.data.sources import DataUnavailable

    with pytest.raises(DataUnavailable, match="has no split 'dev'"):
        make_context().dataset("wikitext2", "dev")


def test_offline_hub_failure_says_how_to_work_offline(make_context, monkeypatch, tmp_path):
    from paqbench.data.sources import DataUnavailable

    monkeypatch.setenv("PAQBENCH_DATA_DIR", str(tmp_path))  # an empty data dir
    with pytest.raises(DataUnavailable, match="from the hub"):
        make_context().dataset("wikitext2", "train")


def test_embedded_prose_is_large_and_split(make_context):
    train = make_context().dataset("embedded", "train").text
    test = make_context().dataset("embedded", "test").text
    assert len(train.split()) > 2800 and len(test.split()) > 2800
    assert train[:200] not in test


def test_text_file_dataset(make_context, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello world " * 50)
    assert make_context().dataset(str(path), "test").text.startswith("hello world")


def test_random_windows_are_seeded_and_in_range():
    ids = torch.arange(1000).unsqueeze(0)
    a = random_windows(ids, 8, 64, seed=0)
    b = random_windows(ids, 8, 64, seed=0)
    c = random_windows(ids, 8, 64, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    for window in a:
        assert window.shape == (1, 64)
        assert torch.equal(window[0], torch.arange(int(window[0, 0]), int(window[0, 0]) + 64))


def test_calibration_batches_cached_per_context(make_context):
    ctx = make_context(n_samples=5, seqlen=32)
    batches = ctx.calibration_batches()
    assert len(batches) == 5 and batches[0].shape == (1, 32)
    assert ctx.calibration_batches() is batches


def test_limit_caps_calibration_to_the_first_windows_of_the_same_draw(make_context):
    full = make_context(n_samples=6, seqlen=32).calibration_batches()
    capped = make_context(n_samples=6, seqlen=32, limit=2).calibration_batches()
    assert len(capped) == 2
    assert all(torch.equal(a, b) for a, b in zip(capped, full[:2], strict=True))


def test_c4_calibration_samples_documents_like_the_papers(make_context, data_dir):
    ctx = make_context(dataset="c4", n_samples=4, seqlen=128)
    ctx.calibration_config = ctx.calibration_config.model_copy(update={"split": "validation"})
    batches = ctx.calibration_batches()
    assert len(batches) == 4 and all(b.shape == (1, 128) for b in batches)
