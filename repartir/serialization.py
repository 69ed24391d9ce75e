"""Serialization of values, task arguments and errors.

Code (functions, classes, closures) goes through ``cloudpickle``; data through pickle
protocol 5 with **out-of-band buffers** (PEP 574): a numpy array (not object dtype) or an
Arrow buffer is not copied into the pickle stream but written once, 64-byte aligned, beside
it.  Reading it back hands pickle ``memoryview`` slices of the same bytes, so the array is a
zero-copy, read-only view (as in Ray).

A serialized object is one contiguous *blob*::

    u32 nbuf | u32 meta_len | nbuf x (u64 offset, u64 length) | meta (pickle)
    | pad | buf0 | pad | buf1 ...

A plain contiguous numpy array skips pickle's reduction: its ``nbuf`` has the high bit set
and ``meta`` is just ``(dtype.str, shape, order)``.

Offsets are from the blob's start; buffers start on 64-byte boundaries so SIMD loads on the
views stay aligned when the blob itself is.  Exact lengths are recorded, never a page-rounded
size.  Small blobs travel inline in task and completion records; large ones are written into
the object store's arena (see :mod:`repartir.store`).
"""

from __future__ import annotations

import copyreg
import importlib
import io
import linecache
import marshal
import os
import pickle
import struct
import sys
import traceback
import types
from collections import ChainMap
from typing import Any

import cloudpickle
import numpy as np

from .errors import (SerializationError, TaskCancelledError, TaskError, TaskTimeoutError,
                     exception_from_state, exception_state)

__all__ = [
    "Serialized",
    "serialize",
    "deserialize",
    "dumps_code",
    "loads",
    "error_payload",
    "error_from_payload",
]

_ALIGN = 64
_HEAD = struct.Struct("<II")
_ENTRY = struct.Struct("<QQ")
_SIMPLE = (int, float, str, bytes, bool, type(None), complex)


def _align(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


def _reduce_ndarray(a: np.ndarray):
    """numpy gives no out-of-band buffer for datetime64/timedelta64 arrays (they export no
    buffer); send their 8-byte values as an int64 buffer so they too come back as views."""
    if a.dtype.kind in "mM" and (a.flags.c_contiguous or a.flags.f_contiguous):
        order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
        buf = a.view(np.int64).ravel(order="K")
        return (_rebuild_time_array, (pickle.PickleBuffer(buf), a.dtype.str, a.shape, order))
    return a.__reduce_ex__(5)


def _rebuild_time_array(buf, dtype: str, shape: tuple, order: str) -> np.ndarray:
    return np.frombuffer(buf, dtype=np.int64).view(dtype).reshape(shape, order=order)


# -- code keeps its file name -----------------------------------------------------------------
#
# cloudpickle writes every code object with the file name "<dynamic-code>", so a remote
# traceback would not say where the user's code is.  Code objects go through ``marshal``
# instead (the format of ``.pyc`` files: every field kept, the file name and line table
# included; the same interpreter reads it back, as cloudpickle's own code format requires).
# A function or class sent by :func:`dumps_code` also carries the source lines of its code
# when its file cannot be read where it runs (code typed at a prompt, a notebook cell, a file
# of another machine): they are put into :mod:`linecache` there, so the traceback shows them.


def _reduce_code_data(code: types.CodeType):
    try:
        return marshal.loads, (marshal.dumps(code),)
    except ValueError:  # a hand-made code object with constants marshal cannot write
        return cloudpickle.CloudPickler.dispatch_table[types.CodeType](code)


def _reduce_code(code: types.CodeType):
    reduced = _reduce_code_data(code)
    if reduced[0] is not marshal.loads:
        return reduced
    first = code.co_firstlineno
    last = max((line for _, _, line in code.co_lines() if line is not None), default=first)
    lines = linecache.getlines(code.co_filename)[first - 1:last]
    return _load_code, (reduced[1][0], code.co_filename, first, lines)


_readable: dict[str, bool] = {}  # file name -> whether this process can read it


def _load_code(blob: bytes, filename: str, first: int, lines: list[str]) -> types.CodeType:
    """Rebuild a code object; where its file cannot be read, remember its source lines in
    :mod:`linecache` (beside lines of other code of the same file sent before)."""
    readable = _readable.get(filename)
    if readable is None:
        readable = _readable[filename] = os.path.isfile(filename)
    if lines and not readable:
        entry = linecache.cache.get(filename)
        if entry is None or len(entry) != 4 or entry[1] is not None:
            entry = linecache.cache[filename] = (0, None, [], filename)  # mtime None: kept
        known = entry[2]
        end = first - 1 + len(lines)
        if len(known) < end:
            known.extend(["\n"] * (end - len(known)))
        known[first - 1:end] = lines
    return marshal.loads(blob)


#: For a cloudpickle pickler of code elsewhere (a ``dispatch_table`` entry for code objects).
reduce_code = _reduce_code


class _DataPickler(pickle.Pickler):
    dispatch_table = ChainMap({np.ndarray: _reduce_ndarray}, copyreg.dispatch_table)


class _DataCloudPickler(cloudpickle.CloudPickler):
    dispatch_table = ChainMap({np.ndarray: _reduce_ndarray, types.CodeType: _reduce_code_data},
                              cloudpickle.CloudPickler.dispatch_table)


class _CodePickler(cloudpickle.CloudPickler):
    dispatch_table = ChainMap({types.CodeType: _reduce_code},
                              cloudpickle.CloudPickler.dispatch_table)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type):
            path = _wrapped_class_path(obj)
            if path is not None:
                return _import_wrapped_class, path
        return super().reducer_override(obj)


def _wrapped_class_path(cls: type) -> tuple[str, str] | None:
    """``(module, name)`` when the module-level name of ``cls`` holds a wrapper of it (an
    object whose ``__wrapped__`` is ``cls``: a class decorated with ``@repartir.remote``).

    cloudpickle would send such a class by value, as it cannot find it under its name; but
    its functions it finds through the wrapper (which forwards attribute reads) and sends
    by reference, so the class would arrive in pieces.  Sent by reference as a whole, its
    code runs with its module's globals, like any importable class."""
    module_name, name = cls.__module__, cls.__qualname__
    if module_name == "__main__" or "." in name:
        return None
    module = sys.modules.get(module_name)
    wrapper = getattr(module, name, None) if module is not None else None
    if wrapper is cls:
        # In the actor's own process the name holds the class itself (the actor process
        # unveils it, giving the class the wrapper's bound ``remote``): a process importing
        # the module finds the wrapper there, so this is the wrapped case too.
        wrapper = getattr(getattr(cls, "remote", None), "__self__", None)
    if getattr(wrapper, "__dict__", {}).get("__wrapped__") is not cls:
        return None
    return module_name, name


def _import_wrapped_class(module_name: str, name: str) -> type:
    found = getattr(importlib.import_module(module_name), name)
    return found.__dict__.get("__wrapped__", found)  # (the class itself where unveiled)


def _dumps(pickler_class, value: Any, buffer_callback) -> bytes:
    f = io.BytesIO()
    pickler_class(f, protocol=5, buffer_callback=buffer_callback).dump(value)
    return f.getvalue()


_PLAIN, _PLAIN_TIME, _CLOUD = 1, 2, 0


def _kind(value: Any, depth: int = 0) -> int:
    """How to pickle ``value``: ``_PLAIN`` when plain pickle is safe and faster than
    cloudpickle (builtin scalars, numpy arrays of non-object dtype, small builtin
    containers of those), ``_PLAIN_TIME`` when such a value holds datetime arrays (which
    need :func:`_reduce_ndarray`), ``_CLOUD`` for anything else (user classes, functions,
    objects from ``__main__``: cloudpickle pickles what a worker cannot import by value)."""
    t = type(value)
    if t in _SIMPLE:
        return _PLAIN
    if depth > 2:
        return _CLOUD
    if t is tuple or t is list:
        if len(value) > 64:
            return _CLOUD
        kind = _PLAIN
        for v in value:
            k = _kind(v, depth + 1)
            if k == _CLOUD:
                return _CLOUD
            kind = max(kind, k)
        return kind
    if t is dict:
        if len(value) > 64:
            return _CLOUD
        kind = _PLAIN
        for k_, v in value.items():
            k = _kind(v, depth + 1) if type(k_) in _SIMPLE else _CLOUD
            if k == _CLOUD:
                return _CLOUD
            kind = max(kind, k)
        return kind
    mod = t.__module__
    if t is np.ndarray:
        if value.dtype.hasobject:
            return _CLOUD
        return _PLAIN_TIME if value.dtype.kind in "mM" else _PLAIN
    if mod.startswith("numpy"):
        ok = hasattr(value, "dtype") and not value.dtype.hasobject  # numpy scalars
        return _PLAIN if ok else _CLOUD
    if mod.startswith("repartir."):
        return _PLAIN
    return _CLOUD


class Serialized:
    """A value turned into pickle bytes plus out-of-band buffers, ready to be written.

    Attributes:
        meta: the pickle stream (bytes).
        buffers: raw ``memoryview``s (format ``B``) of the out-of-band buffers.
        nbytes: exact size in bytes of the blob :meth:`write_into` writes.
    """

    __slots__ = ("meta", "buffers", "nbytes", "_offsets", "raw_array")

    def __init__(self, meta: bytes, buffers: list[memoryview]) -> None:
        self.meta = meta
        self.buffers = buffers
        self.raw_array = False
        pos = _HEAD.size + _ENTRY.size * len(buffers) + len(meta)
        offsets = []
        for b in buffers:
            pos = _align(pos)
            offsets.append(pos)
            pos += b.nbytes
        self._offsets = offsets
        self.nbytes = pos

    def write_into(self, dst: memoryview) -> None:
        """Write the blob into ``dst`` (writable, at least :attr:`nbytes` long)."""
        self._write_head(dst)
        for off, b in zip(self._offsets, self.buffers):
            _copy(dst, off, b)

    def _write_head(self, dst) -> None:
        nbuf = len(self.buffers) | (_RAW_ARRAY if self.raw_array else 0)
        _HEAD.pack_into(dst, 0, nbuf, len(self.meta))
        pos = _HEAD.size
        for off, b in zip(self._offsets, self.buffers):
            _ENTRY.pack_into(dst, pos, off, b.nbytes)
            pos += _ENTRY.size
        dst[pos:pos + len(self.meta)] = self.meta

    def chunks(self) -> list[tuple[int, Any]]:
        """The blob as ``(offset, bytes-like)`` pieces in order, the gaps between them
        zeros: what :meth:`write_into` writes, for writing to a file without a copy."""
        head = bytearray(self._offsets[0] if self._offsets else self.nbytes)
        self._write_head(head)
        return [(0, head)] + list(zip(self._offsets, self.buffers))

    def to_bytes(self) -> bytes:
        if not self.buffers:
            return _HEAD.pack(0, len(self.meta)) + self.meta
        out = bytearray(self.nbytes)
        self.write_into(memoryview(out))
        return bytes(out)


_copy_pool = None
_PARALLEL_COPY = 8 << 20  # bytes from which a copy is split over threads
#: The most threads one copy is split over (and no more than the machine's cores); the
#: benchmark's memcpy reference tries 1 to this many threads and keeps the best.
MAX_COPY_THREADS = 4


def _copy(dst: memoryview, off: int, src: memoryview) -> None:
    """Copy ``src`` into ``dst`` at ``off``.  Large copies are split over up to
    :data:`MAX_COPY_THREADS` threads, one part per 8 MiB at least:
    shared-memory pages are 4 KiB (no transparent huge pages for tmpfs on most kernels), and
    on virtual machines one core then copies at ~4 GB/s where two reach ~9 GB/s (measured
    on the development VM, 256 MiB)."""
    n = src.nbytes
    if n < 1 << 20:
        dst[off:off + n] = src
        return
    d = np.frombuffer(dst, np.uint8, n, off)
    s = np.frombuffer(src, np.uint8)
    parts = min(MAX_COPY_THREADS, os.cpu_count() or 1, n // _PARALLEL_COPY)
    if parts < 2:
        np.copyto(d, s)  # releases the GIL
        return
    global _copy_pool
    if _copy_pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _copy_pool = ThreadPoolExecutor(MAX_COPY_THREADS, thread_name_prefix="repartir-copy")
    step = -(-n // parts) + 63 & ~63
    chunks = [(i, min(i + step, n)) for i in range(0, n, step)]
    for f in [_copy_pool.submit(np.copyto, d[a:b], s[a:b]) for a, b in chunks]:
        f.result()


def _forget_copy_pool() -> None:
    global _copy_pool
    _copy_pool = None  # its threads do not exist in a forked child


os.register_at_fork(after_in_child=_forget_copy_pool)


def serialize(value: Any, what: str = "value") -> Serialized:
    """Serialize ``value`` (any picklable object).

    Raises:
        SerializationError: ``value`` cannot be pickled; the message names ``what``.
    """
    if type(value) is np.ndarray:
        raw = _raw_array(value)
        if raw is not None:
            return raw
    buffers: list[pickle.PickleBuffer] = []
    try:
        kind = _kind(value)
        if kind == _PLAIN:
            meta = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        elif kind == _PLAIN_TIME:
            meta = _dumps(_DataPickler, value, buffers.append)
        else:
            meta = _dumps(_DataCloudPickler, value, buffers.append)
    except (TaskCancelledError, TaskTimeoutError):
        raise  # the task was stopped (a signal) while its result was being pickled
    except Exception as exc:
        culprit = _device_object(value)
        if culprit is not None:
            err = SerializationError(
                f"{what} holds an OpenCL object ({culprit}), which lives in the process that "
                f"made it and cannot travel to another. {_OPENCL_HINT}")
            err.hint = f"It holds a {culprit}, an OpenCL object. {_OPENCL_HINT}"
            raise err from exc
        raise SerializationError(
            f"{what} of type {type(value).__module__}.{type(value).__qualname__} cannot be "
            f"serialized: {exc}. Pass something picklable (or create it inside the task)."
        ) from exc
    raws = []
    for b in buffers:
        try:
            raws.append(b.raw())
        except BufferError:  # non-contiguous exporter: copy it
            raws.append(memoryview(bytes(b)))
    return Serialized(meta, raws)


_OPENCL_HINT = ("Keep OpenCL state inside a device actor (repartir.devices.OpenCLDevice) and "
                "pass numpy arrays or DeviceArray handles.")


def _device_object(value: Any, depth: int = 0) -> str | None:
    """The type name of a pyopencl object in ``value`` (searched a few levels deep: containers
    and instance attributes), or ``None``.  Called only after pickling failed."""
    mod = type(value).__module__ or ""
    if mod == "pyopencl" or mod.startswith("pyopencl."):
        return f"pyopencl.{type(value).__qualname__}"
    if depth >= 3:
        return None
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        items = list(getattr(value, "__dict__", {}).values())
    for v in items[:256]:
        found = _device_object(v, depth + 1)
        if found is not None:
            return found
    return None


_RAW_ARRAY = 0x8000_0000  # flag in the blob's buffer count: one bare array, no pickle


def _raw_array(a: np.ndarray) -> Serialized | None:
    """A plain contiguous array (no object, structured or sub-array dtype) as its bytes and
    a three-field description: rebuilding it is one ``np.ndarray(..., buffer=...)`` call,
    several times faster than numpy's pickle reduction on a fresh buffer (measured:
    ~15 us against ~50 us for 256 MiB on the development VM)."""
    dt = a.dtype
    if dt.hasobject or dt.names is not None or dt.shape != ():
        return None
    if a.flags.c_contiguous:
        order = "C"
    elif a.flags.f_contiguous:
        order = "F"
    else:
        return None
    try:
        src = a.view(np.int64) if dt.kind in "mM" else a  # datetimes export no buffer
        raw = pickle.PickleBuffer(src).raw()
    except (BufferError, ValueError, TypeError):
        return None
    s = Serialized(pickle.dumps((dt.str, a.shape, order), protocol=5), [raw])
    s.raw_array = True
    return s


SIMPLE_TYPES = _SIMPLE


def simple_blob(value: Any) -> bytes:
    """The blob of a builtin scalar (``type(value) in SIMPLE_TYPES``): no buffers, no
    references, so no need for :class:`Serialized`."""
    meta = pickle.dumps(value, protocol=5)
    return _HEAD.pack(0, len(meta)) + meta


def deserialize(blob: memoryview) -> Any:
    """Rebuild a value from a blob; out-of-band buffers become slices of ``blob``, so pass a
    read-only view whose exporter stays alive as long as the slices do."""
    nbuf, meta_len = _HEAD.unpack_from(blob, 0)
    pos = _HEAD.size
    if nbuf == 0:
        return pickle.loads(blob[pos:pos + meta_len])
    if nbuf & _RAW_ARRAY:
        off, length = _ENTRY.unpack_from(blob, pos)
        dtype, shape, order = pickle.loads(blob[pos + _ENTRY.size:pos + _ENTRY.size + meta_len])
        # np.frombuffer, unlike np.ndarray(buffer=...), keeps a read-only buffer read-only
        # for good (setflags(write=True) is refused)
        flat = np.frombuffer(blob[off:off + length], np.dtype(dtype))
        return flat.reshape(shape, order=order)
    bufs = []
    for _ in range(nbuf):
        off, length = _ENTRY.unpack_from(blob, pos)
        pos += _ENTRY.size
        bufs.append(blob[off:off + length])
    return pickle.loads(blob[pos:pos + meta_len], buffers=bufs)


_LAYOUTS: dict[bytes, tuple] = {}  # raw-array description -> (dtype, count, shape, order)


def _layout(meta: bytes) -> tuple:
    dtype_str, shape, order = pickle.loads(meta)
    dtype = np.dtype(dtype_str)
    count = 1
    for n in shape:
        count *= n
    if len(_LAYOUTS) >= 1024:
        _LAYOUTS.clear()
    flat = len(shape) == 1
    layout = _LAYOUTS[meta] = (dtype, count, None if flat else shape, order)
    return layout


def deserialize_at(arena, offset: int, nbytes: int) -> tuple[Any, Any]:
    """Rebuild the blob at ``offset`` of an arena; returns ``(value, anchor)``.  The value's
    buffers are read-only views of the arena that live as long as ``anchor`` (an object
    that supports weak references): the caller keeps the block alive until it dies.

    A plain array (most large objects) is one ``np.frombuffer`` on the arena at the right
    offset, its description looked up in a cache: no slice, no pickle, so that ``get`` of
    any size costs a few microseconds of Python."""
    mm = arena.mm
    nbuf, meta_len = _HEAD.unpack_from(mm, offset)
    if nbuf & _RAW_ARRAY:
        boff, length = _ENTRY.unpack_from(mm, offset + _HEAD.size)
        pos = offset + _HEAD.size + _ENTRY.size
        meta = mm[pos:pos + meta_len]
        layout = _LAYOUTS.get(meta) or _layout(meta)
        dtype, count, shape, order = layout
        if dtype.itemsize and count * dtype.itemsize == length:
            flat = np.frombuffer(arena.ro, dtype, count, offset + boff)
            return (flat if shape is None else flat.reshape(shape, order=order)), flat
    base = arena.readonly_slice(offset, nbytes)
    return deserialize(memoryview(base)), base


def dumps_code(obj: Any, what: str | None = None) -> bytes:
    """cloudpickle ``obj`` (a function or class, or a tuple holding one), keeping the file
    names of its code and the source lines a traceback shows (see ``_reduce_code``).

    Raises:
        SerializationError: ``obj`` cannot be pickled; the message names ``what``.  With
            ``what=None`` the pickler's own exception is raised instead.
    """
    f = io.BytesIO()
    try:
        _CodePickler(f, protocol=5).dump(obj)
    except Exception as exc:
        if what is None:
            raise
        raise SerializationError(f"{what} cannot be serialized: {exc}") from exc
    return f.getvalue()


loads = pickle.loads


def error_payload(exc: BaseException, function_name: str) -> bytes:
    """What a worker sends back when a task raised ``exc``: the pickled exception when it
    pickles, plus its type name, message and formatted traceback as plain strings, so the
    owner can report it even when the exception cannot be unpickled there.  The traceback
    starts at the user's code, as a local one starts at the caller: the runtime's frames that
    called it are left out (all frames are kept when every one is the runtime's)."""
    tb = "".join(traceback.format_exception(type(exc), exc, _from_user_code(exc.__traceback__)))
    try:
        pickled = cloudpickle.dumps(exc, protocol=5)
    except Exception:
        pickled = None
    try:  # for an exception whose __init__ takes other arguments than its args
        state = cloudpickle.dumps(exception_state(exc), protocol=5)
    except Exception:
        state = None
    t = type(exc)
    return pickle.dumps(
        (pickled, f"{t.__module__}.{t.__qualname__}", _safe_str(exc), tb, function_name,
         state),
        protocol=5,
    )


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _from_user_code(tb: types.TracebackType | None) -> types.TracebackType | None:
    first = tb
    while first is not None and first.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        first = first.tb_next
    return first or tb


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def error_from_payload(payload: bytes) -> TaskError:
    """The :class:`TaskError` ``get`` raises for a payload made by :func:`error_payload`."""
    pickled, type_name, message, tb, function_name, state = pickle.loads(payload)
    cause = None
    if pickled is not None:
        try:
            cause = pickle.loads(pickled)
        except Exception:
            cause = None
    if cause is None and state is not None:  # its __init__ does not take its args
        try:
            cause = exception_from_state(pickle.loads(state))
        except Exception:
            cause = None
    if isinstance(cause, TaskError):  # a nested task's error re-raised: keep it whole
        return cause
    return TaskError.build(function_name, type_name, message, tb, cause)
