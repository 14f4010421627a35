"""Quantized layers: packed low-bit codes, scales, zero points and group index.

- :mod:`paqbench.quant.packing`: bit packing of 1..8-bit codes (3-bit straddles bytes).
- :mod:`paqbench.quant.quantizer`: min-max grids, per channel or group-wise, RTN.
- :mod:`paqbench.quant.linear`: :class:`QuantizedLinear`, the compressed-layer contract's
  quantized layer, and :func:`load_quantized` to rebuild a saved quantized model.
- :mod:`paqbench.quant.kernels`: fast forward paths and how one is chosen.
- :mod:`paqbench.quant.sequential`: layer-sequential calibration for layer-wise methods.
- :mod:`paqbench.quant.gptq`: the GPTQ algorithm on one weight matrix.
"""

from paqbench.quant.linear import QuantizedLinear, load_quantized, register_format, replace_with_quantized
from paqbench.quant.quantizer import QuantConfig, QuantizedWeight

__all__ = [
    "QuantConfig", "QuantizedLinear", "QuantizedWeight", "load_quantized", "register_format", "replace_with_quantized",
]
