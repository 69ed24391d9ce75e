"""The cost model: send an operation to the GPU only when the transfer is worth it.

Gregg & Hazelwood ("Where is the data? Why you cannot debate CPU vs. GPU performance without
the answer", ISPASS 2011) showed that a GPU's speed-up means nothing without the time spent
moving the data over PCIe; the "5× rule" drawn from it (as trueno uses it) offloads an operation
only when its compute time exceeds about five times its transfer time, so that transfers cost
at most a fifth of what the offload saves.  This module applies it with rates measured on the
machine:

::

    decide(op, shapes, rates)                  pure: no I/O, no device; table-tested
      transfer_s = bytes_to_device / h2d + bytes_back / d2h      (0 for data already there)
      cpu_s      = max(flops / cpu_flops, bytes / cpu_bytes_per_s) + cpu_overhead_s
      gpu_s      = max(flops / gpu_flops, bytes / gpu_bytes_per_s) + gpu_overhead_s
      GPU  iff  cpu_s >= factor * transfer_s   (the 5× rule, factor = 5)
            and transfer_s + gpu_s < cpu_s     (and the GPU must actually finish first)

*Compute time* is the operation's time on the host, the work the offload takes away (as
trueno-zram's ``T_compute``); on a GPU several times faster than the host the GPU's own compute
time is far below the transfer time for every operation on host data, so a rule on that time
would never offload.  The second condition guards a slow GPU.

Rates (:class:`Rates`) are measured once per host and device (``calibrate_cpu`` here, the GPU
part by the device actor, :meth:`repartir.devices.actor.OpenCLDevice.calibrate`) and cached as JSON
in ``REPARTIR_DEVICE_CACHE`` (see :mod:`repartir.config`).  Every :class:`Decision` prints its
inputs (``str(decision)``), and ``TensorExecutor.explain(...)`` returns it for any call.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from typing import Sequence

import numpy as np

from ..config import device_cache_dir
from .ops import NAMES, work

__all__ = ["Rates", "Decision", "decide", "calibrate_cpu", "load_rates", "save_rates",
           "PCIE_FACTOR"]

#: The rule's factor: offload only when compute time >= PCIE_FACTOR × transfer time.
PCIE_FACTOR = 5.0


@dataclasses.dataclass(frozen=True)
class Rates:
    """What the cost model knows about one host and one device, in SI units.

    Attributes:
        device: the device's name (the cache key, with the host name).
        h2d_bytes_per_s, d2h_bytes_per_s: host-to-device and device-to-host copy rates,
            including the trip through the device actor (bytes/s).
        gpu_flops: matmul rate on the device (FLOP/s); gpu_bytes_per_s: element-wise
            streaming rate on the device (bytes read + written per second).
        cpu_flops, cpu_bytes_per_s: the same two rates of the SIMD backend on the host.
        gpu_overhead_s: fixed cost of one operation on the device (actor call, launch, wait).
        cpu_overhead_s: fixed cost of one operation on the host (argument checks).
        measured_at: ``time.time()`` of the measurement.
    """

    device: str
    h2d_bytes_per_s: float
    d2h_bytes_per_s: float
    gpu_flops: float
    gpu_bytes_per_s: float
    cpu_flops: float
    cpu_bytes_per_s: float
    gpu_overhead_s: float = 100e-6
    cpu_overhead_s: float = 3e-6
    measured_at: float = 0.0


@dataclasses.dataclass(frozen=True)
class Decision:
    """Where one operation goes, and why.  ``str()`` prints every input of the decision."""

    backend: str               #: ``"gpu"`` or ``"cpu"``
    op: str
    shapes: tuple
    bytes_to_device: int
    bytes_back: int
    flops: float
    transfer_s: float
    cpu_s: float
    gpu_s: float
    factor: float
    reason: str

    def __str__(self) -> str:
        return (f"{self.op}{list(self.shapes)} -> {self.backend.upper()}: {self.reason} "
                f"[host compute {self.cpu_s * 1e3:.3f} ms, transfer {self.transfer_s * 1e3:.3f} ms "
                f"({self.bytes_to_device + self.bytes_back:,} B), device compute "
                f"{self.gpu_s * 1e3:.3f} ms, {self.flops:,.0f} FLOP, factor {self.factor:g}]")


def decide(op: str, shapes: Sequence[tuple[int, ...]], rates: Rates | None, *,
           resident: Sequence[bool] = (), result_stays: bool = False,
           factor: float = PCIE_FACTOR) -> Decision:
    """Choose the backend of one operation (pure: reads nothing, measures nothing).

    Args:
        op: an operation of :data:`repartir.devices.ops.OPERATIONS`.
        shapes: the float32 arguments' shapes.
        rates: the measured rates; ``None`` (no device) always answers ``"cpu"``.
        resident: per argument, whether it is on the device already (no transfer).
        result_stays: the result stays on the device (no transfer back).
        factor: the rule's factor (default :data:`PCIE_FACTOR`, 5).

    Raises:
        ValueError: an unknown operation or shapes it does not take.
    """
    if op not in NAMES:
        raise ValueError(f"unknown tensor operation {op!r}")
    shapes = tuple(tuple(int(d) for d in s) for s in shapes)
    bytes_in, bytes_out, flops = work(op, shapes)
    per_arg = [4 * int(np.prod(s)) for s in shapes]
    to_dev = sum(b for i, b in enumerate(per_arg) if not (i < len(resident) and resident[i]))
    back = 0 if result_stays else bytes_out
    if rates is None:
        return Decision("cpu", op, shapes, to_dev, back, flops, float("inf"), 0.0, float("inf"),
                        factor, "no device")
    moved = bytes_in + bytes_out
    cpu_s = max(flops / rates.cpu_flops, moved / rates.cpu_bytes_per_s) + rates.cpu_overhead_s
    gpu_s = max(flops / rates.gpu_flops, moved / rates.gpu_bytes_per_s) + rates.gpu_overhead_s
    transfer_s = to_dev / rates.h2d_bytes_per_s + back / rates.d2h_bytes_per_s
    if cpu_s < factor * transfer_s:
        return Decision("cpu", op, shapes, to_dev, back, flops, transfer_s, cpu_s, gpu_s, factor,
                        f"host compute is below {factor:g}x the transfer time")
    if transfer_s + gpu_s >= cpu_s:
        return Decision("cpu", op, shapes, to_dev, back, flops, transfer_s, cpu_s, gpu_s, factor,
                        "transfer + device compute would not beat the host")
    return Decision("gpu", op, shapes, to_dev, back, flops, transfer_s, cpu_s, gpu_s, factor,
                    f"host compute is at least {factor:g}x the transfer time and the device "
                    "finishes first")


def _best(fn, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate_cpu(n: int = 1 << 22, m: int = 512) -> tuple[float, float]:
    """The host's SIMD rates: ``(matmul FLOP/s, element-wise add bytes/s)``, each the best of
    five runs of an ``m``×``m`` float32 matmul and an add of ``n`` float32 (defaults 512 and 4M)."""
    rng = np.random.default_rng(0)
    a = rng.random(n, dtype=np.float32)
    b = rng.random(n, dtype=np.float32)
    out = np.empty_like(a)
    t_add = _best(lambda: np.add(a, b, out=out))
    x = rng.random((m, m), dtype=np.float32)
    y = rng.random((m, m), dtype=np.float32)
    t_mm = _best(lambda: x @ y)
    return 2.0 * m ** 3 / t_mm, 12.0 * n / t_add


def _cache_path() -> str:
    return os.path.join(device_cache_dir(), f"rates-{socket.gethostname()}.json")


def load_rates(device: str) -> Rates | None:
    """The cached rates of ``device`` on this host, or ``None``."""
    try:
        with open(_cache_path()) as f:
            entry = json.load(f).get(device)
        return Rates(**entry) if entry else None
    except (OSError, ValueError, TypeError):
        return None


def save_rates(rates: Rates) -> None:
    """Cache ``rates`` (atomically; the other devices' entries are kept)."""
    path = _cache_path()
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError):
        table = {}
    table[rates.device] = dataclasses.asdict(rates)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=1)
    os.replace(tmp, path)
