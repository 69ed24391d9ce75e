"""The OpenCL backend: one device's context, queue, program cache and tensor kernels.

The only module of repartir that imports ``pyopencl``.  It runs inside a device actor
(:mod:`~repartir.devices.actor`) or the discovery subprocess (:mod:`~repartir.devices.discovery`),
never in a driver that has yet to start its workers (``docs/devices.md``, "Discovery": the
driver must not hold an OpenCL driver's threads and mappings before it starts its workers).

::

    OpenCLBackend(device)
      ├─ context, in-order queue (profiling on: device times of each kernel)
      ├─ program cache: (source, options) -> built program; a failed build raises DeviceError
      │  with the device, the options and the whole build log, and caches nothing
      ├─ buffers: DeviceBuffer (cl.Buffer + shape + dtype), made by to_device / empty
      └─ the tensor operations of repartir.devices.ops on DeviceBuffers (kernels.py)

Operations take and return :class:`DeviceBuffer` objects (reductions return numpy scalars);
``to_device``/``to_host`` move data.  Every operation checks shapes and dtypes
(:func:`~repartir.devices.ops.check_args`) before it enqueues anything.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Sequence

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

try:  # CLBlast, the tuned OpenCL BLAS (Nugteren, IWOCL 2018): optional, for comparison
    import pyclblast
except ImportError:
    pyclblast = None

from ..errors import DeviceError, DeviceNotFoundError
from . import kernels
from .ops import DTYPE, check_args, check_backend

__all__ = ["OpenCLBackend", "DeviceBuffer", "list_devices", "pick_device"]

_TYPE_NAMES = ((cl.device_type.GPU, "gpu"), (cl.device_type.ACCELERATOR, "accelerator"),
               (cl.device_type.CPU, "cpu"))


def _type_name(dev: "cl.Device") -> str:
    for bit, name in _TYPE_NAMES:
        if dev.type & bit:
            return name
    return "other"


def _describe(p_index: int, d_index: int, platform: "cl.Platform", dev: "cl.Device") -> dict:
    kind = _type_name(dev)
    try:
        unified = bool(dev.host_unified_memory)
    except cl.Error:
        unified = kind == "cpu"
    pci = ""
    try:  # cl_khr_pci_bus_info / NVIDIA's own attributes, for NVML
        if "NVIDIA" in dev.vendor.upper():
            bus = dev.get_info(0x4008)   # CL_DEVICE_PCI_BUS_ID_NV
            slot = dev.get_info(0x4009)  # CL_DEVICE_PCI_SLOT_ID_NV: the device number
            pci = f"{bus:02x}:{slot:02x}"
    except Exception:  # not every driver has them
        pci = ""
    return {
        "platform_index": p_index, "device_index": d_index,
        "platform": platform.name.strip(), "name": dev.name.strip(),
        "vendor": dev.vendor.strip(), "type": kind,
        "discrete": kind != "cpu" and not unified,
        "compute_units": int(dev.max_compute_units),
        "global_mem_bytes": int(dev.global_mem_size),
        "local_mem_bytes": int(dev.local_mem_size),
        "max_work_group_size": int(dev.max_work_group_size),
        "max_clock_mhz": int(dev.max_clock_frequency),
        "opencl_version": dev.version.strip(), "driver_version": dev.driver_version.strip(),
        "pci_bus": pci,
    }


def list_devices() -> list[dict]:
    """Every OpenCL device of every platform, as plain dicts (see ``DeviceInfo``)."""
    out = []
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # no ICD registered: "platform not found khr"
        return out
    for pi, p in enumerate(platforms):
        try:
            devs = p.get_devices()
        except cl.Error:
            continue
        for di, d in enumerate(devs):
            out.append(_describe(pi, di, p, d))
    return out


def _rank(d: dict) -> int:
    """Selection order: discrete GPU, integrated GPU, accelerator, CPU OpenCL."""
    if d["type"] == "gpu":
        return 0 if d["discrete"] else 1
    return 2 if d["type"] == "accelerator" else 3


def pick_device(device: "int | str | None" = None, kind: str | None = None) -> dict:
    """Choose a device: ``None`` (the best by :func:`_rank`), the index of a GPU among the
    GPUs in selection order (``0`` is the first GPU), a substring of a device's name, or a
    ``(platform_index, device_index)`` pair as :func:`list_devices` gives them.

    ``kind`` (``"gpu"`` or ``"cpu"``) keeps only devices of that type.

    Raises:
        DeviceNotFoundError: nothing matches; the message lists what is present.
    """
    devs = list_devices()
    if kind is not None:
        devs = [d for d in devs if d["type"] == kind]
    devs.sort(key=_rank)
    present = ", ".join(f"{d['name']} ({d['type']}, {d['platform']})" for d in list_devices())
    hint = (f"present: {present}" if present else
            "no OpenCL platform is present: pip install \"repartir[gpu]\" brings PoCL (OpenCL "
            "on the CPU); a GPU needs its vendor's OpenCL driver (ICD)")
    if isinstance(device, bool):
        raise TypeError("device must be None, an index or a name")
    if isinstance(device, tuple) and len(device) == 2:     # (platform_index, device_index)
        for d in devs:
            if (d["platform_index"], d["device_index"]) == tuple(device):
                return d
        raise DeviceNotFoundError(f"no OpenCL device at (platform, device) {device}; {hint}")
    if device is None:
        if not devs:
            raise DeviceNotFoundError(f"no OpenCL {kind or ''} device found; {hint}".replace(
                "  ", " "))
        return devs[0]
    if isinstance(device, (int, np.integer)):
        gpus = [d for d in devs if d["type"] == "gpu"] if kind is None else devs
        if not 0 <= int(device) < len(gpus):
            raise DeviceNotFoundError(f"no OpenCL device with index {device} ({len(gpus)} "
                                      f"present of that kind); {hint}")
        return gpus[int(device)]
    if isinstance(device, str):
        for d in devs:
            if device.lower() in d["name"].lower():
                return d
        raise DeviceNotFoundError(f"no OpenCL device named like {device!r}; {hint}")
    raise TypeError(f"device must be None, an index or a name, got {type(device).__qualname__}")


@dataclasses.dataclass
class DeviceBuffer:
    """Device memory holding one C-contiguous array.

    Attributes:
        buf: the ``pyopencl.Buffer`` (at least 4 bytes: OpenCL has no empty buffers).
        shape: the array's shape.
        dtype: its numpy dtype (``float32`` for the tensor operations).
    """

    buf: Any
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


class OpenCLBackend:
    """One OpenCL device: context, queue, programs and the tensor operations on it.

    Args:
        device: which device, as :func:`pick_device` takes it (default: the best one).
        kind: ``"gpu"``, ``"cpu"`` or ``None`` (any).

    Raises:
        DeviceNotFoundError: no such device.
        DeviceError: the device's context or the built-in kernels could not be made.
    """

    #: Work-items per work-group of the reductions, softmax and matvec (a power of two).
    GROUP = 256

    def __init__(self, device: "int | str | None" = None, kind: str | None = None) -> None:
        self.info = pick_device(device, kind)
        platform = cl.get_platforms()[self.info["platform_index"]]
        self.device = platform.get_devices()[self.info["device_index"]]
        self.name = self.info["name"]
        self.context = cl.Context([self.device])
        self.queue = cl.CommandQueue(
            self.context, properties=cl.command_queue_properties.PROFILING_ENABLE)
        self.group = min(self.GROUP, 1 << (int(self.device.max_work_group_size).bit_length() - 1))
        self._programs: dict[tuple[str, str], Any] = {}
        self._kernels: dict[tuple[int, str], Any] = {}
        self._builtin = self.build(kernels.program_source())
        self.last_event: Any = None
        #: Device time of every kernel and device copy run so far, seconds (profiling events).
        self.device_seconds = 0.0

    # programs ---------------------------------------------------------------------------
    def build(self, source: str, options: str | Sequence[str] = "") -> Any:
        """Build ``source`` with ``options`` once; later calls return the cached program.

        Raises:
            TypeError: ``source`` is not a string.
            DeviceError: the build failed; carries the device name, the options and the
                compiler's full log.  Nothing is cached, the backend stays usable.
        """
        if not isinstance(source, str):
            raise TypeError(f"kernel source must be a str, got {type(source).__qualname__}")
        opts = options if isinstance(options, str) else " ".join(options)
        key = (source, opts)
        prog = self._programs.get(key)
        if prog is not None:
            return prog
        prog = cl.Program(self.context, source)
        try:
            prog.build(options=opts.split() if opts else [], devices=[self.device])
        except cl.Error as exc:  # RuntimeError subclasses: build failure, invalid options
            log = ""
            try:
                log = prog.get_build_info(self.device, cl.program_build_info.LOG)
            except cl.Error:
                pass
            if not log:
                log = str(exc)
            what = (str(exc).split(" - ")[0] or type(exc).__name__).strip()
            raise DeviceError(f"OpenCL program build failed on {self.name} ({what}); fix the "
                              "kernel source or the options (the log below says where)",
                              device=self.name, options=opts, log=log) from None
        self._programs[key] = prog
        return prog

    def kernel(self, program: Any, name: str) -> Any:
        """The kernel ``name`` of a built program (one object per program and name).

        Raises:
            DeviceError: the program has no kernel of that name (the message lists them).
        """
        key = (id(program), name)
        k = self._kernels.get(key)
        if k is None:
            try:
                k = cl.Kernel(program, name)
            except cl.Error:
                names = [kk.function_name for kk in program.all_kernels()]
                raise DeviceError(f"no kernel named {name!r} in the program; it has "
                                  f"{', '.join(names) or 'none'}", device=self.name) from None
            self._kernels[key] = k
        return k

    def run(self, program: Any, name: str, global_size: Sequence[int],
            local_size: Sequence[int] | None, args: Sequence[Any]) -> float:
        """Enqueue kernel ``name`` and wait for it; returns its device time in seconds.

        ``args``: :class:`DeviceBuffer` objects, numpy scalars (``np.int32(3)``,
        ``np.float32(2.0)``...) or ``None`` for a ``__local`` argument sized by a
        ``cl.LocalMemory`` (pass ``("local", nbytes)``).

        Raises:
            DeviceError: the launch failed (bad sizes, wrong argument count or type).
        """
        k = self.kernel(program, name)
        cl_args = []
        for i, a in enumerate(args):
            if isinstance(a, DeviceBuffer):
                cl_args.append(a.buf)
            elif isinstance(a, tuple) and len(a) == 2 and a[0] == "local":
                cl_args.append(cl.LocalMemory(int(a[1])))
            elif isinstance(a, np.generic):
                cl_args.append(a)
            else:
                raise TypeError(f"kernel {name}: argument {i} is a {type(a).__qualname__}; "
                                "pass device buffers, numpy scalars (np.int32, np.float32, ...) "
                                "or ('local', nbytes)")
        try:
            k.set_args(*cl_args)
            ev = cl.enqueue_nd_range_kernel(self.queue, k, tuple(global_size),
                                            None if local_size is None else tuple(local_size))
            ev.wait()
        except cl.Error as exc:
            raise DeviceError(f"kernel {name} failed to run on {self.name}: {exc}",
                              device=self.name) from None
        self.last_event = ev
        secs = _event_seconds(ev)
        self.device_seconds += secs
        return secs

    # memory -----------------------------------------------------------------------------
    def to_device(self, array: np.ndarray) -> DeviceBuffer:
        """Copy a host array to new device memory (C order).

        Raises:
            TypeError: not a numpy array, or an object dtype.
        """
        if not isinstance(array, np.ndarray):
            raise TypeError(f"to_device takes a numpy array, got {type(array).__qualname__}")
        if array.dtype.hasobject:
            raise TypeError("arrays of Python objects cannot go to a device")
        host = np.ascontiguousarray(array)
        out = self.empty(host.shape, host.dtype)
        if host.nbytes:
            cl.enqueue_copy(self.queue, out.buf, host, is_blocking=True)
        return out

    def empty(self, shape: Sequence[int], dtype: Any = DTYPE) -> DeviceBuffer:
        """Uninitialised device memory for an array of ``shape`` and ``dtype``."""
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        dt = np.dtype(dtype)
        nbytes = max(math.prod(shape) * dt.itemsize, 4)
        try:
            buf = cl.Buffer(self.context, cl.mem_flags.READ_WRITE, nbytes)
        except cl.Error as exc:
            raise DeviceError(f"cannot allocate {nbytes} bytes on {self.name}: {exc}",
                              device=self.name) from None
        return DeviceBuffer(buf, shape, dt)

    def to_host(self, dbuf: DeviceBuffer) -> np.ndarray:
        """Copy device memory back into a new host array."""
        out = np.empty(dbuf.shape, dbuf.dtype)
        if out.nbytes:
            cl.enqueue_copy(self.queue, out, dbuf.buf, is_blocking=True)
        return out

    def copy(self, src: DeviceBuffer) -> tuple[DeviceBuffer, float]:
        """A device-to-device copy of ``src``; returns the copy and its device time (s)."""
        out = self.empty(src.shape, src.dtype)
        ev = cl.enqueue_copy(self.queue, out.buf, src.buf, byte_count=src.nbytes)
        ev.wait()
        self.last_event = ev
        secs = _event_seconds(ev)
        self.device_seconds += secs
        return out, secs

    # tensor operations ------------------------------------------------------------------
    def _check(self, name: str, bufs: tuple, params: dict | None = None):
        for i, b in enumerate(bufs):
            if not isinstance(b, DeviceBuffer):
                raise TypeError(f"{name}: argument {i} is a {type(b).__qualname__}, the OpenCL "
                                "backend takes DeviceBuffers (to_device(array))")
        return check_args(name, [b.shape for b in bufs], [b.dtype for b in bufs], params)

    def _ew(self, name: str, bufs: tuple, p0: float = 0.0, p1: float = 0.0) -> DeviceBuffer:
        params = {"scale": {"alpha": p0}, "clamp": {"lo": p0, "hi": p1}}.get(name)
        shape, _ = self._check(name, bufs, params)
        out = self.empty(shape)
        n = math.prod(shape)
        if n:
            a = bufs[0]
            b = bufs[1] if len(bufs) > 1 else a
            c = bufs[2] if len(bufs) > 2 else a
            self.run(self._builtin, f"ew_{name}", (-(-n // 4),), None,
                     (np.uint64(n), a, b, c, out, np.float32(p0), np.float32(p1)))
        return out

    def add(self, a: DeviceBuffer, b: DeviceBuffer) -> DeviceBuffer:
        return self._ew("add", (a, b))

    def sub(self, a: DeviceBuffer, b: DeviceBuffer) -> DeviceBuffer:
        return self._ew("sub", (a, b))

    def mul(self, a: DeviceBuffer, b: DeviceBuffer) -> DeviceBuffer:
        return self._ew("mul", (a, b))

    def div(self, a: DeviceBuffer, b: DeviceBuffer) -> DeviceBuffer:
        return self._ew("div", (a, b))

    def fma(self, a: DeviceBuffer, b: DeviceBuffer, c: DeviceBuffer) -> DeviceBuffer:
        return self._ew("fma", (a, b, c))

    def scale(self, a: DeviceBuffer, *, alpha: float) -> DeviceBuffer:
        return self._ew("scale", (a,), float(alpha))

    def abs(self, a: DeviceBuffer) -> DeviceBuffer:
        return self._ew("abs", (a,))

    def clamp(self, a: DeviceBuffer, *, lo: float, hi: float) -> DeviceBuffer:
        return self._ew("clamp", (a,), float(lo), float(hi))

    def exp(self, a: DeviceBuffer) -> DeviceBuffer:
        return self._ew("exp", (a,))

    def log(self, a: DeviceBuffer) -> DeviceBuffer:
        return self._ew("log", (a,))

    def sqrt(self, a: DeviceBuffer) -> DeviceBuffer:
        return self._ew("sqrt", (a,))

    def relu(self, a: DeviceBuffer) -> DeviceBuffer:
        return self._ew("relu", (a,))

    def sigmoid(self, a: DeviceBuffer) -> DeviceBuffer:
        return self._ew("sigmoid", (a,))

    def tanh(self, a: DeviceBuffer) -> DeviceBuffer:
        return self._ew("tanh", (a,))

    def gelu(self, a: DeviceBuffer) -> DeviceBuffer:
        return self._ew("gelu", (a,))

    # reductions
    def _groups(self, n: int) -> int:
        return max(1, min(-(-n // self.group), 4 * int(self.device.max_compute_units) * 8, 1024))

    def _reduce(self, kernel: str, a: DeviceBuffer, b: DeviceBuffer | None = None,
                p0: float = 0.0) -> np.float32:
        n = a.size
        groups = self._groups(n)
        partial = self.empty((groups,))
        local = ("local", 4 * self.group)
        self.run(self._builtin, f"reduce_{kernel}", (groups * self.group,), (self.group,),
                 (np.uint64(n), a, b or a, np.float32(p0), partial, local))
        if groups > 1:
            final = self.empty((1,))
            fold = "min" if kernel == "min" else "max" if kernel == "max" else "sum"
            self.run(self._builtin, f"reduce_{fold}", (self.group,), (self.group,),
                     (np.uint64(groups), partial, partial, np.float32(0), final, local))
            partial = final
        out = np.empty(1, np.float32)
        cl.enqueue_copy(self.queue, out, partial.buf, is_blocking=True)
        return out[0]

    def sum(self, a: DeviceBuffer) -> np.float32:
        self._check("sum", (a,))
        return self._reduce("sum", a)

    def dot(self, a: DeviceBuffer, b: DeviceBuffer) -> np.float32:
        self._check("dot", (a, b))
        return self._reduce("dot", a, b)

    def min(self, a: DeviceBuffer) -> np.float32:
        self._check("min", (a,))
        return self._reduce("min", a)

    def max(self, a: DeviceBuffer) -> np.float32:
        self._check("max", (a,))
        return self._reduce("max", a)

    def mean(self, a: DeviceBuffer) -> np.float32:
        self._check("mean", (a,))
        return np.float32(self._reduce("sum", a) / np.float32(a.size))

    def variance(self, a: DeviceBuffer) -> np.float32:
        """Population variance, two passes (mean, then the mean of squared deviations)."""
        self._check("variance", (a,))
        m = self._reduce("sum", a) / np.float32(a.size)
        return np.float32(self._reduce("dev_sq_sum", a, None, float(m)) / np.float32(a.size))

    def norm_l1(self, a: DeviceBuffer) -> np.float32:
        self._check("norm_l1", (a,))
        return self._reduce("abs_sum", a)

    def norm_l2(self, a: DeviceBuffer) -> np.float32:
        self._check("norm_l2", (a,))
        return np.float32(np.sqrt(self._reduce("sq_sum", a)))

    def _argreduce(self, a: DeviceBuffer, is_max: bool) -> np.int64:
        n = a.size
        groups = self._groups(n)
        vals, idx = self.empty((groups,)), self.empty((groups,), np.int64)
        local = (("local", 4 * self.group), ("local", 8 * self.group))
        self.run(self._builtin, "argreduce", (groups * self.group,), (self.group,),
                 (np.uint64(n), a, idx, np.int32(0), np.int32(is_max), vals, idx) + local)
        if groups > 1:
            v2, i2 = self.empty((1,)), self.empty((1,), np.int64)
            self.run(self._builtin, "argreduce", (self.group,), (self.group,),
                     (np.uint64(groups), vals, idx, np.int32(1), np.int32(is_max), v2, i2)
                     + local)
            idx = i2
        out = np.empty(1, np.int64)
        cl.enqueue_copy(self.queue, out, idx.buf, is_blocking=True)
        return out[0]

    def argmin(self, a: DeviceBuffer) -> np.int64:
        self._check("argmin", (a,))
        return self._argreduce(a, False)

    def argmax(self, a: DeviceBuffer) -> np.int64:
        self._check("argmax", (a,))
        return self._argreduce(a, True)

    # row-wise activations
    def _softmax(self, name: str, a: DeviceBuffer) -> DeviceBuffer:
        shape, _ = self._check(name, (a,))
        out = self.empty(shape)
        cols = shape[-1]
        rows = a.size // cols
        if rows:
            self.run(self._builtin, "softmax_rows", (rows * self.group,), (self.group,),
                     (np.uint64(cols), a, out, np.int32(name == "log_softmax"),
                      ("local", 4 * self.group)))
        return out

    def softmax(self, a: DeviceBuffer) -> DeviceBuffer:
        return self._softmax("softmax", a)

    def log_softmax(self, a: DeviceBuffer) -> DeviceBuffer:
        return self._softmax("log_softmax", a)

    # linear algebra
    def matmul(self, a: DeviceBuffer, b: DeviceBuffer) -> DeviceBuffer:
        """C = A·B; the register-blocked kernel when M, N are multiples of 128 and K of 32,
        else the 16×16 tiled one (see :mod:`~repartir.devices.kernels`)."""
        shape, _ = self._check("matmul", (a, b))
        (m, k), n = a.shape, b.shape[1]
        out = self.empty(shape)
        if m == 0 or n == 0:
            return out
        if k == 0:
            return self.to_device(np.zeros(shape, np.float32))
        t, ks = kernels.SGEMM_TILE, kernels.SGEMM_K_STEP
        sizes = (np.uint32(m), np.uint32(n), np.uint32(k), a, b, out)
        if m % t == 0 and n % t == 0 and k % ks == 0 and self.device.max_work_group_size >= 256:
            self.run(self._builtin, "sgemm_128x128", (n // t * 256, m // t), (256, 1), sizes)
        else:
            self.run(self._builtin, "sgemm_tiled", (-(-n // 16) * 16, -(-m // 16) * 16),
                     (16, 16), sizes)
        return out

    def matmul_clblast(self, a: DeviceBuffer, b: DeviceBuffer) -> DeviceBuffer:
        """C = A·B through CLBlast's SGEMM (``pyclblast``), to weigh it against :meth:`matmul`.

        Raises:
            DeviceError: pyclblast is not installed, or CLBlast failed.
        """
        shape, _ = self._check("matmul", (a, b))
        if pyclblast is None:
            raise DeviceError("CLBlast is not installed here (pip install pyclblast, which needs "
                              "the CLBlast library)", device=self.name)
        (m, k), n = a.shape, b.shape[1]
        out = self.empty(shape)
        views = [cl_array.Array(self.queue, x.shape, np.float32, data=x.buf) for x in (a, b, out)]
        # CLBlast may enqueue several kernels (pads, transposes) and returns the last one's
        # event only: time the whole call by the wall clock on an idle queue instead.
        self.queue.finish()
        t0 = time.perf_counter()
        try:
            pyclblast.gemm(self.queue, m, n, k, *views, a_ld=k, b_ld=n, c_ld=n).wait()
            self.queue.finish()
        except (RuntimeError, cl.Error) as exc:
            raise DeviceError(f"CLBlast SGEMM failed on {self.name}: {exc}",
                              device=self.name) from None
        self.device_seconds += time.perf_counter() - t0
        return out

    def matvec(self, a: DeviceBuffer, x: DeviceBuffer) -> DeviceBuffer:
        shape, _ = self._check("matvec", (a, x))
        out = self.empty(shape)
        rows, cols = a.shape
        if rows == 0:
            return out
        if cols == 0:
            return self.to_device(np.zeros(shape, np.float32))
        self.run(self._builtin, "matvec_rows", (rows * self.group,), (self.group,),
                 (np.uint64(cols), a, x, out, ("local", 4 * self.group)))
        return out

    def transpose(self, a: DeviceBuffer) -> DeviceBuffer:
        shape, _ = self._check("transpose", (a,))
        out = self.empty(shape)
        rows, cols = a.shape
        if rows and cols:
            self.run(self._builtin, "transpose_tiled", (-(-cols // 16) * 16, -(-rows // 16) * 16),
                     (16, 16), (np.uint32(rows), np.uint32(cols), a, out))
        return out


def _event_seconds(ev: Any) -> float:
    try:
        return (ev.profile.end - ev.profile.start) * 1e-9
    except cl.Error:
        return float("nan")


check_backend(OpenCLBackend)
