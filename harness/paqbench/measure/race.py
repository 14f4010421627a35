"""RACE reading comprehension, scored exactly as lm-eval's ``race`` task scores it.

lm-eval's ``race`` task (``lm_eval/tasks/race``, version 3.0) does not score every
question on its own. It groups the per-question rows of RACE by article (in the order the
articles first appear), and each article becomes one document: the prompt is the article,
then every earlier question of that article with its correct answer, then the last
question; the four options of that last question are the choices. So RACE-H test has
1,045 documents (articles), not 3,498 questions. This is the GPT-3 paper's protocol.

The pieces here reproduce that task without its script-based hub loader (which current
``datasets`` cannot run):

* data: per-question rows as the hub's parquet ``ehovy/race`` gives them (``example_id``,
  ``article``, ``question``, ``options``, ``answer``), from the hub, from a local
  directory (RACE's original release layout or the hub's parquet layout), or from the
  small original sample shipped in ``paqbench/data/race``;
* :func:`group_documents` and :class:`RaceDocument` (prompt, choices, target) mirror
  lm-eval's grouping and ``preprocess_race.py`` character for character;
* :func:`encode_pair` and :func:`loglikelihoods` mirror lm-eval's ``HFLM`` (token ids of
  context and continuation, left truncation to the model's maximum length, log-softmax in
  the logits' dtype, right padding without an attention mask);
* :func:`score_documents` gives acc (argmax of the log-likelihoods) and acc_norm (argmax
  of log-likelihood divided by the choice's length in characters), as lm-eval's
  multiple-choice tasks compute them.

``tests/test_race.py`` runs lm-eval's own task functions on the same data and checks that
the log-likelihoods and accuracies agree.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from paqbench.blockwise.forward import blockwise_logits
from paqbench.blockwise.offload import offload_of

Subset = Literal["high", "middle"]
Source = Literal["auto", "hub", "local", "embedded"]

HUB_DATASET = "ehovy/race"
LETTERS = ("A", "B", "C", "D")
#: lm-eval's default when neither the config nor the tokenizer gives a maximum length.
DEFAULT_MAX_LENGTH = 2048
#: transformers' "no limit" value of ``tokenizer.model_max_length``.
TOKENIZER_INFINITY = 1000000000000000019884624838656
#: Split names of RACE's original release (``RACE/{train,dev,test}/{high,middle}``).
_RELEASE_SPLITS = {"train": "train", "validation": "dev", "dev": "dev", "test": "test"}


class RaceDataUnavailable(RuntimeError):
    """RACE data that is neither in the given place nor reachable on the hub."""


# --------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class RaceProblem:
    """One question of an article: four options and the answer letter."""

    question: str
    options: tuple[str, ...]
    answer: str

    @property
    def answer_text(self) -> str:
        return self.options[LETTERS.index(self.answer)]


@dataclass(frozen=True)
class RaceDocument:
    """One article with its questions, in the order the rows gave them; lm-eval scores the
    last question, with the earlier ones (and their answers) in the prompt."""

    article: str
    problems: tuple[RaceProblem, ...]
    example_ids: tuple[str, ...]

    @property
    def last(self) -> RaceProblem:
        return self.problems[-1]

    @property
    def context(self) -> str:
        """The prompt, as ``preprocess_race.doc_to_text`` builds it: earlier fill-in-the-
        blank questions (ending in ``"  _  ."``) are completed in place with their answer,
        other earlier questions become ``Question: ...`` / ``Answer: ...`` lines."""
        text = "Article: " + self.article + "\n\n"
        for problem in self.problems[:-1]:
            if problem.question[-6:] == "  _  .":
                text += problem.question[:-5] + problem.answer_text + "\n"
            else:
                text += "Question: " + problem.question + "\n"
                text += "Answer: " + problem.answer_text + "\n"
        return text + self.last.question

    @property
    def choices(self) -> list[str]:
        return [self.last.options[i] for i in range(4)]

    @property
    def target(self) -> int:
        return LETTERS.index(self.last.answer)

    def to_lm_eval_doc(self) -> dict[str, str]:
        """This document in the form of the hub's ``EleutherAI/race`` rows that lm-eval's
        ``race`` task reads (``problems`` is a Python literal of the list of questions)."""
        problems = [
            {"answer": p.answer, "options": list(p.options), "question": p.question}
            for p in self.problems
        ]
        return {"article": self.article, "problems": str(problems)}


def group_documents(rows: Iterable[Mapping[str, Any]]) -> list[RaceDocument]:
    """Per-question rows to lm-eval's documents: one per distinct article text, articles in
    order of first appearance, questions in row order (as lm-eval's original
    ``RACE._collate_data`` did with a dict keyed by the article)."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["article"], []).append(row)
    documents = []
    for article, members in grouped.items():
        problems = []
        for row in members:
            options = tuple(row["options"])
            if len(options) != 4 or row["answer"] not in LETTERS:
                raise ValueError(
                    f"RACE row {row.get('example_id', '?')!r}: expected 4 options and an answer "
                    f"in A-D, got {len(options)} options and answer {row['answer']!r}"
                )
            problems.append(RaceProblem(row["question"], options, row["answer"]))
        ids = tuple(dict.fromkeys(str(row.get("example_id", "")) for row in members))
        documents.append(RaceDocument(article, tuple(problems), ids))
    return documents


def fingerprint(documents: Sequence[RaceDocument]) -> str:
    """A short hash of exactly what is scored (articles, questions, options, answers)."""
    payload = [
        [d.article, [[p.question, list(p.options), p.answer] for p in d.problems]]
        for d in documents
    ]
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------- data


@dataclass
class RaceData:
    """The documents of one subset and split, and where they came from."""

    subset: str
    split: str
    source: str
    origin: str
    documents: list[RaceDocument]

    @property
    def questions(self) -> int:
        return sum(len(d.problems) for d in self.documents)


def rows_from_release_file(path: Path) -> list[dict[str, Any]]:
    """Per-question rows from one file of RACE's original release: a JSON object with
    ``article``, ``questions``, ``options``, ``answers`` and ``id``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    questions, options, answers = data["questions"], data["options"], data["answers"]
    if not len(questions) == len(options) == len(answers):
        raise ValueError(f"{path}: questions, options and answers differ in length")
    example_id = data.get("id", path.name)
    return [
        {"example_id": example_id, "article": data["article"], "question": q,
         "options": list(o), "answer": a}
        for q, o, a in zip(questions, options, answers, strict=True)
    ]


def _natural_key(path: Path) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def release_rows(directory: Path) -> list[dict[str, Any]]:
    """Rows of every ``*.txt`` / ``*.json`` file in ``directory``, files in natural order
    (``2.txt`` before ``10.txt``)."""
    paths = sorted(
        (p for p in directory.iterdir() if p.suffix in (".txt", ".json") and p.is_file()),
        key=_natural_key,
    )
    return [row for path in paths for row in rows_from_release_file(path)]


def load_embedded(subset: Subset, split: str = "test") -> RaceData:
    """The original sample shipped with paqbench (see ``paqbench/data/race/README.md``)."""
    if split != "test":
        raise RaceDataUnavailable(
            f"the embedded RACE sample has only a 'test' split, not {split!r}"
        )
    root = files("paqbench.data") / "race" / subset
    with_paths = Path(str(root))
    if not with_paths.is_dir():
        raise RaceDataUnavailable(f"the embedded RACE sample is missing ({with_paths})")
    rows = release_rows(with_paths)
    return RaceData(subset, split, "embedded", f"embedded:paqbench/data/race/{subset}",
                    group_documents(rows))


def load_local(data_dir: str | Path, subset: Subset, split: str) -> RaceData:
    """RACE from a local directory in either layout:

    * the hub's (``ehovy/race``): ``<data_dir>/<subset>/<split>-*.parquet``;
    * the original release: ``<data_dir>/[RACE/]<train|dev|test>/<subset>/*.txt``.
    """
    root = Path(data_dir).expanduser()
    hub_split = "validation" if split == "dev" else split
    parquet_dir = root / subset
    pattern = f"{hub_split}-*.parquet"
    parquet_files = sorted(parquet_dir.glob(pattern)) if parquet_dir.is_dir() else []
    if parquet_files:
        import pyarrow.parquet as pq

        rows = [row for path in parquet_files for row in pq.read_table(path).to_pylist()]
        origin = str(parquet_files[0] if len(parquet_files) == 1 else parquet_dir / pattern)
        return RaceData(subset, split, "local", origin, group_documents(rows))
    release = _RELEASE_SPLITS.get(split, split)
    for directory in (root / release / subset, root / "RACE" / release / subset):
        if directory.is_dir():
            rows = release_rows(directory)
            if rows:
                return RaceData(subset, split, "local", str(directory), group_documents(rows))
    raise RaceDataUnavailable(
        f"no RACE {subset}/{split} under {root}: looked for {parquet_dir}/{hub_split}-*.parquet "
        f"(the hub's layout) and {root}/[RACE/]{release}/{subset}/*.txt (the original release)"
    )


def load_hub(subset: Subset, split: str, dataset: str = HUB_DATASET) -> RaceData:
    """RACE from the Hugging Face hub through ``datasets`` (parquet, no loading script)."""
    hub_split = "validation" if split == "dev" else split
    try:
        from datasets import load_dataset

        rows = load_dataset(dataset, subset, split=hub_split)
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise RaceDataUnavailable(
            f"could not load {dataset!r}/{subset} split {hub_split!r} from the hub: "
            f"{type(exc).__name__}: {first_line}; offline, set data_dir to a local copy "
            f"(hub parquet or RACE's original layout) or use source: embedded"
        ) from exc
    return RaceData(subset, split, "hub", f"hub:{dataset}/{subset}", group_documents(rows))


def load_race(
    subset: Subset,
    split: str = "test",
    source: Source = "auto",
    data_dir: str | Path | None = None,
    hub_dataset: str = HUB_DATASET,
) -> RaceData:
    """RACE documents of ``subset``/``split``.

    ``auto`` reads a local directory when one is given (``data_dir``, or ``race/`` under
    ``PAQBENCH_DATA_DIR``) and the hub otherwise; it never falls back to the embedded
    sample, which is a different (and much smaller) data set.
    """
    if source == "embedded":
        return load_embedded(subset, split)
    data_dir = local_dir(source, data_dir)
    if source == "local" or (source == "auto" and data_dir is not None):
        if data_dir is None:
            raise RaceDataUnavailable(
                "source 'local' needs data_dir (or a race/ folder under PAQBENCH_DATA_DIR)"
            )
        return load_local(data_dir, subset, split)
    return load_hub(subset, split, hub_dataset)


def local_dir(source: Source, data_dir: str | Path | None) -> str | Path | None:
    """The local directory ``load_race`` reads for ``source`` (None: the hub or the embedded sample)."""
    if source not in ("auto", "local"):
        return None
    if data_dir is None:
        env = os.environ.get("PAQBENCH_DATA_DIR")
        candidate = Path(env).expanduser() / "race" if env else None
        if candidate is not None and candidate.is_dir():
            return candidate
    return data_dir


# ------------------------------------------------------------------------------ scoring


def _prefix_text(tokenizer: Any) -> str | None:
    prefix_id = tokenizer.bos_token_id
    if prefix_id is None:
        prefix_id = tokenizer.eos_token_id
    return None if prefix_id is None else tokenizer.decode(prefix_id)


def tok_encode(tokenizer: Any, text: str, prefix_text: str | None = None) -> list[int]:
    """Token ids as ``HFLM.tok_encode`` makes them: the tokenizer's own special tokens
    (e.g. BOS), unless the text already starts with the BOS (or EOS) string."""
    if prefix_text and text.startswith(prefix_text):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids as lm-eval's ``_encode_pair`` splits them: trailing
    spaces of the context move to the continuation, the whole string is encoded once and
    the continuation is what follows the context's own encoding."""
    if not context:
        raise ValueError("RACE contexts are never empty")
    prefix = _prefix_text(tokenizer)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation, prefix)
    context_ids = tok_encode(tokenizer, context, prefix)
    return context_ids, whole[len(context_ids):]


def max_length(model: torch.nn.Module, tokenizer: Any) -> int:
    """The window lm-eval's ``HFLM`` uses: ``n_positions`` / ``max_position_embeddings`` /
    ``n_ctx`` of the (text) config, else the tokenizer's ``model_max_length``, else 2048."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit != TOKENIZER_INFINITY:
        return int(limit)
    return DEFAULT_MAX_LENGTH


Wrap = Callable[[Iterable[Any], int], Iterator[Any]]


@torch.no_grad()
def loglikelihoods(
    model: torch.nn.Module,
    requests: Sequence[tuple[list[int], list[int]]],
    batch_size: int = 1,
    window: int = DEFAULT_MAX_LENGTH,
    wrap: Wrap | None = None,
) -> list[float]:
    """Sum of the continuation's token log-probabilities for each (context, continuation).

    As ``HFLM._loglikelihood_tokens``: longest requests first, the input is
    ``(context + continuation)[-(window + 1):][:-1]`` (left truncation), batches are
    right-padded with id 0 and run without an attention mask (causal attention keeps
    padding invisible to the real tokens), and log-softmax runs in the logits' dtype.
    Only the continuation's positions go through log-softmax, which is row-wise, so the
    numbers are the same while memory stays small. A model whose weights are left on disk
    runs block by block over all batches (:mod:`paqbench.blockwise.forward`; same numbers).
    """

    def longest_first(i: int) -> tuple[int, tuple[int, ...]]:
        ids = requests[i][0] + requests[i][1]
        return -len(ids), tuple(ids)

    order = sorted(range(len(requests)), key=longest_first)
    groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches = [_padded_batch(requests, group, window) for group in groups]
    pending = iter(batches)

    def score(logits: torch.Tensor, _ids: torch.Tensor) -> list[float]:
        batch = next(pending)  # both paths score the batches in order
        return _continuation_logprobs(logits, batch.ends, batch.continuations)

    if offload_of(model) is not None:
        ordered = blockwise_logits(model, [batch.ids for batch in batches], score, wrap)
    else:
        device = next(model.parameters()).device
        ordered = []
        iterator = wrap(batches, len(batches)) if wrap is not None else iter(batches)
        for batch in iterator:
            ids = batch.ids.to(device)
            ordered.extend(score(model(ids).logits, ids))
    results: list[float] = [math.nan] * len(requests)
    for index, value in zip(order, ordered, strict=True):
        results[index] = value
    return results


@dataclass
class _Batch:
    """Right-padded token ids of one batch, where each row's real tokens end, and the
    continuation each row scores."""

    ids: torch.Tensor
    ends: list[int]
    continuations: list[list[int]]


def _padded_batch(requests: Sequence[tuple[list[int], list[int]]], group: Sequence[int], window: int) -> _Batch:
    inputs = []
    for index in group:
        context, continuation = requests[index]
        if not context or not continuation:
            raise ValueError("empty context or continuation")
        inputs.append((context + continuation)[-(window + 1):][:-1])
    padded = torch.zeros((len(inputs), max(len(ids) for ids in inputs)), dtype=torch.long)
    for row, ids in enumerate(inputs):
        padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return _Batch(padded, [len(ids) for ids in inputs], [requests[index][1] for index in group])


def _continuation_logprobs(logits: torch.Tensor, ends: list[int], continuations: list[list[int]]) -> list[float]:
    """Each row's summed log-probability of its continuation, which ends at ``ends[row]``."""
    out = []
    for row, (end, continuation) in enumerate(zip(ends, continuations, strict=True)):
        selected = F.log_softmax(logits[row, end - len(continuation): end], dim=-1)
        targets = torch.tensor(continuation, dtype=torch.long, device=selected.device)
        out.append(float(torch.gather(selected, 1, targets.unsqueeze(-1)).sum()))
    return out


@dataclass
class DocumentScore:
    """Log-likelihoods of the four choices of one document and the two predictions."""

    loglikelihoods: list[float]
    target: int
    pred: int
    pred_norm: int

    @property
    def acc(self) -> float:
        return 1.0 if self.pred == self.target else 0.0

    @property
    def acc_norm(self) -> float:
        return 1.0 if self.pred_norm == self.target else 0.0


def _argmax(values: Sequence[float]) -> int:
    """First index of the maximum, as ``numpy.argmax``."""
    best = 0
    for i, value in enumerate(values):
        if value > values[best]:
            best = i
    return best


def score_documents(
    model: torch.nn.Module,
    tokenizer: Any,
    documents: Sequence[RaceDocument],
    batch_size: int = 1,
    wrap: Wrap | None = None,
) -> tuple[list[DocumentScore], dict[str, int]]:
    """Score each document's four choices (continuation ``" " + option``) and predict.

    Returns the scores and token facts (``window``, ``truncated`` requests)."""
    window = max_length(model, tokenizer)
    requests = []
    for doc in documents:
        requests += [encode_pair(tokenizer, doc.context, " " + choice) for choice in doc.choices]
    truncated = sum(1 for c, k in requests if len(c) + len(k) > window + 1)
    was_training = model.training
    model.eval()
    try:
        lls = loglikelihoods(model, requests, batch_size, window, wrap)
    finally:
        model.train(was_training)
    scores = []
    for i, doc in enumerate(documents):
        values = lls[4 * i: 4 * i + 4]
        # lm-eval divides by len(choice) in characters (numpy: an empty choice gives -inf)
        normed = [
            v / len(choice) if choice else math.copysign(math.inf, v)
            for v, choice in zip(values, doc.choices, strict=True)
        ]
        scores.append(DocumentScore(values, doc.target, _argmax(values), _argmax(normed)))
    return scores, {"window": window, "truncated_requests": truncated, "requests": len(requests)}


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and lm-eval's ``mean_stderr``: sample standard deviation / sqrt(n)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))

