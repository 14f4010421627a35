"""RACE-H / RACE-M accuracy, scored exactly as lm-eval's ``race`` task (one document per
article, the last question scored with the earlier ones answered in the prompt), from the
hub's parquet ``ehovy/race``, a local copy, or paqbench's small embedded sample.

The scoring lives in :mod:`paqbench.measure.race`; this module turns it into measurements.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field
from torch import nn

from paqbench import DataOrigin, Measurement, Metric, Params, RunContext, Unavailable, hookimpl
from paqbench.measure.race import (
    HUB_DATASET,
    RaceDataUnavailable,
    fingerprint,
    load_race,
    local_dir,
    mean_and_stderr,
    score_documents,
)


class RaceParams(Params):
    subset: Literal["high", "middle"] = Field(
        "high", description="RACE-H (high) or RACE-M (middle)"
    )
    split: Literal["test", "validation", "dev", "train"] = Field(
        "test", description="split (dev and validation are the same split)"
    )
    source: Literal["auto", "hub", "local", "embedded"] = Field(
        "auto",
        description=(
            "hub: datasets.load_dataset(hub_dataset, subset); local: data_dir; embedded: the "
            "original sample shipped with paqbench (test only); auto: local when data_dir "
            "(or PAQBENCH_DATA_DIR/race) exists, else hub"
        ),
    )
    data_dir: str | None = Field(
        None,
        description=(
            "local RACE: the hub's layout (<dir>/<subset>/<split>-*.parquet) or the original "
            "release (<dir>/[RACE/]<train|dev|test>/<subset>/*.txt)"
        ),
    )
    hub_dataset: str = Field(HUB_DATASET, description="hub dataset with per-question parquet rows")
    limit: int | None = Field(
        None, gt=0,
        description="score only the first N documents (articles), as lm-eval's --limit counts; "
        "--limit also caps",
    )
    batch_size: int = Field(
        4, gt=0, description="sequences (context + one option) per forward pass"
    )


class Race(Metric):
    name = "race"
    description = (
        "RACE reading-comprehension accuracy (acc, acc_norm with stderr), scored exactly as "
        "lm-eval's race task: one document per article, its last question scored by the "
        "log-likelihood of each option given the article and the earlier questions with their "
        "answers; acc_norm divides by the option's length in characters. Data from the hub "
        "(ehovy/race parquet), a local copy, or the embedded original sample (source: "
        "embedded; 14 high / 10 middle articles). Cost: 4 forward passes per article "
        "(RACE-H test: 1,045 articles, about 4,200 sequences of ~400-700 tokens)."
    )
    Params = RaceParams
    supports_offload = True  # loglikelihoods runs block by block on weights left on disk

    @classmethod
    def data_origins(cls, params: RaceParams) -> list[tuple[str, DataOrigin]]:
        if params.source == "embedded":
            return [("source", DataOrigin("embedded"))]
        directory = local_dir(params.source, params.data_dir)
        if directory is not None:
            return [("data_dir", DataOrigin(str(directory)))]
        if params.source == "local":
            return []  # load_race names what is missing
        return [("source", DataOrigin(
            params.hub_dataset, hub=True,
            offline="set data_dir (or PAQBENCH_DATA_DIR with a race/ folder) to RACE in the hub's parquet "
            "layout or the original release, or use source: embedded (a different, much smaller sample)"))]

    def measure(self, model: nn.Module, params: RaceParams, ctx: RunContext) -> Iterator[Measurement]:
        try:
            data = load_race(params.subset, params.split, params.source, params.data_dir,
                             params.hub_dataset)
        except RaceDataUnavailable as exc:
            raise Unavailable(str(exc)) from exc
        caps = [c for c in (params.limit, ctx.limit) if c is not None]
        documents = data.documents[: min(caps)] if caps else data.documents
        if not documents:
            raise Unavailable(
                f"RACE {params.subset}/{params.split} from {data.origin} has no documents"
            )
        scores, facts = score_documents(
            model, ctx.tokenizer, documents, params.batch_size,
            wrap=lambda it, total: ctx.progress(it, f"race-{params.subset}", total=total),
        )
        details = {
            "subset": params.subset, "split": params.split, "source": data.source,
            "origin": data.origin, "documents": len(documents),
            "total_documents": len(data.documents),
            "questions": sum(len(d.problems) for d in documents),
            "data_fingerprint": fingerprint(documents),
            "window_tokens": facts["window"], "truncated_requests": facts["truncated_requests"],
            "protocol": "lm-eval race (v3.0): last question per article, 0-shot, log-likelihood",
            "samples_are": "1 if the document's last question was answered correctly, else 0",
        }
        for metric in ("acc", "acc_norm"):
            values = [getattr(score, metric) for score in scores]
            mean, stderr = mean_and_stderr(values)
            yield self.make(
                f"{params.subset}/{metric}", mean, "fraction", "higher",
                spread={"stderr": stderr} if stderr is not None else None,
                samples=values, details=details,
            )


@hookimpl
def paqbench_register_metrics(register):
    register(Race)
