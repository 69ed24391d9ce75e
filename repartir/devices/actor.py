"""Device actors: an actor that owns one device, made with the public actor API.

::

    caller                                         actor process (one device)
    ┌────────────────────────────┐  .remote()      ┌──────────────────────────────────────┐
    │ dev = OpenCLDevice         │ ──────────────▶ │ OpenCLBackend: context, queue,        │
    │   .options(num_gpus=1)     │  numpy args via │   programs (cached by source+options) │
    │   .remote()                │  the store      │ arrays: key -> DeviceBuffer           │
    │ x = dev.upload.remote(a)   │ ◀────────────── │ results: numpy arrays (through the    │
    │ y = dev.op.remote("add",   │  ObjectRefs     │   store) or DeviceArray handles       │
    │       x, x, keep=True)     │                 └──────────────────────────────────────┘
    │ repartir.get(dev.download.remote(y))
    └────────────────────────────┘

``OpenCLDevice`` and ``SimdDevice`` are actor classes (``@repartir.remote`` on a class, i.e.
:class:`~repartir.runtime.actor.ActorClass`): their methods are called with ``.remote()`` and
their results read with ``repartir.get``, like any actor's.  Device state (context, queue,
buffers) never leaves the actor process: a :class:`DeviceArray` is a handle (a key, a shape, a
dtype) that only the actor that made it accepts, and ``download`` brings the data back as a host
numpy array through the object store.  The OpenCL context is made in the actor's own process,
in its constructor: the driver never holds one (``pyopencl`` is imported there, not here).

A build failure raises :class:`~repartir.errors.DeviceError` (device name, options, full build
log) in the caller; the actor stays usable.  ``num_gpus=1`` in ``.options()`` reserves a GPU of
the node; ``device=`` says which (the ``i``-th GPU in selection order, or a name).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
import uuid
from typing import Any, Sequence

import numpy as np

from ..errors import DeviceError
from ..runtime.actor import ActorClass
from .ops import check_args
from .select import Rates, calibrate_cpu
from .simd import SimdBackend

__all__ = ["DeviceArray", "OpenCLDevice", "SimdDevice", "OpenCLDeviceActor", "SimdDeviceActor"]


@dataclasses.dataclass(frozen=True)
class DeviceArray:
    """A handle to an array that lives on one device actor's device.

    Attributes:
        owner: the owning actor instance's id (a hex string).
        key: the array's number in that actor.
        shape, dtype: the array's shape and dtype (``str``, e.g. ``"float32"``).
        device: the device's name.
    """

    owner: str
    key: int
    shape: tuple[int, ...]
    dtype: str
    device: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


class OpenCLDeviceActor:
    """The body of :data:`OpenCLDevice` (runs in the actor's process).

    Args:
        device: ``None`` (the best device: discrete GPU, integrated GPU, accelerator, CPU
            OpenCL), the index of a GPU in that order, or a substring of a device's name.
        kind: ``"gpu"``, ``"cpu"`` or ``None`` (any type).

    Raises:
        DeviceNotFoundError: no such device (the actor dies; calls raise ``ActorDiedError``
            naming the cause).
    """

    def __init__(self, device: "int | str | None" = None, kind: str | None = None) -> None:
        # Imported here, in the actor's process, on purpose: the process that imports this
        # module (a driver) must not load an OpenCL driver before it starts its workers.
        from .opencl import OpenCLBackend

        self._backend = OpenCLBackend(device, kind)
        self._owner = uuid.uuid4().hex
        self._arrays: dict[int, Any] = {}
        self._keys = itertools.count(1)
        self._last_seconds = 0.0

    # introspection ----------------------------------------------------------------------
    def info(self) -> dict:
        """The device as :class:`~repartir.devices.discovery.DeviceInfo` fields (a dict)."""
        return dict(self._backend.info)

    def device_name(self) -> str:
        return self._backend.name

    def capacity(self) -> int:
        """Compute units of the device (multiprocessors of a GPU, cores of a CPU)."""
        return int(self._backend.info["compute_units"])

    def last_device_seconds(self) -> float:
        """Device time of the kernels (and device copies) of the last ``op``/``run_kernel``/
        ``copy`` call, from OpenCL profiling events, seconds."""
        return self._last_seconds

    # arrays -----------------------------------------------------------------------------
    def _handle(self, dbuf: Any) -> DeviceArray:
        key = next(self._keys)
        self._arrays[key] = dbuf
        return DeviceArray(self._owner, key, dbuf.shape, dbuf.dtype.name, self._backend.name)

    def _buffer(self, arr: Any, what: str) -> Any:
        if isinstance(arr, DeviceArray):
            if arr.owner != self._owner:
                raise DeviceError(f"{what} is a DeviceArray of another device actor "
                                  f"({arr.device}); download it there and pass the numpy array",
                                  device=self._backend.name)
            dbuf = self._arrays.get(arr.key)
            if dbuf is None:
                raise DeviceError(f"{what}: DeviceArray {arr.key} was freed",
                                  device=self._backend.name)
            return dbuf
        if isinstance(arr, np.ndarray):
            return self._backend.to_device(arr)
        raise TypeError(f"{what} is a {type(arr).__qualname__}; pass a numpy array or a "
                        "DeviceArray of this actor")

    def upload(self, array: np.ndarray) -> DeviceArray:
        """Copy a host array to the device; returns its handle."""
        return self._handle(self._buffer(array, "upload's argument"))

    def empty(self, shape: Sequence[int], dtype: str = "float32") -> DeviceArray:
        """Uninitialised device memory for an array of ``shape`` and ``dtype``."""
        return self._handle(self._backend.empty(shape, dtype))

    def download(self, array: DeviceArray) -> np.ndarray:
        """The array's data as a new host numpy array."""
        if not isinstance(array, DeviceArray):
            raise TypeError(f"download takes a DeviceArray, got {type(array).__qualname__}")
        return self._backend.to_host(self._buffer(array, "download's argument"))

    def free(self, *arrays: DeviceArray) -> int:
        """Release the device memory of ``arrays``; returns how many were still held."""
        n = 0
        for a in arrays:
            self._buffer(a, "free's argument")
            if self._arrays.pop(a.key, None) is not None:
                n += 1
        return n

    def held(self) -> int:
        """How many arrays this actor holds on its device."""
        return len(self._arrays)

    def copy(self, array: DeviceArray) -> DeviceArray:
        """A device-to-device copy (its device time: :meth:`last_device_seconds`)."""
        out, secs = self._backend.copy(self._buffer(array, "copy's argument"))
        self._last_seconds = secs
        return self._handle(out)

    # kernels ----------------------------------------------------------------------------
    def build(self, source: str, options: str = "") -> list[str]:
        """Build ``source`` (cached by source and options); returns its kernels' names.

        Raises:
            DeviceError: the build failed (``.device``, ``.options``, ``.log``).
        """
        prog = self._backend.build(source, options)
        return sorted(k.function_name for k in prog.all_kernels())

    def run_kernel(self, source: str, name: str, global_size: Sequence[int],
                   local_size: Sequence[int] | None, *args: Any, options: str = "") -> float:
        """Build (once) and run kernel ``name``; returns its device time in seconds.

        ``args``: :class:`DeviceArray` handles (read and written in place: download them
        afterwards), numpy arrays (copied to the device for this call, read-only), numpy
        scalars of the kernel's parameter types (``np.int32``, ``np.float32``, ...), or
        ``("local", nbytes)`` for a ``__local`` buffer.

        Raises:
            TypeError: a Python int or float (the kernel's type would be a guess: wrap it as
                ``np.int32(...)``/``np.float32(...)``) or another unsupported argument.
            ValueError: sizes that are not positive integers.
            DeviceError: the build or the launch failed.
        """
        sizes = [tuple(global_size)] + ([] if local_size is None else [tuple(local_size)])
        for s in sizes:
            if not s or len(s) > 3 or any(not isinstance(d, (int, np.integer)) or d < 1
                                          for d in s):
                raise ValueError(f"work sizes are 1 to 3 positive integers, got {s}")
        cl_args = []
        for i, a in enumerate(args):
            if isinstance(a, (DeviceArray, np.ndarray)):
                cl_args.append(self._buffer(a, f"argument {i} of {name}"))
            elif isinstance(a, np.generic) or (isinstance(a, tuple) and a[:1] == ("local",)):
                cl_args.append(a)
            elif isinstance(a, (bool, int, float)):
                raise TypeError(f"argument {i} of kernel {name} is a Python {type(a).__name__}; "
                                "wrap it in the kernel's type, e.g. np.int32(...) or "
                                "np.float32(...)")
            else:
                raise TypeError(f"argument {i} of kernel {name} is a {type(a).__qualname__}; "
                                "pass DeviceArrays, numpy arrays or numpy scalars")
        prog = self._backend.build(source, options)
        self._last_seconds = self._backend.run(prog, name, global_size, local_size, cl_args)
        return self._last_seconds

    # tensor operations ------------------------------------------------------------------
    def op(self, name: str, *args: Any, keep: bool = False, **params: Any) -> Any:
        """Run tensor operation ``name`` (see :mod:`repartir.devices.ops`) on ``args`` (numpy
        float32 arrays or DeviceArrays of this actor).

        Returns:
            a numpy array (a DeviceArray handle with ``keep=True``), or a numpy scalar for
            reductions.

        Raises:
            ValueError, TypeError: shapes, dtypes or parameters the operation does not take
                (checked before anything goes to the device).
        """
        shapes, dtypes = [], []
        for a in args:
            if isinstance(a, (DeviceArray, np.ndarray)):
                shapes.append(tuple(a.shape))
                dtypes.append(a.dtype)
            else:
                raise TypeError(f"{name}: arguments are numpy arrays or DeviceArrays, got a "
                                f"{type(a).__qualname__}")
        check_args(name, shapes, dtypes, params)
        bufs = [self._buffer(a, f"argument {i} of {name}") for i, a in enumerate(args)]
        before = self._backend.device_seconds
        out = getattr(self._backend, name)(*bufs, **params)
        self._last_seconds = self._backend.device_seconds - before
        if not hasattr(out, "buf"):
            return out
        return self._handle(out) if keep else self._backend.to_host(out)

    def clblast_matmul(self, a: Any, b: Any, keep: bool = False) -> Any:
        """``op("matmul", a, b)`` through CLBlast instead of repartir's kernel (for
        comparison; raises DeviceError where pyclblast is not installed)."""
        for i, x in enumerate((a, b)):
            if not isinstance(x, (DeviceArray, np.ndarray)):
                raise TypeError(f"matmul: argument {i} is a {type(x).__qualname__}")
        check_args("matmul", [a.shape, b.shape], [a.dtype, b.dtype])
        before = self._backend.device_seconds
        out = self._backend.matmul_clblast(self._buffer(a, "a"), self._buffer(b, "b"))
        self._last_seconds = self._backend.device_seconds - before
        return self._handle(out) if keep else self._backend.to_host(out)

    def calibrate(self) -> Rates:
        """Measure this device's rates for the cost model (a few seconds; see
        :class:`~repartir.devices.select.Rates`), with the host's SIMD rates measured in
        this process."""
        b = self._backend
        n = 1 << 24                                    # 64 MiB of float32
        host = np.ones(n, np.float32)
        t0 = time.perf_counter()
        d = b.to_device(host)
        h2d = host.nbytes / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        b.to_host(d)
        d2h = host.nbytes / (time.perf_counter() - t0)
        b.add(d, d)
        before = b.device_seconds
        b.add(d, d)
        stream = 12.0 * n / max(b.device_seconds - before, 1e-9)
        m = 2048 if b.info["type"] == "gpu" else 512
        x = b.to_device(np.ones((m, m), np.float32))
        b.matmul(x, x)
        before = b.device_seconds
        b.matmul(x, x)
        flops = 2.0 * m ** 3 / max(b.device_seconds - before, 1e-9)
        cpu_flops, cpu_bps = calibrate_cpu()
        small = b.to_device(np.ones(4, np.float32))
        t0 = time.perf_counter()
        for _ in range(20):
            b.to_host(b.add(small, small))
        overhead = (time.perf_counter() - t0) / 20 + 100e-6   # plus an actor call's trip
        return Rates(b.name, h2d, d2h, flops, stream, cpu_flops, cpu_bps, overhead,
                     measured_at=time.time())


class SimdDeviceActor:
    """The body of :data:`SimdDevice`: the host's SIMD units (numpy) in an actor of their own,
    with the same ``op`` method as an OpenCL device actor."""

    def __init__(self) -> None:
        self._backend = SimdBackend()

    def device_name(self) -> str:
        return self._backend.device_name()

    def capacity(self) -> int:
        return len(os.sched_getaffinity(0))

    def op(self, name: str, *args: Any, **params: Any) -> Any:
        """Run tensor operation ``name`` on numpy float32 arrays (see ``OpenCLDevice.op``)."""
        for i, a in enumerate(args):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{name}: argument {i} is a {type(a).__qualname__}, not a numpy "
                                "array")
        check_args(name, [a.shape for a in args], [a.dtype for a in args], params)
        return getattr(self._backend, name)(*args, **params)


#: Actor class owning one OpenCL device: ``OpenCLDevice.options(num_gpus=1).remote(device=0)``.
OpenCLDevice = ActorClass(OpenCLDeviceActor, {"num_cpus": 0})
#: Actor class running the SIMD backend: ``SimdDevice.remote()``.
SimdDevice = ActorClass(SimdDeviceActor, {"num_cpus": 0})
