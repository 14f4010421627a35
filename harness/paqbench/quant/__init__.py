"""Quantized layers: packed low-bit codes, scales, zero points and group index.

- :mod:`paqbench.quant.packing`: bit packing of 1..8-bit codes (3-bit straddles bytes).
- :mod:`paqbench.quant.quantizer`: min-max grids, per channel or group-wise, RTN.
- :mod:`paqbench.quant.linear`: :class:`QuantizedLinear`, the compressed-layer contract's
  quantized layer, and :func:`load_quantized` to rebuild a saved quantized model.
- :mod:`paqbench.quant.kernels`: fast forward paths and how one is chosen.
- :mod:`paqbench.quant.sequential`: capturing and probing one block (the driver is :mod:`paqbench.blockwise.driver`).
- :mod:`paqbench.quant.gptq`: the GPTQ algorithm on one weight matrix.
- :mod:`paqbench.quant.awq`: AWQ's scale search, folding and clip search.
- :mod:`paqbench.quant.w8a8`: int8 weights with int8 per-token activations.
- :mod:`paqbench.quant.hqq`: HQQ's half-quadratic zero-point optimization (data-free).
- :mod:`paqbench.quant.fp8`: FP8 (E4M3) weights, optional FP8 dynamic activations.
- :mod:`paqbench.quant.codebook`, :mod:`~paqbench.quant.nf4`, :mod:`~paqbench.quant.lut`,
  :mod:`~paqbench.quant.vq`: codebook formats (NF4, k-means tables, vector quantization).
"""

# Layer formats are found for loading through the registry (the
# paqbench_register_layer_formats hook; built-ins in paqbench_plugins.formats).
from paqbench.quant.linear import QuantizedLinear, load_quantized, replace_with_quantized
from paqbench.quant.quantizer import QuantConfig, QuantizedWeight

__all__ = ["QuantConfig", "QuantizedLinear", "QuantizedWeight", "load_quantized", "replace_with_quantized"]
