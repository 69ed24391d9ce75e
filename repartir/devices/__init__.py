"""Devices: OpenCL GPUs (and OpenCL on the CPU) and the CPU's SIMD units, as actors.

Public names (see ``docs/devices.md``):

* :data:`OpenCLDevice`, :data:`SimdDevice` -- actor classes owning one device
  (:mod:`.actor`); :class:`DeviceArray` -- a handle to an array kept on a device.
* :func:`discover`, :class:`DeviceInfo` -- the devices of this machine, read in a subprocess
  (:mod:`.discovery`).
* :data:`OPERATIONS`, :class:`Op` -- the tensor operations every backend supplies (:mod:`.ops`);
  :class:`SimdBackend` -- the numpy one (:mod:`.simd`).  The OpenCL one,
  :mod:`.opencl`, is imported only inside device actors and the discovery subprocess.
* :func:`decide`, :class:`Rates`, :class:`Decision` -- the cost model (:mod:`.select`).
"""

from .actor import DeviceArray, OpenCLDevice, SimdDevice
from .discovery import DeviceInfo, discover
from .ops import OPERATIONS, Op
from .select import Decision, Rates, decide
from .simd import SimdBackend

__all__ = ["OpenCLDevice", "SimdDevice", "DeviceArray", "discover", "DeviceInfo", "OPERATIONS",
           "Op", "SimdBackend", "decide", "Rates", "Decision"]
