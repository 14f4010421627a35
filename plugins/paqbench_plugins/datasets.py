"""Built-in text datasets: WikiText-2, PTB, C4 (hub or local files) and the embedded
original prose sample.

Each joins its rows the way the perplexity papers do, so a number computed here is
comparable with GPTQ / SparseGPT / Wanda tables.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from paqbench import DataOrigin, Dataset, TextCorpus, hookimpl
from paqbench.data.check import text_file_problem
from paqbench.data.sources import (
    DataUnavailable,
    hub_column,
    local_file,
    read_json_rows,
    read_jsonl_texts,
    wikitext_rows_from_raw,
)


def _check_split(dataset: type[Dataset], split: str) -> None:
    if split not in dataset.splits:
        raise DataUnavailable(
            f"dataset {dataset.name!r} has no split {split!r} (splits: {', '.join(dataset.splits)})"
        )


def _origin(hub_id: str, local_names: tuple[str, ...]) -> DataOrigin:
    """The local copy under PAQBENCH_DATA_DIR when there is one, else the hub."""
    local = local_file(*local_names)
    if local is not None:
        return DataOrigin(str(local))
    return DataOrigin(hub_id, hub=True, offline=f"set PAQBENCH_DATA_DIR to a directory with {' or '.join(local_names)}")


class WikiText2(Dataset):
    name = "wikitext2"
    description = "WikiText-2 raw (Salesforce/wikitext, wikitext-2-raw-v1); rows joined with '\\n\\n'."
    splits = ("train", "validation", "test")

    hub_id = "Salesforce/wikitext"

    def _local_names(self, split: str) -> tuple[str, ...]:
        raw_name = {"validation": "valid"}.get(split, split)
        return f"wikitext-2-raw/{split}.hf_rows.json", f"wikitext-2-raw/wiki.{raw_name}.raw"

    def origin(self, split):
        return _origin(self.hub_id, self._local_names(split))

    def load(self, split, ctx):
        _check_split(type(self), split)
        local = local_file(*self._local_names(split))
        if local is not None and local.suffix == ".json":
            rows, origin = read_json_rows(local), str(local)
        elif local is not None:
            rows, origin = wikitext_rows_from_raw(local), str(local)
        else:
            rows = hub_column(self.hub_id, "wikitext-2-raw-v1", split, "text")
            origin = "hub:Salesforce/wikitext/wikitext-2-raw-v1"
        return TextCorpus(self.name, split, "\n\n".join(rows), origin)


class PennTreebank(Dataset):
    name = "ptb"
    description = "Penn Treebank (Mikolov's text, ptb_text_only); sentences joined with ' ' as in SparseGPT."
    splits = ("train", "validation", "test")

    hub_id = "ptb-text-only/ptb_text_only"

    def _local_names(self, split: str) -> tuple[str, ...]:
        raw_name = {"validation": "valid"}.get(split, split)
        return (f"ptb/ptb.{raw_name}.txt",)

    def origin(self, split):
        return _origin(self.hub_id, self._local_names(split))

    def load(self, split, ctx):
        _check_split(type(self), split)
        local = local_file(*self._local_names(split))
        if local is not None:
            sentences = [line.strip() for line in local.read_text(encoding="utf-8").splitlines()]
            origin = str(local)
        else:
            sentences = hub_column(self.hub_id, "penn_treebank", split, "sentence")
            origin = "hub:ptb-text-only/ptb_text_only"
        return TextCorpus(self.name, split, " ".join(sentences), origin)


class C4(Dataset):
    name = "c4"
    description = (
        "C4 en (allenai/c4, first shard of each split); evaluation text is the first 1100 "
        "documents joined with ' ' as in GPTQ; calibration samples documents."
    )
    splits = ("train", "validation")
    _hub_files = {
        "train": "en/c4-train.00000-of-01024.json.gz",
        "validation": "en/c4-validation.00000-of-00008.json.gz",
    }

    hub_id = "allenai/c4"

    def _local_names(self, split: str) -> tuple[str, ...]:
        return f"c4/c4_{split}_2k.jsonl", f"c4/c4_{split}.jsonl"

    def origin(self, split):
        return _origin(self.hub_id, self._local_names(split))

    def load(self, split, ctx):
        _check_split(type(self), split)
        local = local_file(*self._local_names(split))
        if local is not None:
            documents, origin = read_jsonl_texts(local), str(local)
        else:
            documents = hub_column(
                self.hub_id, None, split, "text", data_files={split: self._hub_files[split]}
            )
            origin = f"hub:allenai/c4/{self._hub_files[split]}"
        return TextCorpus(self.name, split, " ".join(documents[:1100]), origin, documents=documents)


class EmbeddedProse(Dataset):
    name = "embedded"
    description = (
        "About 7,500 words of original English prose written for paqbench (train: "
        "calibration, test: evaluation). Needs no download."
    )
    splits = ("train", "test")

    def origin(self, split):
        return DataOrigin("embedded")

    def load(self, split, ctx):
        _check_split(type(self), split)
        resource = files("paqbench.data") / "embedded" / f"prose_{split}.txt"
        return TextCorpus(self.name, split, resource.read_text(encoding="utf-8"), "embedded")


class TextFile(Dataset):
    """Any local UTF-8 text file, named by its path (``dataset: path/to/file.txt``)."""

    name = "text-file"
    description = "Any local UTF-8 text file; write its path as the dataset name."
    splits = ("train", "test", "validation")

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None

    def origin(self, split):
        return DataOrigin(str(self.path)) if self.path else None

    def load(self, split, ctx):
        if self.path is None:
            raise DataUnavailable("text-file needs a path: write the file's path as the dataset name")

        problem = text_file_problem(self.path)
        if problem:
            raise DataUnavailable(problem)
        return TextCorpus(str(self.path), split, self.path.read_text(encoding="utf-8"), str(self.path))


@hookimpl
def paqbench_register_datasets(register):
    for dataset in (WikiText2, PennTreebank, C4, EmbeddedProse, TextFile):
        register(dataset)
