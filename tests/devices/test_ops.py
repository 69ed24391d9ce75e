"""The declared list of operations and its checks (pure: no device, no process)."""

from __future__ import annotations

import numpy as np
import pytest

from repartir.devices import ops
from repartir.devices.simd import SimdBackend

F32 = np.float32


def test_every_backend_supplies_every_operation():
    ops.check_backend(SimdBackend)
    pytest.importorskip("pyopencl")
    from repartir.devices.opencl import OpenCLBackend
    ops.check_backend(OpenCLBackend)


def test_a_backend_missing_an_operation_is_refused():
    class Partial:
        def add(self, a, b):
            return a + b

    with pytest.raises(TypeError, match="does not supply sub, mul"):
        ops.check_backend(Partial)


def test_the_list_is_the_issue_list():
    assert [op.name for op in ops.OPERATIONS] == [
        "add", "sub", "mul", "div", "scale", "fma", "abs", "clamp", "exp", "log", "sqrt",
        "sum", "dot", "min", "max", "argmin", "argmax", "mean", "variance", "norm_l1",
        "norm_l2", "relu", "sigmoid", "tanh", "gelu", "softmax", "log_softmax", "matmul",
        "matvec", "transpose"]


@pytest.mark.parametrize("name,shapes,params,out", [
    ("add", [(3, 4), (3, 4)], {}, ((3, 4), F32)),
    ("fma", [(5,), (5,), (5,)], {}, ((5,), F32)),
    ("scale", [(2,)], {"alpha": 2}, ((2,), F32)),
    ("sum", [(2, 3)], {}, ((), F32)),
    ("argmax", [(7,)], {}, ((), np.int64)),
    ("softmax", [(4, 9)], {}, ((4, 9), F32)),
    ("matmul", [(2, 3), (3, 5)], {}, ((2, 5), F32)),
    ("matvec", [(2, 3), (3,)], {}, ((2,), F32)),
    ("transpose", [(2, 3)], {}, ((3, 2), F32)),
])
def test_result_shapes(name, shapes, params, out):
    shape, dtype = ops.check_args(name, shapes, [F32] * len(shapes), params)
    assert (shape, dtype) == (out[0], np.dtype(out[1]))


@pytest.mark.parametrize("name,shapes,dtypes,params,error,match", [
    ("add", [(3,), (4,)], [F32, F32], {}, ValueError, r"\(3,\) and \(4,\)"),
    ("add", [(3,)], [F32], {}, ValueError, "takes 2 array"),
    ("mul", [(3,), (3,)], [F32, np.float64], {}, TypeError, "argument 1 has dtype float64"),
    ("scale", [(3,)], [F32], {"alpha": "2"}, TypeError, "finite real"),
    ("scale", [(3,)], [F32], {"alpha": float("nan")}, TypeError, "finite real"),
    ("scale", [(3,)], [F32], {"beta": 1}, ValueError, "unknown"),
    ("clamp", [(3,)], [F32], {"lo": 1, "hi": 0}, ValueError, "greater than hi"),
    ("mean", [(0, 3)], [F32], {}, ValueError, "empty"),
    ("softmax", [(3, 0)], [F32], {}, ValueError, "last axis"),
    ("matmul", [(2, 3), (4, 5)], [F32, F32], {}, ValueError, "inner dimensions"),
    ("matmul", [(2, 3, 1), (3, 5)], [F32, F32], {}, ValueError, "2-D"),
    ("matvec", [(2, 3), (3, 1)], [F32, F32], {}, ValueError, "1-D vector"),
    ("dot", [(3,), (3, 1)], [F32, F32], {}, ValueError, "differ"),
    ("frobnicate", [(3,)], [F32], {}, ValueError, "unknown tensor operation"),
])
def test_bad_arguments(name, shapes, dtypes, params, error, match):
    with pytest.raises(error, match=match):
        ops.check_args(name, shapes, dtypes, params)


def test_work_counts_bytes_and_flops():
    assert ops.work("add", [(1000,), (1000,)]) == (8000, 4000, 1000)
    assert ops.work("matmul", [(2, 3), (3, 5)]) == (4 * 6 + 4 * 15, 4 * 10, 2.0 * 2 * 3 * 5)
    assert ops.work("argmin", [(10,)]) == (40, 8, 10)
