"""Device discovery in a short-lived subprocess: OpenCL devices, and NVML for NVIDIA GPUs.

::

    driver                                     python -m repartir.devices.discovery
    ┌─────────────────────────┐   spawn        ┌───────────────────────────────────────┐
    │ discover()              │ ─────────────▶ │ opencl.list_devices()  (pyopencl)     │
    │  parse JSON, DeviceInfo │ ◀───────────── │ nvml.snapshot()        (pynvml)       │
    └─────────────────────────┘  JSON, stdout  │ joined on the PCI bus id; exits       │
                                               └───────────────────────────────────────┘

Why a subprocess: an OpenCL implementation starts threads and maps device memory when it
enumerates its platforms, and the driver must not hold them before it starts its workers
(``docs/devices.md``, "Discovery"; workers are fresh interpreters, never a ``fork`` of the
driver: ``docs/architecture.md``, "Processes").  The driver itself never loads an OpenCL
driver; only device actors and this subprocess do.

``discover()`` answers ``[]`` at once when ``pyopencl`` is not installed (``pip install
"repartir[gpu]"`` installs it with PoCL).  ``repartir devices`` prints the table.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from typing import Any

from ..errors import DeviceError

__all__ = ["DeviceInfo", "discover", "main"]


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """One OpenCL device as discovery saw it.

    Attributes:
        platform: the OpenCL platform's name (``"NVIDIA CUDA"``, ``"Portable Computing Language"``).
        platform_index, device_index: where it is in ``pyopencl.get_platforms()`` order.
        name, vendor: as the driver reports them.
        type: ``"gpu"``, ``"cpu"``, ``"accelerator"`` or ``"other"``.
        discrete: a GPU with memory of its own (``False`` for integrated GPUs and CPUs).
        compute_units: ``CL_DEVICE_MAX_COMPUTE_UNITS`` (multiprocessors of a GPU, cores of a CPU).
        global_mem_bytes, local_mem_bytes: device memory and local (shared) memory per
            work-group, bytes.
        max_work_group_size: work-items per work-group at most.
        max_clock_mhz: the highest clock, MHz.
        opencl_version, driver_version: as reported.
        pci_bus: ``"bb:dd.f"`` for NVIDIA GPUs, else ``""``.
        memory_used_bytes, utilization_gpu_percent: from NVML at discovery time (NVIDIA GPUs
            only; ``None`` elsewhere).
    """

    platform: str
    platform_index: int
    device_index: int
    name: str
    vendor: str
    type: str
    discrete: bool
    compute_units: int
    global_mem_bytes: int
    local_mem_bytes: int
    max_work_group_size: int
    max_clock_mhz: int
    opencl_version: str
    driver_version: str
    pci_bus: str = ""
    memory_used_bytes: int | None = None
    utilization_gpu_percent: int | None = None

    @property
    def is_gpu(self) -> bool:
        return self.type == "gpu"


def _probe() -> list[dict]:
    """In the subprocess: every OpenCL device, joined with NVML's figures by PCI bus."""
    from . import nvml, opencl   # the subprocess is the one place that loads both drivers

    devices = opencl.list_devices()
    nv = nvml.snapshot()
    by_bus = {g["pci_bus"].rsplit(".", 1)[0]: g for g in nv}    # "bb:dd" (function left out)
    nvidia = [d for d in devices if "NVIDIA" in d["vendor"].upper() and d["type"] == "gpu"]
    for d in nvidia:
        g = by_bus.get(d.get("pci_bus") or "")
        if g is None and len(nvidia) == len(nv) == 1:
            g = nv[0]                        # one GPU each side: no bus ids needed to pair them
        if g is not None:
            d["pci_bus"] = g["pci_bus"]
            d["memory_used_bytes"] = g["memory_used_bytes"]
            d["utilization_gpu_percent"] = g["utilization_gpu_percent"]
    return devices


def discover(timeout: float = 60.0) -> list[DeviceInfo]:
    """The OpenCL devices of this machine, read in a subprocess (see the module's docstring).

    Args:
        timeout: seconds the subprocess may take (default 60).

    Returns:
        one :class:`DeviceInfo` per device, in platform order; ``[]`` without pyopencl or
        without any OpenCL platform.

    Raises:
        DeviceError: the subprocess failed or timed out; the message holds its stderr.
    """
    if importlib.util.find_spec("pyopencl") is None:
        return []
    try:
        proc = subprocess.run([sys.executable, "-m", "repartir.devices.discovery"],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"device discovery took more than {timeout:.0f} s; an OpenCL "
                          "driver is hanging (try `repartir devices` to see which)") from None
    if proc.returncode != 0:
        raise DeviceError(f"device discovery failed (exit {proc.returncode}):\n"
                          f"{proc.stderr.strip()[-4000:]}")
    return [DeviceInfo(**d) for d in json.loads(proc.stdout)]


def format_table(devices: list[DeviceInfo]) -> str:
    """The devices as text, one per line (what ``repartir devices`` prints)."""
    if not devices:
        return ("no OpenCL device (pip install \"repartir[gpu]\" brings PoCL for the CPU; a GPU "
                "needs its vendor's OpenCL driver)")
    lines = []
    for d in devices:
        mem = f"{d.global_mem_bytes / 2**30:.1f} GiB"
        if d.memory_used_bytes is not None:
            mem = f"{d.memory_used_bytes / 2**30:.1f}/{mem} used"
        util = ("" if d.utilization_gpu_percent is None
                else f", {d.utilization_gpu_percent}% busy")
        kind = "discrete GPU" if d.is_gpu and d.discrete else (
            "integrated GPU" if d.is_gpu else d.type.upper() if d.type == "cpu" else d.type)
        lines.append(f"{d.name}  [{kind}, {d.platform}]  {d.compute_units} compute units, "
                     f"{mem}{util}, {d.opencl_version}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The subprocess: print the devices as a JSON list (``--count``: the number of GPUs)."""
    argv = sys.argv[1:] if argv is None else argv
    devices: list[dict[str, Any]] = _probe()
    if "--count" in argv:
        print(sum(1 for d in devices if d["type"] == "gpu"))
    else:
        print(json.dumps(devices))
    return 0


if __name__ == "__main__":
    sys.exit(main())
