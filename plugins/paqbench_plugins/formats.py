"""The built-in compressed layer formats, registered through the same hook a
third-party format uses (``paqbench_register_layer_formats``)."""

from __future__ import annotations

from collections.abc import Callable

from paqbench import CompressedLayer, hookimpl
from paqbench.layers.structured import InputSelect, OutputScatter
from paqbench.quant.embedding import QuantizedEmbedding, TiedQuantizedHead
from paqbench.quant.fp8 import FP8Linear
from paqbench.quant.linear import QuantizedLinear
from paqbench.quant.lut import LUTLinear
from paqbench.quant.nf4 import NF4Linear
from paqbench.quant.vq import VQLinear
from paqbench.quant.w8a8 import Int8DynamicLinear

BUILTIN_FORMATS: tuple[type[CompressedLayer], ...] = (
    QuantizedLinear, NF4Linear, LUTLinear, VQLinear, Int8DynamicLinear, FP8Linear,
    QuantizedEmbedding, TiedQuantizedHead, InputSelect, OutputScatter,
)


@hookimpl
def paqbench_register_layer_formats(register: Callable[[type[CompressedLayer]], None]) -> None:
    for layer_format in BUILTIN_FORMATS:
        register(layer_format)
