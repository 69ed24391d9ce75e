"""Device actors on PoCL (OpenCL on the CPU): programs, build errors, DeviceArray handles,
kernels, and what may not cross a process boundary."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("pyopencl")

import repartir  # noqa: E402
from repartir.devices import DeviceArray, OpenCLDevice, discover  # noqa: E402
from repartir.errors import DeviceError, SerializationError  # noqa: E402

SCALE = """
__kernel void scale(__global float* x, const float k, const uint n) {
    const uint i = get_global_id(0);
    if (i < n) x[i] *= k;
}
"""


@pytest.fixture(scope="module")
def dev(rt):
    d = OpenCLDevice.remote(kind="cpu")
    yield d
    repartir.kill(d)


def test_discovery_sees_pocl():
    devices = discover()
    cpus = [d for d in devices if d.type == "cpu"]
    assert cpus, devices
    assert cpus[0].compute_units >= 1 and cpus[0].global_mem_bytes > 0


def test_build_failure_is_a_picklable_device_error_and_the_actor_lives_on(dev):
    with pytest.raises(DeviceError) as info:
        repartir.get(dev.build.remote("__kernel void broken(__global float* x) { x[0] = ; }",
                                      "-DWIDTH=4 -cl-mad-enable"))
    err = info.value
    name = repartir.get(dev.device_name.remote())
    assert err.device == name
    assert err.options == "-DWIDTH=4 -cl-mad-enable"
    assert "error" in err.log.lower() and len(err.log) > 20
    assert "build log" in str(err) and err.options in str(err)
    again = pickle.loads(pickle.dumps(DeviceError("m", device="d", options="-O", log="L")))
    assert (again.device, again.options, again.log) == ("d", "-O", "L")
    assert repartir.get(dev.build.remote(SCALE)) == ["scale"]      # still usable


def test_programs_are_cached_by_source_and_options(dev):
    repartir.get(dev.build.remote(SCALE, "-DA=1"))
    cached = repartir.get(dev.build.remote(SCALE, "-DA=1"))
    assert cached == ["scale"]


def test_run_kernel_on_a_device_array(dev):
    x = repartir.get(dev.upload.remote(np.arange(10, dtype=np.float32)))
    assert isinstance(x, DeviceArray) and x.shape == (10,) and x.dtype == "float32"
    secs = repartir.get(dev.run_kernel.remote(SCALE, "scale", (16,), None, x, np.float32(3),
                                              np.uint32(10)))
    assert secs >= 0
    np.testing.assert_array_equal(repartir.get(dev.download.remote(x)),
                                  3 * np.arange(10, dtype=np.float32))
    with pytest.raises(TypeError, match="np.int32"):
        repartir.get(dev.run_kernel.remote(SCALE, "scale", (16,), None, x, 3.0, 10))
    with pytest.raises(DeviceError, match="no kernel named 'scal'"):
        repartir.get(dev.run_kernel.remote(SCALE, "scal", (16,), None, x, np.float32(3),
                                           np.uint32(10)))
    assert repartir.get(dev.free.remote(x)) == 1
    with pytest.raises(DeviceError, match="freed"):
        repartir.get(dev.download.remote(x))


def test_data_stays_on_the_device_between_calls(dev):
    a = np.linspace(0, 1, 1000, dtype=np.float32)
    held = repartir.get(dev.held.remote())
    x = repartir.get(dev.upload.remote(a))
    y = repartir.get(dev.op.remote("mul", x, x, keep=True))
    z = repartir.get(dev.op.remote("add", y, a, keep=True))
    assert repartir.get(dev.op.remote("argmax", z)) == 999
    np.testing.assert_allclose(repartir.get(dev.download.remote(z)), a * a + a, rtol=1e-6)
    assert repartir.get(dev.held.remote()) == held + 3
    repartir.get(dev.free.remote(x, y, z))
    assert repartir.get(dev.held.remote()) == held


def test_a_device_array_belongs_to_its_actor(dev):
    other = OpenCLDevice.remote(kind="cpu")
    try:
        x = repartir.get(other.upload.remote(np.ones(4, np.float32)))
        with pytest.raises(DeviceError, match="another device actor"):
            repartir.get(dev.op.remote("sum", x))
    finally:
        repartir.kill(other)


def test_an_unknown_device_fails_the_actor_with_a_message(rt):
    bad = OpenCLDevice.remote(device="no-such-device-xyz")
    with pytest.raises(repartir.ActorDiedError, match="no-such-device-xyz"):
        repartir.get(bad.device_name.remote(), timeout=60)


@repartir.remote
def _make_context():
    import pyopencl as cl
    return cl.Context(dev_type=cl.device_type.ALL)


@repartir.remote
def _take(x):
    return 1


class _FakeOpenCLObject:
    """Stands for a pyopencl object (same module, unpicklable) without an OpenCL context in
    the test's own process."""

    __module__ = "pyopencl._cl"

    def __reduce__(self):
        raise TypeError("cannot pickle 'Context' object")


def test_opencl_objects_cannot_travel(rt):
    with pytest.raises(SerializationError, match=r"pyopencl\.Context.*device actor"):
        repartir.get(_make_context.remote())
    with pytest.raises(SerializationError, match=r"argument 0 of .*_take.*OpenCL object"):
        _take.remote(_FakeOpenCLObject())
    with pytest.raises(SerializationError, match=r"pyopencl\._FakeOpenCLObject.*DeviceArray"):
        repartir.put({"nested": [_FakeOpenCLObject()]})
