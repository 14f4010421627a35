"""Parameter pieces shared by the peer adapters (auto-round, llm-compressor, torchao, hqq).

Each peer converts what its library produced into paqbench's layers and records where the
conversion is not bit for bit; ``require_exact`` turns such a difference into a failure.
One definition, so every peer documents and validates its shared knobs the same way.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from paqbench.quant.params import refuse_zero

#: Fail the step unless every layer converts bit for bit.
RequireExact = Annotated[
    bool, Field(description="fail the step unless every layer converts bit for bit (else differences are recorded)")
]

#: A peer's group size, where -1 is one group per output row (the field gives default,
#: range and description).
RowGroupSize = Annotated[int, refuse_zero("group_size must be positive, or -1 for one group per output row")]
