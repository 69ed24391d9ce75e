"""Device workloads of the benchmark harness: ``gpu_vec``, ``gpu_sgemm``, ``tensor_cpu``.

Imported by :mod:`stress.bench`, this module adds its ids to :data:`stress.workloads.WORKLOADS`,
:data:`~stress.workloads.GOALS` and the registry (repartir only: the peers have no device
actors).  Sizes: full, ``--quick`` in brackets.

=========== ================================================================ ====================
id          what is timed                                                    value (JSON unit)
=========== ================================================================ ====================
gpu_vec     ``op("add", x, y, keep=True)`` on 2^28 [2^24] float32 in an      fraction of the
            OpenCL device actor (``OpenCLDevice``, ``num_gpus=1``): device   device's copy
            time from OpenCL profiling events, median of 10 after 2 warm-    bandwidth
            ups; bandwidth = 12 bytes an element (two reads, one write).     (``ratio``)
            Reference in the same run: the device's own copy of x (8 bytes
            an element), the faster of ``clEnqueueCopyBuffer`` and a float4
            copy kernel, median of 10 each. The result is checked (min = max
            = 3 for x = 1, y = 2). extra: every GB/s, and torch's own device
            copy where torch reaches the GPU
gpu_sgemm   ``op("matmul", a, b, keep=True)``, 4096² [1024²] float32, in     fraction of the
            the device actor, device time, median of 10 after 2 warm-ups;    vendor BLAS
            TFLOP/s = 2·n³ / time. Reference in the same run (the "vendor"   (``ratio``)
            BLAS): ``torch.matmul`` on CUDA with TF32 off, CUDA events,
            median of 10; and CLBlast's SGEMM (``pyclblast``) in the same
            actor where installed. C is checked against numpy on 64 rows.
            extra: every TFLOP/s measured
tensor_cpu  each operation of the SIMD backend (``repartir.devices.simd``) on time ÷ plain numpy
            1M float32 (1024×1024 for matmul, transpose; 1024 × 1024 rows   (``ratio``), the
            for softmax), against the same computation written in plain      geometric mean over
            numpy, interleaved, best of 15 [5] each; extra: per-operation    the operations;
            ratios and the worst                                             extra: the worst
=========== ================================================================ ====================

The GPU workloads are registered only where discovery (:func:`repartir.devices.discover`) finds
an OpenCL GPU; elsewhere they are ``–`` in the table.  ``gpu_sgemm`` fails where torch cannot
reach the GPU (no vendor reference to compare with); its error gives the kernel's TFLOP/s.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import numpy as np

from stress.adapters import Config
from stress.workloads import CELL_SUFFIX, FOOTNOTES, GOALS, WORKLOADS, workload

WORKLOADS.update({
    "gpu_vec": ("ratio", "× copy"),
    "gpu_sgemm": ("ratio", "× vendor"),
    "tensor_cpu": ("ratio", "× numpy"),
})
GOALS.update({"gpu_vec": "≥ 0.9 (issue: ≥ 0.8)", "gpu_sgemm": "≥ 0.5 (issue: ≥ 0.25)",
              "tensor_cpu": "≤ 1.2"})
CELL_SUFFIX.update({"gpu_vec": ("add_GBps", "{:.0f} GB/s"),
                    "gpu_sgemm": ("kernel_TFLOPs", "{:.1f} TFLOP/s"),
                    "tensor_cpu": ("worst", "worst {:.2f}")})
FOOTNOTES.update({
    "gpu_vec": "gpu_vec: value in () is the add's bandwidth; the ratio is against the device's "
               "own buffer copy in the same run",
    "gpu_sgemm": "gpu_sgemm: value in () is repartir's kernel; the ratio is against torch.matmul "
                 "(float32, TF32 off) in the same run",
    "tensor_cpu": "tensor_cpu: geometric mean of the per-operation ratios; worst in ()",
})

FILL = """
__kernel void fill(__global float* x, const float v, const ulong n) {
    const ulong i = get_global_id(0);
    if (i < n) x[i] = v;
}
__kernel void copy4(__global const float4* restrict x, __global float4* restrict y) {
    y[get_global_id(0)] = x[get_global_id(0)];
}
"""


def _has_gpu() -> bool:
    try:
        from repartir.devices import discover
        return any(d.is_gpu for d in discover())
    except Exception:  # noqa: BLE001 - no pyopencl, a broken driver: no GPU workloads
        return False


def _device_actor() -> Any:
    import repartir
    from repartir.devices import OpenCLDevice

    gpus = repartir.cluster_resources().get("GPU", 0)
    opts = {"num_gpus": 1} if gpus >= 1 else {}
    dev = OpenCLDevice.options(**opts).remote(device=0, kind="gpu")
    return dev


def _median_device_time(call: Callable[[], Any], dev: Any, reps: int, warm: int = 2) -> float:
    import repartir

    times = []
    for i in range(warm + reps):
        out = repartir.get(call())
        t = repartir.get(dev.last_device_seconds.remote())
        if out is not None and hasattr(out, "key"):
            repartir.get(dev.free.remote(out))
        if i >= warm:
            times.append(t)
    return statistics.median(times)


def w_gpu_vec(s: Any, cfg: Config) -> Any:
    import repartir

    n = (1 << 24) if cfg.quick else (1 << 28)
    dev = _device_actor()
    try:
        x = repartir.get(dev.empty.remote((n,)))
        y = repartir.get(dev.empty.remote((n,)))
        for arr, v in ((x, 1.0), (y, 2.0)):
            repartir.get(dev.run_kernel.remote(FILL, "fill", (-(-n // 256) * 256,), (256,), arr,
                                               np.float32(v), np.uint64(n)))
        t_add = _median_device_time(lambda: dev.op.remote("add", x, y, keep=True), dev, 10)
        t_enqueue_copy = _median_device_time(lambda: dev.copy.remote(x), dev, 10)
        z = repartir.get(dev.empty.remote((n,)))     # n is a multiple of 4: float4 copy kernel
        t_kernel_copy = _median_device_time(lambda: dev.run_kernel.remote(
            FILL, "copy4", (n // 4,), (256,), x, z), dev, 10)
        repartir.get(dev.free.remote(z))
        t_copy = min(t_enqueue_copy, t_kernel_copy)
        z = repartir.get(dev.op.remote("add", x, y, keep=True))
        lo, hi = repartir.get([dev.op.remote("min", z), dev.op.remote("max", z)])
        if not (lo == hi == 3.0):
            raise AssertionError(f"gpu_vec: x + y should be 3 everywhere, got min {lo}, max {hi}")
        name = repartir.get(dev.device_name.remote())
    finally:
        repartir.kill(dev)
    add_bw, copy_bw = 12.0 * n / t_add / 1e9, 8.0 * n / t_copy / 1e9
    extra = {"add_GBps": round(add_bw, 1), "copy_GBps": round(copy_bw, 1),
             "enqueue_copy_GBps": round(8.0 * n / t_enqueue_copy / 1e9, 1),
             "kernel_copy_GBps": round(8.0 * n / t_kernel_copy / 1e9, 1),
             "n": n, "add_ms": round(t_add * 1e3, 3), "device": name}
    torch_copy = _torch_copy_GBps(n)
    if torch_copy is not None:
        extra["torch_copy_GBps"] = round(torch_copy, 1)
        extra["fraction_of_torch_copy"] = round(add_bw / torch_copy, 3)
    return add_bw / copy_bw, extra


def _torch() -> Any:
    """torch, when it is installed and reaches a CUDA GPU; else ``None``."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _cuda_median_seconds(torch: Any, fn: Callable[[], Any], reps: int = 10,
                         warm: int = 3) -> float:
    """Median of ``reps`` runs of ``fn`` timed with CUDA events, after ``warm`` untimed ones."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1) / 1e3)
    return statistics.median(times)


def _torch_copy_GBps(n: int) -> float | None:
    """The vendor's device-to-device copy (``Tensor.copy_`` on CUDA), bytes read + written."""
    torch = _torch()
    if torch is None:
        return None
    a = torch.ones(n, device="cuda", dtype=torch.float32)
    b = torch.empty_like(a)
    return 8.0 * n / _cuda_median_seconds(torch, lambda: b.copy_(a)) / 1e9


def _torch_tflops(n: int) -> float | None:
    """``torch.matmul`` of two n×n float32 matrices on CUDA with TF32 off, TFLOP/s."""
    torch = _torch()
    if torch is None:
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.rand((n, n), device="cuda", dtype=torch.float32, generator=g)
    b = torch.rand((n, n), device="cuda", dtype=torch.float32, generator=g)
    return 2.0 * n ** 3 / _cuda_median_seconds(torch, lambda: torch.matmul(a, b)) / 1e12


def w_gpu_sgemm(s: Any, cfg: Config) -> Any:
    import repartir

    n = 1024 if cfg.quick else 4096
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    dev = _device_actor()
    extra: dict[str, Any] = {"n": n}
    try:
        da, db = repartir.get([dev.upload.remote(a), dev.upload.remote(b)])
        t = _median_device_time(lambda: dev.op.remote("matmul", da, db, keep=True), dev, 10)
        extra["kernel_TFLOPs"] = round(2.0 * n ** 3 / t / 1e12, 2)
        c = repartir.get(dev.op.remote("matmul", da, db))
        rows = rng.choice(n, 64, replace=False)
        want = a[rows].astype(np.float64) @ b.astype(np.float64)
        err = float(np.max(np.abs(c[rows] - want) / np.abs(want)))
        extra["max_rel_err"] = err
        if err > 1e-4:
            raise AssertionError(f"gpu_sgemm: relative error {err:.2e} against numpy")
        try:
            tc = _median_device_time(lambda: dev.clblast_matmul.remote(da, db, keep=True), dev, 10)
            extra["clblast_TFLOPs"] = round(2.0 * n ** 3 / tc / 1e12, 2)
        except repartir.DeviceError as exc:
            extra["clblast"] = str(exc).splitlines()[0]
        extra["device"] = repartir.get(dev.device_name.remote())
    finally:
        repartir.kill(dev)
    vendor = _torch_tflops(n)
    if vendor is None:
        raise RuntimeError(f"gpu_sgemm: no vendor BLAS to compare with (torch with CUDA); "
                           f"the kernel ran at {extra['kernel_TFLOPs']} TFLOP/s")
    extra["vendor_TFLOPs"] = round(vendor, 2)
    if "clblast_TFLOPs" in extra:
        extra["clblast_fraction"] = round(extra["clblast_TFLOPs"] / vendor, 3)
    return extra["kernel_TFLOPs"] / vendor, extra


def _numpy_baselines() -> dict[str, Callable[..., Any]]:
    """Each operation as a user would write it in plain numpy."""
    def softmax(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def log_softmax(x):
        z = x - x.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    return {
        "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
        "div": lambda a, b: a / b, "fma": lambda a, b, c: a * b + c,
        "scale": lambda a, alpha: a * np.float32(alpha), "abs": np.abs,
        "clamp": lambda a, lo, hi: np.clip(a, lo, hi), "exp": np.exp, "log": np.log,
        "sqrt": np.sqrt, "sum": np.sum, "dot": lambda a, b: np.dot(a.ravel(), b.ravel()),
        "min": np.min, "max": np.max, "argmin": np.argmin, "argmax": np.argmax,
        "mean": np.mean, "variance": np.var, "norm_l1": lambda a: np.abs(a).sum(),
        "norm_l2": lambda a: np.sqrt(np.dot(a.ravel(), a.ravel())),
        "relu": lambda a: np.maximum(a, 0), "sigmoid": lambda a: 1 / (1 + np.exp(-a)),
        "tanh": np.tanh,
        "gelu": lambda a: 0.5 * a * (1 + np.tanh(np.float32(0.7978845608028654)
                                                 * (a + np.float32(0.044715) * a ** 3))),
        "softmax": softmax, "log_softmax": log_softmax, "matmul": np.matmul,
        "matvec": np.matmul, "transpose": lambda a: np.ascontiguousarray(a.T),
    }


def w_tensor_cpu(s: Any, cfg: Config) -> Any:
    from repartir.devices.ops import OPERATIONS
    from repartir.devices.simd import SimdBackend

    reps = 5 if cfg.quick else 15
    rng = np.random.default_rng(0)
    n = 1 << 20
    vec = [rng.uniform(0.5, 1.5, n).astype(np.float32) for _ in range(3)]
    mat = [v.reshape(1024, 1024) for v in vec]
    x = rng.uniform(0.5, 1.5, 1024).astype(np.float32)
    simd, plain = SimdBackend(), _numpy_baselines()
    params = {"scale": {"alpha": 1.5}, "clamp": {"lo": 0.7, "hi": 1.2}}
    ratios: dict[str, float] = {}
    for op in OPERATIONS:
        if op.name == "matvec":
            args: tuple = (mat[0], x)
        elif op.kind == "linalg" or op.name in ("softmax", "log_softmax"):
            args = tuple(mat[: op.arity])
        else:
            args = tuple(vec[: op.arity])
        p = params.get(op.name, {})
        ours = getattr(simd, op.name)
        base = plain[op.name]
        best_ours = best_base = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            ours(*args, **p)
            t1 = time.perf_counter()
            base(*args, **p)
            t2 = time.perf_counter()
            best_ours, best_base = min(best_ours, t1 - t0), min(best_base, t2 - t1)
        ratios[op.name] = round(best_ours / best_base, 3)
    geo = math.exp(statistics.fmean(math.log(r) for r in ratios.values()))
    worst = max(ratios, key=ratios.__getitem__)
    return geo, {"worst": ratios[worst], "worst_op": worst, "ratios": ratios}


workload("tensor_cpu", systems=("repartir",))(w_tensor_cpu)
if _has_gpu():
    workload("gpu_vec", systems=("repartir",))(w_gpu_vec)
    workload("gpu_sgemm", systems=("repartir",))(w_gpu_sgemm)
