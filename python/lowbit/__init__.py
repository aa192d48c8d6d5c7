"""lowbit: quantize LLMs and measure what it costs — the C++ core from Python.

    >>> import numpy as np, lowbit
    >>> lowbit.encode(np.float32([0.3, 470]), "e4m3").tolist()          # codes equal ml_dtypes
    [42, 127]
    >>> q = lowbit.quantize(np.random.rand(64, 256).astype(np.float32), "int4:g128:sym:fp16")
    >>> q.codes.shape, q.scales.shape, q.bits_per_weight                 # numpy views, no copy
    ((64, 128), (64, 2), 4.125)
    >>> x_hat = lowbit.dequantize(q)

Errors carry lowbit's one-line message: ValueError for bad input (unknown format or spec, wrong
dtype, corrupt file), FileNotFoundError / OSError for files. Long calls release the GIL.
See README.md ("Python") and `python -m lowbit --help` (the CLI).
"""
from __future__ import annotations

from . import _core
from ._core import (  # noqa: F401  (the public API)
    AbsMaxObserver,
    AmaxHistory,
    Model,
    MseObserver,
    PackedWeights,
    PercentileObserver,
    QuantizedTensor,
    QuantSpec,
    Scheme,
    active_isa,
    decode,
    dequantize,
    dynamic_clip,
    encode,
    error_stats,
    evaluate,
    formats,
    kernel_supports,
    kernels,
    load_model,
    matmul,
    num_threads,
    pack_weights,
    packed_bytes,
    quantize,
    quantize_model,
    scheme,
    schemes,
    set_isa,
    set_num_threads,
    supported_isas,
    traits,
)

__version__ = _core.__version__

__all__ = [
    "AbsMaxObserver", "AmaxHistory", "Model", "MseObserver", "PackedWeights", "PercentileObserver",
    "QuantizedTensor", "QuantSpec", "Scheme", "active_isa", "decode", "dequantize", "dynamic_clip", "encode",
    "error_stats", "evaluate", "formats", "kernel_supports", "kernels", "load_model", "matmul", "num_threads",
    "pack_weights", "packed_bytes", "quantize", "quantize_model", "scheme", "schemes", "set_isa",
    "set_num_threads", "supported_isas", "traits",
]
