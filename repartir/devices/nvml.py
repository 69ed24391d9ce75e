"""NVIDIA devices read through NVML: memory and utilisation.

The only module of repartir that imports ``pynvml`` (the ``nvidia-ml-py`` package, NVIDIA's own
bindings).  OpenCL says what a device can do; NVML says how much of it is in use now, which
OpenCL cannot.  Everything here answers ``None``/``[]`` instead of raising when NVML is missing or
fails (no NVIDIA driver, a container without the library): that is a machine without NVIDIA
GPUs, not an error.
"""

from __future__ import annotations

from typing import Any

try:
    import pynvml
except ImportError:  # the gpu extra is not installed
    pynvml = None

__all__ = ["snapshot", "available"]


def available() -> bool:
    """Whether NVML can be loaded and initialised here."""
    if pynvml is None:
        return False
    try:
        pynvml.nvmlInit()
    except Exception:
        return False
    pynvml.nvmlShutdown()
    return True


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def snapshot() -> list[dict]:
    """One dict per NVIDIA GPU that NVML sees, in NVML's order.

    Keys: ``index``, ``name``, ``pci_bus`` (``"bb:dd.f"``, lower case, as
    :func:`repartir.devices.opencl.list_devices` gives it), ``memory_total_bytes``,
    ``memory_used_bytes``, ``utilization_gpu_percent``, ``utilization_memory_percent`` (the
    last two ``None`` where the driver does not report them).  ``[]`` without NVML.
    """
    if pynvml is None:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []
    out = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            bus = _text(pynvml.nvmlDeviceGetPciInfo(h).busId).lower()
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
                ug, um = int(util.gpu), int(util.memory)
            except Exception:
                ug = um = None
            out.append({"index": i, "name": _text(pynvml.nvmlDeviceGetName(h)),
                        "pci_bus": bus.split(":", 1)[-1] if bus.count(":") == 2 else bus,
                        "memory_total_bytes": int(mem.total), "memory_used_bytes": int(mem.used),
                        "utilization_gpu_percent": ug, "utilization_memory_percent": um})
    except Exception:
        pass
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return out
