"""RACE: data loading in every layout, lm-eval's document grouping and prompts, and the
same accuracies as lm-eval's own ``race`` task on the same data."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest

from paqbench import Unavailable
from paqbench.measure.race import (
    encode_pair,
    fingerprint,
    group_documents,
    load_race,
    release_rows,
    score_documents,
)
from paqbench_plugins.metrics.race import Race, RaceParams

EMBEDDED = Path(__file__).resolve().parents[1] / "harness" / "paqbench" / "data" / "race"


def lm_eval_race_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks" / "race"


def lm_eval_preprocess():
    """lm-eval's own ``preprocess_race`` module (doc_to_text, doc_to_choice, doc_to_target)."""
    spec = importlib.util.spec_from_file_location(
        "lm_eval_preprocess_race", lm_eval_race_dir() / "preprocess_race.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hub_rows(subset: str) -> list[dict]:
    """The embedded sample as the hub's per-question rows (ehovy/race columns)."""
    return release_rows(EMBEDDED / subset)


def write_parquet(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["example_id", "article", "answer", "question", "options"]
    pq.write_table(pa.Table.from_pylist([{c: r[c] for c in columns} for r in rows]), path)
    return path


# ------------------------------------------------------------------------- embedded data


@pytest.mark.parametrize("subset,articles", [("high", 14), ("middle", 10)])
def test_embedded_sample_is_well_formed_race(subset, articles):
    files = sorted((EMBEDDED / subset).glob("*.json"))
    assert len(files) == articles
    ids = set()
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert set(data) == {"article", "questions", "options", "answers", "id"}
        assert len(data["questions"]) >= 3
        assert len(data["questions"]) == len(data["options"]) == len(data["answers"])
        assert all(len(options) == 4 and len(set(options)) == 4 for options in data["options"])
        assert set(data["answers"]) <= {"A", "B", "C", "D"}
        ids.add(data["id"])
    assert len(ids) == articles


def test_embedded_sample_size_and_balance():
    rows = hub_rows("high") + hub_rows("middle")
    assert len({r["article"] for r in rows}) >= 20 and len(rows) >= 60
    answers = [r["answer"] for r in rows]
    assert min(answers.count(letter) for letter in "ABCD") >= len(rows) // 4 - 1
    # both question styles of RACE, so both branches of lm-eval's prompt are exercised
    assert any(r["question"].endswith("  _  .") for r in rows)


# ------------------------------------------------------------- grouping and prompt text


def test_grouping_follows_lm_eval_collation_by_article():
    rows = [
        {"example_id": i, "article": a, "question": q, "options": list("wxyz"), "answer": y}
        for i, a, q, y in [("a", "First.", "q1", "A"), ("b", "Second.", "q2", "B"),
                           ("c", "First.", "q3", "C")]
    ]
    docs = group_documents(rows)
    assert [d.article for d in docs] == ["First.", "Second."]
    assert [p.question for p in docs[0].problems] == ["q1", "q3"]
    assert docs[0].example_ids == ("a", "c")
    assert docs[0].target == 2 and docs[1].target == 1


@pytest.mark.parametrize("subset", ["high", "middle"])
def test_prompt_choices_and_target_equal_lm_eval_preprocess(subset):
    pre = lm_eval_preprocess()
    for doc in load_race(subset, source="embedded").documents:
        lm_doc = doc.to_lm_eval_doc()
        assert doc.context == pre.doc_to_text(lm_doc)
        assert doc.choices == pre.doc_to_choice(lm_doc)
        assert doc.target == pre.doc_to_target(lm_doc)


# --------------------------------------------------------------------------- data sources


def test_local_layouts_give_the_embedded_documents(tmp_path):
    embedded = load_race("high", source="embedded")
    release = tmp_path / "release" / "RACE" / "test" / "high"
    release.mkdir(parents=True)
    for path in (EMBEDDED / "high").glob("*.json"):
        shutil.copy(path, release / path.with_suffix(".txt").name)
    write_parquet(hub_rows("high"), tmp_path / "hub" / "high" / "test-00000-of-00001.parquet")

    from_release = load_race("high", "test", "local", tmp_path / "release")
    from_parquet = load_race("high", "test", "auto", tmp_path / "hub")
    assert from_release.documents == embedded.documents
    assert from_parquet.documents == embedded.documents
    assert fingerprint(from_parquet.documents) == fingerprint(embedded.documents)
    assert from_parquet.source == "local" and from_parquet.origin.endswith(".parquet")


def test_missing_data_is_unavailable_with_the_reason(tiny_llama, make_context, tmp_path):
    ctx = make_context()
    with pytest.raises(Unavailable, match="could not load 'paqbench-tests/no-such-race'"):
        params = RaceParams(source="hub", hub_dataset="paqbench-tests/no-such-race")
        list(Race().measure(tiny_llama, params, ctx))
    with pytest.raises(Unavailable, match="no RACE middle/test"):
        list(Race().measure(tiny_llama, RaceParams(subset="middle", data_dir=str(tmp_path)), ctx))
    with pytest.raises(Unavailable, match="only a 'test' split"):
        list(Race().measure(tiny_llama, RaceParams(source="embedded", split="train"), ctx))


# ------------------------------------------------------------- equivalence with lm-eval

LM_EVAL_COLLATE = '''\
import collections

import datasets


def process_docs(dataset):
    """lm-eval 0.3's RACE._collate_data: one document per article, in order of appearance;
    EleutherAI/race stores the problems as str(list_of_dicts)."""
    r = collections.defaultdict(list)
    for item in dataset:
        r[item["article"]].append(item)
    return datasets.Dataset.from_list([
        {"article": x[0]["article"],
         "problems": str([
             {"question": y["question"], "answer": y["answer"], "options": y["options"]}
             for y in x
         ])}
        for x in r.values()
    ])
'''


def lm_eval_race_task(tmp_path: Path, parquet: Path) -> Path:
    """lm-eval's race task (its YAML and preprocess_race.py, copied unchanged except for
    the data source and an added acc_norm) over a local parquet file of hub rows."""
    tasks = tmp_path / "lm_eval_tasks"
    tasks.mkdir()
    shutil.copy(lm_eval_race_dir() / "preprocess_race.py", tasks / "preprocess_race.py")
    (tasks / "collate.py").write_text(LM_EVAL_COLLATE)
    text = (lm_eval_race_dir() / "race.yaml").read_text()
    replacements = {
        "task: race\n": "task: race_local\n",
        "dataset_path: EleutherAI/race\n": "dataset_path: parquet\n",
        "dataset_name: high\n": (
            f"dataset_kwargs:\n  data_files:\n    test: {parquet}\n"
            "process_docs: !function collate.process_docs\n"
        ),
        "metric_list:\n": "metric_list:\n  - metric: acc_norm\n    aggregation: mean\n"
                          "    higher_is_better: true\n",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"lm-eval's race.yaml changed: {old!r}"
        text = text.replace(old, new)
    (tasks / "race_local.yaml").write_text(text)
    return tasks


def test_same_accuracy_as_lm_eval_race_task(tiny_tokenizer, make_context, tmp_path, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    import paqbench_plugins.metrics.race as race_metric
    from paqbench.models.embedded import tiny_random_llama

    # 512 positions: every prompt is cut from the left, as long RACE articles are in real
    # models, and the test stays fast
    model = tiny_random_llama(seed=0, max_position_embeddings=512)
    scored = []

    def recording_score_documents(*args, **kwargs):
        scored.append(score_documents(*args, **kwargs))
        return scored[-1]

    monkeypatch.setattr(race_metric, "score_documents", recording_score_documents)

    rows = hub_rows("middle")
    # an article whose questions are not adjacent in the rows: both sides must regroup them
    rows.append({**rows[0], "example_id": "middle1-extra",
                 "question": "What is the writer going to cook next week?",
                 "options": ["Spaghetti", "Toast", "Soup", "A cake"], "answer": "C"})
    parquet = write_parquet(rows, tmp_path / "race" / "middle" / "test-00000-of-00001.parquet")

    lm = HFLM(pretrained=model, tokenizer=tiny_tokenizer, batch_size=8)
    tasks = lm_eval_race_task(tmp_path, parquet)
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    reference = simple_evaluate(model=lm, tasks=["race_local"], task_manager=manager,
                                log_samples=True)
    expected = reference["results"]["race_local"]
    samples = sorted(reference["samples"]["race_local"], key=lambda s: s["doc_id"])

    params = RaceParams(subset="middle", source="local", data_dir=str(tmp_path / "race"))
    measured = {m.name: m for m in Race().measure(model, params, make_context())}
    docs = load_race("middle", source="local", data_dir=tmp_path / "race").documents
    assert len(docs) == len(samples) == 10 and measured["middle/acc"].details["documents"] == 10
    assert docs[0].last.question.startswith("What is the writer going to cook")

    for name in ("acc", "acc_norm"):
        m = measured[f"middle/{name}"]
        assert m.value == expected[f"{name},none"]
        assert m.spread["stderr"] == pytest.approx(expected[f"{name}_stderr,none"], rel=1e-12)
        assert m.samples == [float(s[name]) for s in samples]

    # the same requests: prompt text, continuations and token ids ...
    for doc, sample in zip(docs, samples, strict=True):
        requests = [(doc.context, " " + choice) for choice in doc.choices]
        assert [tuple(a) for a in sample["arguments"]] == requests
        for pair in requests:
            assert encode_pair(tiny_tokenizer, *pair) == lm._encode_pair(*pair)
    # ... and the same log-likelihoods (batched differently, so to float tolerance)
    (scores, facts), = scored
    assert facts["window"] == lm.max_length == 512 and facts["truncated_requests"] == 40
    for score, sample in zip(scores, samples, strict=True):
        reference_lls = [float(r[0]) for r in sample["filtered_resps"]]
        assert score.loglikelihoods == pytest.approx(reference_lls, abs=1e-4)


def test_limit_counts_documents_and_details_describe_the_data(tiny_llama, make_context):
    params = RaceParams(source="embedded", subset="middle", limit=5)
    measured = list(Race().measure(tiny_llama, params, make_context(limit=3)))
    assert [m.name for m in measured] == ["middle/acc", "middle/acc_norm"]
    for m in measured:
        assert len(m.samples) == 3 and set(m.samples) <= {0.0, 1.0}
        assert m.value == sum(m.samples) / 3
        assert m.details["documents"] == 3 and m.details["total_documents"] == 10
        assert m.details["questions"] == sum(
            len(d.problems) for d in load_race("middle", source="embedded").documents[:3]
        )
        assert m.details["source"] == "embedded" and len(m.details["data_fingerprint"]) == 16
        assert (m.unit, m.better) == ("fraction", "higher")
        assert m.spread["stderr"] == pytest.approx(
            math.sqrt(sum((x - m.value) ** 2 for x in m.samples) / 2) / math.sqrt(3)
        )


# ------------------------------------------------------------------------- real model


@pytest.mark.realmodel
def test_smollm2_token_ids_match_hflm_and_accuracy_is_a_fraction(smollm2, make_context):
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = smollm2
    docs = load_race("high", source="embedded").documents
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    for doc in docs:
        for choice in doc.choices:
            pair = (doc.context, " " + choice)
            assert encode_pair(tokenizer, *pair) == lm._encode_pair(*pair)

    # two documents (8 sequences of ~600 tokens): enough to see it run on a real model
    measured = {m.name: m for m in Race().measure(model, RaceParams(source="embedded", limit=2),
                                                  make_context(tokenizer=tokenizer))}
    for name in ("high/acc", "high/acc_norm"):
        m = measured[name]
        assert m.details["documents"] == 2 and m.details["truncated_requests"] == 0
        assert m.details["window_tokens"] == model.config.max_position_embeddings
        assert 0.0 <= m.value <= 1.0 and m.value == sum(m.samples) / 2
