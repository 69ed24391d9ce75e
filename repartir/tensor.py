"""The seed's tensor API over device actors: ``Tensor``, ``TensorExecutor``, ``GpuExecutor``.

::

    ex = TensorExecutor.builder().backend(Backend.AUTO).build()
    a = Tensor.from_slice([1.0, 2.0, 3.0])
    b = Tensor.from_numpy(np.ones(3, np.float32))
    c = ex.add(a, b).result()            # without an event loop
    c = await ex.add(a, b)               # in asyncio
    ex.explain("matmul", x, y)           # the cost model's decision and its inputs

``Backend.CPU`` runs the SIMD backend (:class:`~repartir.devices.simd.SimdBackend`) in the
calling process; ``Backend.GPU`` runs every operation on an OpenCL device actor (a discrete GPU,
else an integrated one, else OpenCL on the CPU); ``Backend.AUTO`` asks the cost model
(:mod:`repartir.devices.select`) for each call and sends an operation to the GPU only when the
5× rule says the transfer is worth it.  Every operation of
:data:`repartir.devices.ops.OPERATIONS` is a method of :class:`TensorExecutor`; each checks
shapes and dtypes before any work starts and returns a :class:`TensorFuture`.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Iterable, Sequence

import numpy as np

from . import kill
from .devices.actor import OpenCLDevice
from .devices.discovery import DeviceInfo, discover
from .devices.ops import DTYPE, NAMES, OPERATIONS, check_args, check_backend
from .devices.select import PCIE_FACTOR, Decision, Rates, decide, load_rates, save_rates
from .devices.simd import SimdBackend
from .errors import DeviceNotFoundError
from .runtime import driver as _driver
from .runtime.objectref import ObjectRef

__all__ = ["Backend", "Tensor", "TensorFuture", "TensorExecutor", "TensorExecutorBuilder",
           "GpuExecutor", "GpuExecutorBuilder"]


class Backend(enum.Enum):
    """Where a :class:`TensorExecutor` runs its operations."""

    CPU = "cpu"     #: the SIMD backend, in this process
    GPU = "gpu"     #: an OpenCL device actor (discrete GPU > integrated GPU > CPU OpenCL)
    AUTO = "auto"   #: per operation, by the cost model (5× rule)


class Tensor:
    """A float32 array, the operand and result of :class:`TensorExecutor` operations.

    Build one with :meth:`from_slice` or :meth:`from_numpy`; read it with :meth:`numpy`,
    :meth:`to_list`, ``shape``, ``len()``.  A tensor's data is never written by an operation.
    """

    __slots__ = ("_data",)

    def __init__(self, data: np.ndarray) -> None:
        if not isinstance(data, np.ndarray) or data.dtype != DTYPE:
            raise TypeError("Tensor wraps a float32 numpy array; use Tensor.from_numpy(...)")
        self._data = data

    @classmethod
    def from_slice(cls, values: Iterable[float], shape: Sequence[int] | None = None) -> "Tensor":
        """A tensor of ``values`` (a flat sequence of numbers), 1-D or reshaped to ``shape``.

        Raises:
            TypeError: a value is not a real number.
            ValueError: ``shape`` does not hold exactly ``len(values)`` elements.
        """
        vals = list(values)
        for i, v in enumerate(vals):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise TypeError(f"from_slice: element {i} is a {type(v).__qualname__}, not a "
                                "real number")
        data = np.array(vals, dtype=DTYPE)
        if shape is not None:
            shape = tuple(int(d) for d in shape)
            if math.prod(shape) != data.size:
                raise ValueError(f"from_slice: shape {shape} holds {math.prod(shape)} elements, "
                                 f"got {data.size} values")
            data = data.reshape(shape)
        return cls(data)

    @classmethod
    def from_numpy(cls, array: np.ndarray, copy: bool = False) -> "Tensor":
        """A tensor of ``array``: shared when it is float32 and C-contiguous (and ``copy`` is
        false), else converted to a C-contiguous float32 copy.

        Raises:
            TypeError: not a numpy array, or a dtype that is not real numbers (complex,
                object, strings, datetimes).
        """
        if not isinstance(array, np.ndarray):
            raise TypeError(f"from_numpy takes a numpy array, got {type(array).__qualname__}")
        if array.dtype.kind not in "biuf":
            raise TypeError(f"from_numpy: dtype {array.dtype} is not a real number type")
        data = np.array(array, dtype=DTYPE, order="C", copy=True) if copy else \
            np.ascontiguousarray(array, dtype=DTYPE)
        return cls(data)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    @property
    def size(self) -> int:
        return self._data.size

    def numpy(self) -> np.ndarray:
        """The data (not a copy; read-only when it came back through the object store)."""
        return self._data

    def to_list(self) -> list:
        return self._data.tolist()

    def __len__(self) -> int:
        return len(self._data)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self._data if dtype is None else self._data.astype(dtype)

    def __repr__(self) -> str:
        body = np.array2string(self._data, threshold=8, separator=", ")
        return f"Tensor(shape={self.shape}, {body})"


class TensorFuture:
    """The result of one :class:`TensorExecutor` operation: ``.result()`` blocks, ``await``
    suspends.  The value is a :class:`Tensor`, a ``float`` (reductions) or an ``int``
    (argmin, argmax)."""

    __slots__ = ("_ref", "_value", "_done")

    def __init__(self, value: Any = None, ref: ObjectRef | None = None) -> None:
        self._ref = ref
        self._value = None if ref is not None else _wrap(value)
        self._done = ref is None

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None) -> Any:
        """The value; waits up to ``timeout`` seconds (``None``: for ever).

        Raises:
            GetTimeoutError: ``timeout`` passed first.
            DeviceError, ValueError, TypeError: the operation failed on its device.
        """
        if not self._done:
            self._value = _wrap(_driver.client().get([self._ref], timeout)[0])
            self._done, self._ref = True, None
        return self._value

    def __await__(self):
        if not self._done:
            value = yield from self._ref.__await__()
            self._value = _wrap(value)
            self._done, self._ref = True, None
        return self._value


def _wrap(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return Tensor(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _pick(devices: list[DeviceInfo], device: "int | str | None") -> DeviceInfo:
    """The device a GPU executor uses: discrete GPU, integrated GPU, accelerator, CPU OpenCL."""
    order = sorted(devices, key=lambda d: (0 if d.is_gpu and d.discrete else 1 if d.is_gpu
                                           else 2 if d.type == "accelerator" else 3))
    present = ", ".join(f"{d.name} ({d.type})" for d in devices) or "none"
    if device is None:
        if not order:
            raise DeviceNotFoundError("no OpenCL device found; pip install \"repartir[gpu]\" "
                                      "brings PoCL (OpenCL on the CPU), a GPU needs its "
                                      "vendor's OpenCL driver")
        return order[0]
    if isinstance(device, int) and not isinstance(device, bool):
        if not 0 <= device < len(order):
            raise DeviceNotFoundError(f"no device with index {device}; present: {present}")
        return order[device]
    if isinstance(device, str):
        for d in order:
            if device.lower() in d.name.lower() or device.lower() == d.type:
                return d
        raise DeviceNotFoundError(f"no device named like {device!r}; present: {present}")
    raise TypeError(f"device is None, an index or a name, got {type(device).__qualname__}")


def _start_device_actor(info: DeviceInfo) -> Any:
    opts = {"num_gpus": 1} if info.is_gpu else {}
    return OpenCLDevice.options(**opts).remote(device=(info.platform_index, info.device_index))


class TensorExecutorBuilder:
    """``TensorExecutor.builder().backend(Backend.AUTO).device(0).build()``."""

    def __init__(self) -> None:
        self._backend = Backend.AUTO
        self._device: int | str | None = None
        self._rates: Rates | None = None
        self._factor = PCIE_FACTOR

    def backend(self, backend: Backend) -> "TensorExecutorBuilder":
        """``Backend.CPU``, ``Backend.GPU`` or ``Backend.AUTO`` (the default)."""
        if not isinstance(backend, Backend):
            raise TypeError(f"backend must be a Backend (CPU, GPU, AUTO), got {backend!r}")
        self._backend = backend
        return self

    def device(self, device: "int | str | None") -> "TensorExecutorBuilder":
        """Which OpenCL device: an index in selection order, a name substring, ``"gpu"`` /
        ``"cpu"``, or ``None`` (the first in selection order, the default)."""
        self._device = device
        return self

    def rates(self, rates: Rates) -> "TensorExecutorBuilder":
        """Use these rates in the cost model instead of measured (or cached) ones."""
        if not isinstance(rates, Rates):
            raise TypeError("rates must be a repartir.devices.Rates")
        self._rates = rates
        return self

    def factor(self, factor: float) -> "TensorExecutorBuilder":
        """The 5× rule's factor (default 5)."""
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        self._factor = float(factor)
        return self

    def build(self) -> "TensorExecutor":
        """Make the executor.  ``GPU``: starts the device actor (and ``repartir.init()`` if
        needed).  ``AUTO``: also loads the device's rates from the cache, or measures them
        once (a few seconds) and caches them.

        Raises:
            DeviceNotFoundError: ``Backend.GPU`` and no OpenCL device.
        """
        return TensorExecutor(self._backend, self._device, self._rates, self._factor)


class TensorExecutor:
    """Runs the tensor operations of :data:`repartir.devices.ops.OPERATIONS` on a backend.

    Every operation is a method: ``add(a, b)``, ``scale(a, alpha=2.0)``,
    ``clamp(a, lo=0, hi=1)``, ``matmul(a, b)``, ``sum(a)``, ...; each takes :class:`Tensor`
    arguments (numpy float32 arrays are accepted too), checks them before any work starts
    (``ValueError`` for shapes, ``TypeError`` for dtypes) and returns a :class:`TensorFuture`.
    """

    def __init__(self, backend: Backend = Backend.CPU, device: "int | str | None" = None,
                 rates: Rates | None = None, factor: float = PCIE_FACTOR) -> None:
        self._backend = backend
        self._simd = SimdBackend()
        self._actor: Any = None
        self._info: DeviceInfo | None = None
        self._rates = rates
        self._factor = factor
        if backend is Backend.CPU:
            return
        devices = discover()
        if backend is Backend.AUTO:
            gpus = [d for d in devices if d.is_gpu]
            if device is None and not gpus:
                return                                  # nothing to offload to: CPU only
            self._info = _pick(gpus if device is None else devices, device)
        else:
            self._info = _pick(devices, device)
        self._actor = _start_device_actor(self._info)
        if backend is Backend.AUTO and self._rates is None:
            self._rates = load_rates(self._info.name)
            if self._rates is None:
                self._rates = _driver.client().get([self._actor.calibrate.remote()], None)[0]
                save_rates(self._rates)

    @staticmethod
    def builder() -> TensorExecutorBuilder:
        return TensorExecutorBuilder()

    @property
    def backend(self) -> Backend:
        return self._backend

    def device_name(self) -> str:
        """The OpenCL device's name, or ``"CPU (numpy SIMD)"`` for ``Backend.CPU``."""
        return self._info.name if self._info is not None else self._simd.device_name()

    @property
    def rates(self) -> Rates | None:
        """The cost model's rates (``Backend.AUTO`` with a GPU), else ``None``."""
        return self._rates

    def explain(self, op: str, *args: Any, **params: Any) -> Decision:
        """The cost model's decision for this call, with its inputs (``print()`` it).

        ``Backend.CPU`` / ``GPU`` executors answer what ``AUTO`` would do on their rates
        (``"no device"`` when they have none); the call itself is not run.
        """
        arrays = [self._array(a, op, i) for i, a in enumerate(args)]
        check_args(op, [a.shape for a in arrays], [a.dtype for a in arrays], params)
        return decide(op, [a.shape for a in arrays], self._rates, factor=self._factor)

    def _array(self, a: Any, op: str, i: int) -> np.ndarray:
        if isinstance(a, Tensor):
            return a._data
        if isinstance(a, np.ndarray):
            return a
        raise TypeError(f"{op}: argument {i} is a {type(a).__qualname__}; pass Tensors "
                        "(Tensor.from_slice / Tensor.from_numpy)")

    def _run(self, op: str, args: tuple, params: dict) -> TensorFuture:
        arrays = [self._array(a, op, i) for i, a in enumerate(args)]
        check_args(op, [a.shape for a in arrays], [a.dtype for a in arrays], params)
        where = self._backend
        if where is Backend.AUTO:
            if self._actor is None:
                where = Backend.CPU
            else:
                d = decide(op, [a.shape for a in arrays], self._rates, factor=self._factor)
                where = Backend.GPU if d.backend == "gpu" else Backend.CPU
        if where is Backend.CPU:
            return TensorFuture(getattr(self._simd, op)(*arrays, **params))
        return TensorFuture(ref=self._actor.op.remote(op, *arrays, **params))

    def close(self) -> None:
        """Stop the device actor (if any).  Idempotent."""
        actor, self._actor = self._actor, None
        if actor is not None and _driver.is_initialized():
            kill(actor)

    def __enter__(self) -> "TensorExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _operation(op_name: str):
    op = NAMES[op_name]
    args = ", ".join("abc"[: op.arity]) + "".join(
        f", *, {p}" if i == 0 else f", {p}" for i, p in enumerate(op.params))

    def method(self: TensorExecutor, *arrays: Any, **params: Any) -> TensorFuture:
        return self._run(op_name, arrays, params)

    method.__name__ = method.__qualname__ = op_name
    method.__doc__ = (f"``{op_name}({args})``: the {op.kind} operation of "
                      f":data:`repartir.devices.ops.OPERATIONS`; returns a TensorFuture.")
    return method


for _op in OPERATIONS:
    setattr(TensorExecutor, _op.name, _operation(_op.name))
check_backend(TensorExecutor)


class GpuExecutorBuilder:
    """``GpuExecutor.builder().device(0).build()``."""

    def __init__(self) -> None:
        self._device: int | str | None = None

    def device(self, device: "int | str | None") -> "GpuExecutorBuilder":
        """An index in selection order, a name substring, or ``None`` (the first)."""
        self._device = device
        return self

    def build(self) -> "GpuExecutor":
        return GpuExecutor(self._device)


class GpuExecutor:
    """One OpenCL device in a device actor, picked in the order discrete GPU, integrated
    GPU, CPU OpenCL (PoCL).

    Raises:
        DeviceNotFoundError: no OpenCL device at all.
    """

    def __init__(self, device: "int | str | None" = None) -> None:
        self._info = _pick(discover(), device)
        self._actor = _start_device_actor(self._info)

    @staticmethod
    def builder() -> GpuExecutorBuilder:
        return GpuExecutorBuilder()

    @property
    def actor(self) -> Any:
        """The device actor's handle (for ``upload``, ``op``, ``download``... directly)."""
        return self._actor

    def device_name(self) -> str:
        return self._info.name

    def capacity(self) -> int:
        """Compute units of the device (multiprocessors of a GPU, cores of a CPU)."""
        return self._info.compute_units

    def info(self) -> DeviceInfo:
        return self._info

    def run_kernel(self, source: str, name: str, global_size: Sequence[int],
                   local_size: Sequence[int] | None, *args: Any,
                   options: str = "") -> TensorFuture:
        """Build (once, cached) and run an OpenCL kernel; the future's value is its device
        time in seconds.  ``args`` as ``OpenCLDevice.run_kernel`` takes them."""
        return TensorFuture(ref=self._actor.run_kernel.remote(
            source, name, global_size, local_size, *args, options=options))

    def close(self) -> None:
        actor, self._actor = self._actor, None
        if actor is not None and _driver.is_initialized():
            kill(actor)

    def __enter__(self) -> "GpuExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
