"""The tensor operations every device backend supplies: one declared list, checked once.

As pyzmq's ``zmq/backend/select.py`` names the functions every backend must export, this module
names the operations every device backend (:mod:`~repartir.devices.simd` on numpy,
:mod:`~repartir.devices.opencl` on an OpenCL device) must supply, and :func:`check_backend`
refuses a backend that lacks one.  It also holds what is the same for every backend: the
shapes and dtypes an operation accepts (:func:`check_args`, called before any work starts), the
size of its result, the work it does (bytes moved, floating-point operations: the cost model's
inputs, :mod:`~repartir.devices.select`) and how closely two backends must agree (``Op.rtol``,
``Op.atol``, tested in ``tests/devices/``).

Operations, in the style of trueno, all on ``float32``:

=============== ============================================ ======================================
kind            operations                                   shapes
=============== ============================================ ======================================
element-wise    add, sub, mul, div, fma (a*b+c)              equal shapes, any rank; same shape out
                scale (a*alpha), clamp (lo, hi), abs, exp,   any shape; same shape out
                log, sqrt
reduction       sum, min, max, mean, variance (population,   any shape, at least one element;
                ddof 0), norm_l1, norm_l2, argmin, argmax    a scalar out (argmin/argmax: the flat
                (first occurrence), dot (two equal shapes)   index, an ``int64``)
activation      relu, sigmoid, tanh, gelu (tanh form,        any shape; same shape out. softmax and
                Hendrycks & Gimpel 2016), softmax,            log_softmax work along the last axis
                log_softmax
linear algebra  matmul (m,k)@(k,n), matvec (m,n)@(n,),       2-D (matvec: 2-D and 1-D)
                transpose (m,n)->(n,m)
=============== ============================================ ======================================

This module imports numpy only: it is the contract, the backends are the strategies.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

__all__ = ["Op", "OPERATIONS", "NAMES", "DTYPE", "check_args", "check_backend", "work",
           "result_shape"]

#: The one dtype every operation takes and returns (argmin/argmax return ``int64``).
DTYPE = np.dtype(np.float32)


@dataclasses.dataclass(frozen=True)
class Op:
    """One operation of the declared list.

    Attributes:
        name: the method name every backend defines.
        kind: ``"elementwise"``, ``"reduction"``, ``"activation"`` or ``"linalg"``.
        arity: how many arrays it takes (1, 2 or 3).
        params: names of its scalar keyword parameters (e.g. ``("alpha",)`` for ``scale``).
        flops_per_element: floating-point operations per output element (per input element
            for reductions); ``matmul``/``matvec`` count ``2*k`` per output element.
        rtol, atol: how far two backends' float32 results may be apart
            (``|x - y| <= atol + rtol * |y|``, element-wise; for reductions ``atol`` is
            multiplied by the sum of the inputs' absolute values, the size of the rounding a
            different summation order may give).
    """

    name: str
    kind: str
    arity: int
    params: tuple[str, ...] = ()
    flops_per_element: float = 1.0
    rtol: float = 1e-6
    atol: float = 0.0


_E, _R, _A, _L = "elementwise", "reduction", "activation", "linalg"

#: The declared list: every backend supplies each of these as a method of the same name.
OPERATIONS: tuple[Op, ...] = (
    Op("add", _E, 2), Op("sub", _E, 2), Op("mul", _E, 2),
    Op("div", _E, 2, rtol=3e-7 * 4),                  # OpenCL allows 2.5 ulp for float division
    Op("scale", _E, 1, ("alpha",)),
    Op("fma", _E, 3, flops_per_element=2, rtol=1e-6, atol=1e-6),   # fused or not: one rounding
    Op("abs", _E, 1), Op("clamp", _E, 1, ("lo", "hi"), flops_per_element=2),
    Op("exp", _E, 1, flops_per_element=10, rtol=2e-6),             # OpenCL: 3 ulp
    Op("log", _E, 1, flops_per_element=10, rtol=2e-6, atol=1e-7),
    Op("sqrt", _E, 1, flops_per_element=4, rtol=2e-6),
    Op("sum", _R, 1, rtol=1e-5, atol=1e-6),
    Op("dot", _R, 2, flops_per_element=2, rtol=1e-5, atol=1e-6),
    Op("min", _R, 1, rtol=0.0), Op("max", _R, 1, rtol=0.0),
    Op("argmin", _R, 1, rtol=0.0), Op("argmax", _R, 1, rtol=0.0),
    Op("mean", _R, 1, rtol=1e-5, atol=1e-6),
    Op("variance", _R, 1, flops_per_element=3, rtol=1e-4, atol=1e-6),
    Op("norm_l1", _R, 1, rtol=1e-5, atol=1e-6),
    Op("norm_l2", _R, 1, flops_per_element=2, rtol=1e-5, atol=1e-6),
    Op("relu", _A, 1), Op("sigmoid", _A, 1, flops_per_element=12, rtol=1e-5, atol=1e-7),
    Op("tanh", _A, 1, flops_per_element=12, rtol=1e-5, atol=1e-6),
    Op("gelu", _A, 1, flops_per_element=20, rtol=1e-5, atol=1e-6),
    Op("softmax", _A, 1, flops_per_element=14, rtol=1e-5, atol=1e-7),
    Op("log_softmax", _A, 1, flops_per_element=14, rtol=1e-5, atol=1e-5),
    Op("matmul", _L, 2, rtol=1e-4, atol=1e-4), Op("matvec", _L, 2, rtol=1e-4, atol=1e-4),
    Op("transpose", _L, 1, flops_per_element=0, rtol=0.0),
)

#: Operation name -> :class:`Op`.
NAMES: dict[str, Op] = {op.name: op for op in OPERATIONS}


def check_backend(backend: Any) -> None:
    """Refuse a backend (class or instance) that lacks one of :data:`OPERATIONS`.

    Raises:
        TypeError: naming every missing operation.
    """
    missing = [op.name for op in OPERATIONS if not callable(getattr(backend, op.name, None))]
    if missing:
        name = getattr(backend, "__name__", type(backend).__name__)
        raise TypeError(f"device backend {name} does not supply {', '.join(missing)}: every "
                        "backend supplies each operation of repartir.devices.ops.OPERATIONS")


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def check_args(name: str, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[Any],
               params: dict[str, Any] | None = None) -> tuple[tuple[int, ...], np.dtype]:
    """Check an operation's arguments before any work starts; return its result's shape and dtype.

    Args:
        name: an operation of :data:`OPERATIONS`.
        shapes: the shape of each array argument, in order.
        dtypes: the dtype of each array argument (each must be ``float32``).
        params: the scalar parameters (``alpha`` for ``scale``, ``lo``/``hi`` for ``clamp``).

    Returns:
        ``(shape, dtype)`` of the result: ``()`` for reductions, ``int64`` for argmin/argmax.

    Raises:
        ValueError: an unknown operation, a wrong number of arrays, mismatched or empty shapes,
            a missing or unknown parameter, ``lo > hi``.
        TypeError: an array whose dtype is not ``float32``, or a parameter that is not a real
            number.
    """
    op = NAMES.get(name)
    if op is None:
        raise ValueError(f"unknown tensor operation {name!r}; the operations are "
                         f"{', '.join(NAMES)}")
    params = dict(params or {})
    if len(shapes) != op.arity or len(dtypes) != op.arity:
        raise ValueError(f"{name} takes {op.arity} array(s), got {len(shapes)}")
    for i, dt in enumerate(dtypes):
        if np.dtype(dt) != DTYPE:
            raise TypeError(f"{name}: argument {i} has dtype {np.dtype(dt)}, the device "
                            f"operations take float32 (convert with a.astype(np.float32))")
    unknown = set(params) - set(op.params)
    missing = set(op.params) - set(params)
    if unknown or missing:
        raise ValueError(f"{name} takes the parameters {list(op.params) or 'none'}; "
                         + (f"missing {sorted(missing)}" if missing else "")
                         + ("; " if missing and unknown else "")
                         + (f"unknown {sorted(unknown)}" if unknown else ""))
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                or not math.isfinite(float(v)):
            raise TypeError(f"{name}: parameter {k} must be a finite real number, got {v!r}")
    if name == "clamp" and float(params["lo"]) > float(params["hi"]):
        raise ValueError(f"clamp: lo ({params['lo']}) is greater than hi ({params['hi']})")
    shapes = [tuple(int(d) for d in s) for s in shapes]
    a = shapes[0]
    if op.kind in (_E, _A) or name == "dot":
        for i, s in enumerate(shapes[1:], 1):
            if s != a:
                raise ValueError(f"{name}: shapes {_shape_text(a)} and {_shape_text(s)} "
                                 f"(argument {i}) differ; element-wise operations need equal "
                                 "shapes (no broadcasting)")
    if op.kind == _R:
        if math.prod(a) == 0:
            raise ValueError(f"{name} of an empty array {_shape_text(a)} is undefined")
        return (), (np.dtype(np.int64) if name in ("argmin", "argmax") else DTYPE)
    if op.kind == _A and name in ("softmax", "log_softmax"):
        if len(a) == 0 or a[-1] == 0:
            raise ValueError(f"{name} needs at least one element along the last axis, got "
                             f"shape {_shape_text(a)}")
    if op.kind in (_E, _A):
        return a, DTYPE
    if name == "transpose":
        if len(a) != 2:
            raise ValueError(f"transpose takes a 2-D array, got shape {_shape_text(a)}")
        return (a[1], a[0]), DTYPE
    b = shapes[1]
    if name == "matmul":
        if len(a) != 2 or len(b) != 2:
            raise ValueError(f"matmul takes two 2-D arrays, got shapes {_shape_text(a)} and "
                             f"{_shape_text(b)}")
        if a[1] != b[0]:
            raise ValueError(f"matmul: inner dimensions differ: {_shape_text(a)} @ "
                             f"{_shape_text(b)} ({a[1]} != {b[0]})")
        return (a[0], b[1]), DTYPE
    # matvec
    if len(a) != 2 or len(b) != 1:
        raise ValueError(f"matvec takes a 2-D matrix and a 1-D vector, got shapes "
                         f"{_shape_text(a)} and {_shape_text(b)}")
    if a[1] != b[0]:
        raise ValueError(f"matvec: {_shape_text(a)} @ {_shape_text(b)}: {a[1]} != {b[0]}")
    return (a[0],), DTYPE


def result_shape(name: str, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The shape of ``name``'s result for float32 arguments of ``shapes`` (:func:`check_args`)."""
    op = NAMES[name]
    params = {p: 0.0 for p in op.params}
    return check_args(name, shapes, [DTYPE] * len(shapes), params)[0]


def work(name: str, shapes: Sequence[tuple[int, ...]]) -> tuple[int, int, float]:
    """What an operation costs, for the cost model.

    Returns:
        ``(bytes_in, bytes_out, flops)``: bytes of the arguments and of the result (float32,
        4 bytes an element) and floating-point operations (a multiply-add counts 2).
    """
    op = NAMES[name]
    out = result_shape(name, shapes)
    bytes_in = sum(4 * math.prod(s) for s in shapes)
    bytes_out = (8 if name in ("argmin", "argmax") else 4) * math.prod(out)
    if name == "matmul":
        flops = 2.0 * shapes[0][0] * shapes[0][1] * shapes[1][1]
    elif name == "matvec":
        flops = 2.0 * shapes[0][0] * shapes[0][1]
    elif op.kind == _R:
        flops = op.flops_per_element * math.prod(shapes[0])
    else:
        flops = op.flops_per_element * math.prod(out)
    return bytes_in, bytes_out, flops
