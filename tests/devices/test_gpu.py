"""Device actors on a real GPU (marked ``gpu``: ``python -m pytest -m gpu`` on a machine with an
OpenCL GPU runs just these; on one without, they skip).  The shared test body of
``test_backends.py`` covers every operation on PoCL; here the same checks run on the GPU,
with the sizes that take the register-blocked sgemm path, and the GPU is seen by discovery,
NVML and ``init()``."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyopencl")

import repartir  # noqa: E402
from repartir.devices import OPERATIONS, OpenCLDevice, discover  # noqa: E402
from repartir.devices.ops import NAMES  # noqa: E402
from repartir.tensor import Backend, GpuExecutor, Tensor, TensorExecutor  # noqa: E402
from devsupport import call_args, reference, assert_close  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpus():
    found = [d for d in discover() if d.is_gpu]
    if not found:
        pytest.skip("no OpenCL GPU on this machine")
    return found


@pytest.fixture(scope="module")
def gpu(gpus, rt):
    """A device actor on the first GPU that reserves none of the node's GPUs (so that the
    executors of the last test, which reserve one, can start while it lives)."""
    dev = OpenCLDevice.remote(device=0, kind="gpu")
    yield dev
    repartir.kill(dev)


def test_init_counts_the_gpus_and_an_actor_reserves_one(gpus, rt):
    assert repartir.cluster_resources().get("GPU", 0) == len(gpus)
    dev = OpenCLDevice.options(num_gpus=1).remote(device=0, kind="gpu")
    assert repartir.get(dev.device_name.remote()) == gpus[0].name
    assert repartir.available_resources().get("GPU", 0) == len(gpus) - 1
    repartir.kill(dev)


def test_nvidia_gpus_have_nvml_figures(gpus):
    for d in gpus:
        if "NVIDIA" in d.vendor.upper():
            assert d.memory_used_bytes is not None and d.memory_used_bytes > 0
            assert d.pci_bus


@pytest.mark.parametrize("name", [op.name for op in OPERATIONS])
def test_every_operation_on_the_gpu(gpu, name):
    rng = np.random.default_rng(1)
    args, params = call_args(name, rng, n=1_000_003, m=(384, 256, 512))
    got = repartir.get(gpu.op.remote(name, *args, **params))
    assert_close(name, got, reference(name, args, params), args)


@pytest.mark.parametrize("shape", [(4096, 4096, 4096), (1024, 2048, 512), (1000, 999, 37)])
def test_sgemm_paths(gpu, shape):
    m, k, n = shape
    rng = np.random.default_rng(2)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = repartir.get(gpu.op.remote("matmul", a, b))
    rows = rng.choice(m, 32, replace=False)
    want = a[rows].astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(a[rows]).astype(np.float64) @ np.abs(b).astype(np.float64)
    assert np.max(np.abs(c[rows] - want) / scale) < NAMES["matmul"].rtol


def test_tensor_executor_and_gpu_executor(gpus, rt):
    with GpuExecutor.builder().build() as g:
        assert g.device_name() == gpus[0].name
        assert g.capacity() == gpus[0].compute_units
    with TensorExecutor.builder().backend(Backend.AUTO).build() as ex:
        assert ex.rates is not None and ex.rates.gpu_flops > 0
        print(ex.rates)
        # 8192²: host compute (1.2 s at 0.94 TFLOP/s on the H200 machine's 16 cores) is about
        # 7x the transfer through the actor (about 0.16 s): the rule offloads it
        big = Tensor.from_numpy(np.ones((8192, 8192), np.float32))
        d = ex.explain("matmul", big, big)
        print(d)
        assert d.backend == "gpu", str(d)
        small = Tensor.from_slice([1.0, 2.0])
        assert ex.explain("add", small, small).backend == "cpu"
        assert ex.matmul(big, big).result(timeout=120).numpy()[0, 0] == 8192.0
