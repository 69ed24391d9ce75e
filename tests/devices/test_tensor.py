"""The seed's tensor API: Tensor, TensorExecutor (CPU, GPU on PoCL, AUTO), GpuExecutor."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import repartir
from repartir.devices import OPERATIONS
from repartir.devices.select import Rates
from repartir.tensor import Backend, GpuExecutor, Tensor, TensorExecutor, TensorFuture
from devsupport import assert_close, call_args, reference


def test_tensor_constructors():
    t = Tensor.from_slice([1, 2.5, 3], shape=(3, 1))
    assert t.shape == (3, 1) and t.dtype == np.float32 and t.to_list() == [[1.0], [2.5], [3.0]]
    a = np.arange(6, dtype=np.float32)
    assert Tensor.from_numpy(a).numpy() is a                        # shared, not copied
    assert Tensor.from_numpy(a, copy=True).numpy() is not a
    assert Tensor.from_numpy(np.arange(4)).dtype == np.float32     # converted
    assert Tensor.from_numpy(a[::2]).numpy().flags.c_contiguous
    with pytest.raises(ValueError, match="holds 4 elements"):
        Tensor.from_slice([1, 2, 3], shape=(2, 2))
    with pytest.raises(TypeError, match="element 1"):
        Tensor.from_slice([1, "2"])
    with pytest.raises(TypeError, match="not a real number type"):
        Tensor.from_numpy(np.array([1 + 2j]))
    with pytest.raises(TypeError, match="numpy array"):
        Tensor.from_numpy([1, 2])


@pytest.mark.parametrize("name", [op.name for op in OPERATIONS])
def test_cpu_executor_every_operation(name):
    ex = TensorExecutor.builder().backend(Backend.CPU).build()
    args, params = call_args(name, np.random.default_rng(5))
    fut = ex.__getattribute__(name)(*[Tensor.from_numpy(a) for a in args], **params)
    assert isinstance(fut, TensorFuture) and fut.done()
    got = fut.result()
    if isinstance(got, Tensor):
        got = got.numpy()
    else:
        assert isinstance(got, int if name in ("argmin", "argmax") else float)
    assert_close(name, got, reference(name, args, params), args)


def test_bad_calls_fail_before_work():
    ex = TensorExecutor.builder().backend(Backend.CPU).build()
    a, b = Tensor.from_slice([1.0, 2.0]), Tensor.from_slice([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="differ"):
        ex.add(a, b)
    with pytest.raises(TypeError, match="Tensor"):
        ex.add(a, [1.0, 2.0])
    with pytest.raises(ValueError, match="alpha"):
        ex.scale(a)
    with pytest.raises(TypeError, match="Backend"):
        TensorExecutor.builder().backend("gpu")


def test_gpu_executor_on_pocl_sync_and_async(rt):
    pytest.importorskip("pyopencl")
    with TensorExecutor.builder().backend(Backend.GPU).device("cpu").build() as ex:
        assert ex.backend is Backend.GPU
        a = Tensor.from_numpy(np.arange(1000, dtype=np.float32))
        fut = ex.add(a, a)
        np.testing.assert_array_equal(fut.result(timeout=60).numpy(), 2 * a.numpy())
        assert ex.dot(a, a).result() == pytest.approx(float(np.dot(a.numpy(), a.numpy())),
                                                      rel=1e-5)

        async def main():
            s, m = await asyncio.gather(ex.sum(a), ex.matmul(
                Tensor.from_numpy(np.eye(3, dtype=np.float32)),
                Tensor.from_numpy(np.ones((3, 2), np.float32))))
            return s, m
        s, m = asyncio.run(main())
        assert s == pytest.approx(999 * 1000 / 2) and m.to_list() == [[1, 1]] * 3
        with pytest.raises(ValueError, match="two 2-D arrays"):
            ex.matmul(a, a)


def test_auto_follows_the_cost_model(rt):
    pytest.importorskip("pyopencl")
    fast = Rates("pretend-gpu", 20e9, 20e9, 20e12, 2e12, 1e12, 20e9)
    with (TensorExecutor.builder().backend(Backend.AUTO).device("cpu").rates(fast).build()
          as ex):
        small = Tensor.from_slice([1.0, 2.0])
        assert ex.explain("add", small, small).backend == "cpu"
        big = Tensor.from_numpy(np.ones((2048, 2048), np.float32))
        d = ex.explain("matmul", big, big)
        assert d.backend == "gpu" and "host compute" in str(d)
        # the small call runs here (already done), the big one goes to the device actor
        assert ex.add(small, small).done()
        fut = ex.matvec(big, Tensor.from_numpy(np.ones(2048, np.float32)))
        assert fut.result(timeout=120).numpy()[0] == 2048.0


def test_auto_without_a_gpu_runs_on_the_cpu(rt):
    with TensorExecutor.builder().backend(Backend.AUTO).build() as ex:
        if ex.rates is not None:
            pytest.skip("this machine has a GPU")
        assert ex.explain("add", Tensor.from_slice([1.0]), Tensor.from_slice([1.0])).reason \
            == "no device"
        assert ex.add(Tensor.from_slice([1.0]), Tensor.from_slice([2.0])).result().to_list() \
            == [3.0]


def test_gpu_executor_picks_in_order(rt):
    pytest.importorskip("pyopencl")
    with GpuExecutor.builder().build() as g:
        devices = repartir.devices.discover()
        kinds = [d.type for d in devices]
        assert g.info().type == ("gpu" if "gpu" in kinds else kinds[0])
        assert g.capacity() >= 1 and g.device_name()
        secs = g.run_kernel("__kernel void nop(__global float* x) { }", "nop", (4,), None,
                            np.zeros(4, np.float32)).result(timeout=60)
        assert secs >= 0
