"""The SIMD backend: every operation of :data:`~repartir.devices.ops.OPERATIONS` on numpy.

numpy's own loops are the CPU's SIMD kernels (SSE/AVX2/AVX-512 or NEON, chosen at run time by
numpy's dispatch), and ``matmul`` goes to the BLAS numpy was built with; this backend adds only
the argument check of :func:`~repartir.devices.ops.check_args` (a few microseconds) and no copy,
so on 1M float32 it costs what plain numpy costs (``stress/devices_bench.py``, ``tensor_cpu``).

Reductions return numpy scalars (``float32``; ``int64`` for argmin/argmax); the other
operations return new ``float32`` arrays.  Inputs are never written.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .ops import check_args, check_backend

__all__ = ["SimdBackend"]

_F32 = np.float32
_SQRT_2_OVER_PI = np.float32(0.7978845608028654)
_GELU_C = np.float32(0.044715)


#: Signatures (operation, shapes, dtypes, parameters) already checked: a repeated call costs
#: one dict lookup instead of the full check (a few microseconds on a 1M-element operation
#: that takes a few hundred).  Bounded: cleared when it grows past _SEEN_MAX entries.
_seen: set = set()
_SEEN_MAX = 4096


def _check(name: str, arrays: tuple, params: dict | None = None) -> None:
    key = None
    if all(type(a) is np.ndarray for a in arrays):
        try:
            key = (name, tuple((a.shape, a.dtype) for a in arrays),
                   tuple(params.items()) if params else ())
            if key in _seen:
                return
        except TypeError:                            # unhashable parameters
            key = None
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: argument {i} is a {type(a).__qualname__}, the SIMD "
                            "backend takes numpy arrays")
    check_args(name, [a.shape for a in arrays], [a.dtype for a in arrays], params)
    if key is not None:
        if len(_seen) >= _SEEN_MAX:
            _seen.clear()
        _seen.add(key)


class SimdBackend:
    """Tensor operations on the host's SIMD units through numpy (``float32`` in and out).

    Every method checks its arguments first (shapes, dtype ``float32``, parameters) and raises
    ``ValueError``/``TypeError`` as :func:`repartir.devices.ops.check_args` says.
    """

    name = "cpu-simd"

    def device_name(self) -> str:
        """``"CPU (numpy SIMD)"``."""
        return "CPU (numpy SIMD)"

    # element-wise -----------------------------------------------------------------------
    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        _check("add", (a, b))
        return np.add(a, b)

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        _check("sub", (a, b))
        return np.subtract(a, b)

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        _check("mul", (a, b))
        return np.multiply(a, b)

    def div(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        _check("div", (a, b))
        return np.divide(a, b)

    def scale(self, a: np.ndarray, *, alpha: float) -> np.ndarray:
        _check("scale", (a,), {"alpha": alpha})
        return np.multiply(a, _F32(alpha))

    def fma(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        _check("fma", (a, b, c))
        out = np.multiply(a, b)
        return np.add(out, c, out=out)

    def abs(self, a: np.ndarray) -> np.ndarray:
        _check("abs", (a,))
        return np.abs(a)

    def clamp(self, a: np.ndarray, *, lo: float, hi: float) -> np.ndarray:
        _check("clamp", (a,), {"lo": lo, "hi": hi})
        return np.clip(a, _F32(lo), _F32(hi))

    def exp(self, a: np.ndarray) -> np.ndarray:
        _check("exp", (a,))
        return np.exp(a)

    def log(self, a: np.ndarray) -> np.ndarray:
        _check("log", (a,))
        return np.log(a)

    def sqrt(self, a: np.ndarray) -> np.ndarray:
        _check("sqrt", (a,))
        return np.sqrt(a)

    # reductions -------------------------------------------------------------------------
    def sum(self, a: np.ndarray) -> Any:
        _check("sum", (a,))
        return np.sum(a)

    def dot(self, a: np.ndarray, b: np.ndarray) -> Any:
        _check("dot", (a, b))
        if a.ndim == 1:
            return np.dot(a, b)
        return np.dot(a.ravel(), b.ravel())

    def min(self, a: np.ndarray) -> Any:
        _check("min", (a,))
        return np.min(a)

    def max(self, a: np.ndarray) -> Any:
        _check("max", (a,))
        return np.max(a)

    def argmin(self, a: np.ndarray) -> Any:
        _check("argmin", (a,))
        return np.int64(np.argmin(a))

    def argmax(self, a: np.ndarray) -> Any:
        _check("argmax", (a,))
        return np.int64(np.argmax(a))

    def mean(self, a: np.ndarray) -> Any:
        _check("mean", (a,))
        return np.mean(a)

    def variance(self, a: np.ndarray) -> Any:
        _check("variance", (a,))
        return np.var(a)

    def norm_l1(self, a: np.ndarray) -> Any:
        _check("norm_l1", (a,))
        return np.add.reduce(np.abs(a), axis=None)

    def norm_l2(self, a: np.ndarray) -> Any:
        _check("norm_l2", (a,))
        flat = a.ravel()
        return np.sqrt(np.dot(flat, flat))

    # activations ------------------------------------------------------------------------
    def relu(self, a: np.ndarray) -> np.ndarray:
        _check("relu", (a,))
        return np.maximum(a, _F32(0))

    def sigmoid(self, a: np.ndarray) -> np.ndarray:
        _check("sigmoid", (a,))
        out = np.negative(a)
        np.exp(out, out=out)
        out += _F32(1)
        return np.reciprocal(out, out=out)

    def tanh(self, a: np.ndarray) -> np.ndarray:
        _check("tanh", (a,))
        return np.tanh(a)

    def gelu(self, a: np.ndarray) -> np.ndarray:
        """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (Hendrycks & Gimpel 2016)."""
        _check("gelu", (a,))
        inner = np.multiply(a, a)
        inner *= _GELU_C
        inner += _F32(1)
        inner *= a
        inner *= _SQRT_2_OVER_PI
        np.tanh(inner, out=inner)
        inner += _F32(1)
        inner *= a
        inner *= _F32(0.5)
        return inner

    def softmax(self, a: np.ndarray) -> np.ndarray:
        """exp(x - max) / sum(exp(x - max)) along the last axis."""
        _check("softmax", (a,))
        out = np.subtract(a, np.max(a, axis=-1, keepdims=True))
        np.exp(out, out=out)
        out /= np.sum(out, axis=-1, keepdims=True)
        return out

    def log_softmax(self, a: np.ndarray) -> np.ndarray:
        """x - max - log(sum(exp(x - max))) along the last axis."""
        _check("log_softmax", (a,))
        shifted = np.subtract(a, np.max(a, axis=-1, keepdims=True))
        lse = np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
        shifted -= lse
        return shifted

    # linear algebra ---------------------------------------------------------------------
    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        _check("matmul", (a, b))
        return np.matmul(a, b)

    def matvec(self, a: np.ndarray, x: np.ndarray) -> np.ndarray:
        _check("matvec", (a, x))
        return np.matmul(a, x)

    def transpose(self, a: np.ndarray) -> np.ndarray:
        """A new C-contiguous (n, m) array (not a view: results never alias inputs)."""
        _check("transpose", (a,))
        return np.ascontiguousarray(a.T)


check_backend(SimdBackend)
