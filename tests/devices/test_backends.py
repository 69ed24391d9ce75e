"""One test body for every device backend: each operation of ``repartir.devices.ops`` against
a float64 numpy reference, within the tolerance the operation states, through a device actor
(``SimdDevice``, and ``OpenCLDevice`` on PoCL, OpenCL on the CPU); bad shapes and dtypes fail
before any work starts."""

from __future__ import annotations

import numpy as np
import pytest

import repartir
from repartir.devices import OPERATIONS, SimdDevice
from devsupport import assert_close, call_args, reference

BACKENDS = ["simd", "opencl"]


@pytest.fixture(scope="module")
def devices(rt):
    made = {"simd": SimdDevice.remote()}
    yield made
    for dev in made.values():
        repartir.kill(dev)


def _device(devices, backend):
    if backend not in devices:
        pytest.importorskip("pyopencl")
        from repartir.devices import OpenCLDevice
        devices[backend] = OpenCLDevice.remote(kind="cpu")   # PoCL in CI
    return devices[backend]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [op.name for op in OPERATIONS])
def test_operation_matches_numpy(devices, backend, name):
    dev = _device(devices, backend)
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    args, params = call_args(name, rng)
    got = repartir.get(dev.op.remote(name, *args, **params))
    assert_close(name, got, reference(name, args, params), args)
    if isinstance(got, np.ndarray):
        assert got.dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,args,params,error,match", [
    ("add", (np.ones(3, np.float32), np.ones(4, np.float32)), {}, ValueError, "differ"),
    ("add", (np.ones(3, np.float64), np.ones(3, np.float32)), {}, TypeError, "float32"),
    ("matmul", (np.ones((2, 3), np.float32), np.ones((2, 3), np.float32)), {}, ValueError,
     "inner dimensions"),
    ("matvec", (np.ones((2, 3), np.float32), np.ones(2, np.float32)), {}, ValueError, "3 != 2"),
    ("clamp", (np.ones(3, np.float32),), {"lo": 2.0, "hi": 1.0}, ValueError, "greater"),
    ("scale", (np.ones(3, np.float32),), {}, ValueError, "missing"),
    ("sum", (np.ones(0, np.float32),), {}, ValueError, "empty"),
    ("transpose", (np.ones(3, np.float32),), {}, ValueError, "2-D"),
    ("cosh", (np.ones(3, np.float32),), {}, ValueError, "unknown"),
])
def test_bad_arguments_fail_before_work(devices, backend, name, args, params, error, match):
    dev = _device(devices, backend)
    with pytest.raises(error, match=match):
        repartir.get(dev.op.remote(name, *args, **params))
    # the actor is still usable
    assert repartir.get(dev.op.remote("sum", np.ones(4, np.float32))) == 4.0


def test_softmax_rows_sum_to_one(devices):
    dev = _device(devices, "opencl")
    x = np.random.default_rng(0).standard_normal((7, 300), dtype=np.float32) * 10
    assert np.allclose(repartir.get(dev.op.remote("softmax", x)).sum(axis=1), 1, atol=1e-5)


def test_opencl_sgemm_register_blocked_path(devices):
    """256x256 @ 256x128 takes the 128x128 kernel; 130x17 @ 17x129 the tiled one."""
    dev = _device(devices, "opencl")
    rng = np.random.default_rng(3)
    for m, k, n in ((256, 256, 128), (130, 17, 129)):
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        got = repartir.get(dev.op.remote("matmul", a, b))
        assert_close("matmul", got, a.astype(np.float64) @ b, (a, b))
