"""Parameter pieces shared by the quantization methods.

One definition of the weight grid (bits, group size, symmetric), of a positive-or--1
group size and of the ``targets`` regex, so that methods with the same knob validate and
document it the same way and no method plugin imports another to reuse it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from paqbench.interfaces import Params
from paqbench.quant.quantizer import QuantConfig


def refuse_zero(message: str) -> AfterValidator:
    """A validator for a size where -1 means "all": 0 is refused with ``message`` (the
    range itself is the field's ``ge=-1``). One definition, so every such knob fails alike."""

    def check(value: int) -> int:
        if value == 0:
            raise ValueError(message)
        return value

    return AfterValidator(check)


#: Input columns sharing one scale and zero point; -1 is one group per output channel.
GroupSize = Annotated[
    int,
    Field(
        ge=-1, description="input columns sharing one scale and zero point; -1: one per output channel. "
        "A width it does not divide gets a shorter last group"
    ),
    refuse_zero("group_size must be positive, or -1 for one group per output channel"),
]

#: Which layers a method compresses.
Targets = Annotated[
    str | None, Field(description="regex over module names; default: the Linear layers inside decoder blocks")
]


class TargetParams(Params):
    """Only which layers: methods with no other knob."""

    targets: Targets = None


class WeightQuantParams(Params):
    """The grid shared by weight-only quantization methods (RTN, GPTQ, AWQ)."""

    bits: Literal[2, 3, 4, 8] = Field(4, description="bits per weight code (2, 3, 4 or 8)")
    group_size: GroupSize = 128
    symmetric: bool = Field(False, description="symmetric grid (zero point at the mid code) instead of min-max")
    targets: Targets = None

    def quant_config(self) -> QuantConfig:
        return QuantConfig(bits=self.bits, group_size=self.group_size, symmetric=self.symmetric)
