"""Parameters shared by the unstructured / N:M pruning methods."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from paqbench import Params
from paqbench.prune.nm import NMPattern, parse_nm


class SparsityParams(Params):
    """``sparsity`` or an N:M ``pattern`` (then ``sparsity`` is N/M), and ``targets``."""

    sparsity: float = Field(
        0.5, ge=0.0, lt=1.0,
        description="fraction of weights zeroed in each targeted layer; with `pattern`, leave unset (it is N/M)",
    )
    pattern: str | None = Field(
        None,
        description="N:M semi-structured sparsity, e.g. '2:4': zero N of every M consecutive input weights "
        "of each row (the SparseGPT/Wanda convention: 2:4 and 4:8 are 50%, 1:4 is 25%); null: unstructured",
    )
    targets: str | None = Field(
        None, description="regex over module names; default: the Linear layers inside decoder blocks"
    )

    @field_validator("pattern")
    @classmethod
    def _normalize_pattern(cls, value: str | None) -> str | None:
        return None if value is None else str(parse_nm(value))

    @model_validator(mode="before")
    @classmethod
    def _sparsity_from_pattern(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("pattern") is None:
            return data
        pattern = parse_nm(data["pattern"])
        given = data.get("sparsity")
        if given is None:
            return {**data, "sparsity": pattern.sparsity}
        try:
            value = float(given)
        except (TypeError, ValueError):
            return data  # the field's own validation reports the type
        if abs(value - pattern.sparsity) > 1e-9:
            raise ValueError(
                f"sparsity {given} contradicts pattern {data['pattern']!r}, which zeroes "
                f"{pattern.n} of every {pattern.m} weights (sparsity {pattern.sparsity:g}); "
                "leave sparsity unset when giving a pattern"
            )
        return data

    @property
    def nm(self) -> NMPattern | None:
        return None if self.pattern is None else parse_nm(self.pattern)
