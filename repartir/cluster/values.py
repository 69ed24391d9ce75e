"""Values of a driver connected to a cluster behave as in local mode and in Ray
(docs/cluster.md, "Values: copies, as locally"):

- an argument is captured at ``.remote()``: its pickle and a copy of each large buffer (a
  numpy array's data), not a view that the driver's loop thread sends later, so a change
  made to the argument after ``.remote()`` never travels (nor spoils the message's MAC);
- ``put`` pickles its value at once (an unpicklable one raises there, as locally) and keeps
  a private copy: later changes to the value do not show;
- each ``get`` of a value kept in the driver (a small result, a ``put`` value, a pulled
  one) gives a fresh copy, as each local ``get`` unpickles its own; immutable builtins are
  returned as they are (no copy to make), a numpy array as a read-only view of the
  driver's copy (local mode gives read-only zero-copy arrays too), and the refs, actor
  handles and ref generators inside a value are the same objects in each copy;
- an argument that cannot be pickled is named in the error, as locally.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
import threading
from typing import Any, Iterator, Sequence

import cloudpickle

from ..config import WIRE_INBAND_BYTES
from ..errors import SerializationError
from ..runtime.actor import ActorHandle
from ..runtime.objectref import ObjectRef
from ..runtime.streaming import ObjectRefGenerator
from .wire import encode

__all__ = ["owned", "private_copy", "fresh", "argument_error", "naming_arguments"]

#: Types whose values cannot change: ``get`` returns them without a copy.
_IMMUTABLE = frozenset({int, float, bool, complex, str, bytes, type(None), range, type(...),
                        frozenset})
#: Handles, not values: a copy keeps them as they are.
_HANDLES = (ObjectRef, ActorHandle, ObjectRefGenerator)
#: A tuple of at most this many immutable items is returned as is; a longer one is copied
#: (looking through it would cost about as much).
_TUPLE_SCAN = 64


def owned(payload: list | None) -> list | None:
    """``payload`` (frame 0 a pickle, then out-of-band buffers) with each buffer copied into
    bytes of its own: a buffer that is a view of the caller's array would send whatever
    the array holds when the loop thread sends it."""
    if payload is None or len(payload) < 2:
        return payload
    return [payload[0], *(f if type(f) is bytes else bytes(f) for f in payload[1:])]


def private_copy(value: Any) -> Any:
    """A copy of ``value`` that shares no memory with it (``put``): pickled now, so an
    unpicklable value raises here.

    Raises:
        SerializationError: ``value`` cannot be pickled; the message says so as local
            mode's ``put`` does.
    """
    if type(value) in _IMMUTABLE:
        return value
    try:
        return _copy(value, out_of_band=True)
    except Exception as exc:
        raise SerializationError(
            f"the value passed to put() cannot be serialized: {exc}. Pass something "
            f"picklable") from exc


def _immutable(value: Any) -> bool:
    t = type(value)
    if t in _IMMUTABLE:
        return True
    return t is tuple and len(value) <= _TUPLE_SCAN and all(type(v) in _IMMUTABLE
                                                             for v in value)


def fresh(value: Any) -> Any:
    """What a ``get`` of a value kept in the driver returns: the value itself when it cannot
    change, a read-only view of a numpy array, else a copy (pickled and unpickled)."""
    if _immutable(value):
        return value
    np = sys.modules.get("numpy")
    if np is not None and type(value) is np.ndarray and value.dtype != object:
        view = value.view()
        view.flags.writeable = False
        return view
    return _copy(value)


class _Plain(pickle.Pickler):
    """Pickles refs, actor handles and ref generators as themselves (an index into
    ``kept``): they are handles, not values, and pickling one has effects (an actor
    handle lends a hold)."""

    kept: list

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _HANDLES):
            self.kept.append(obj)
            return _kept, (len(self.kept) - 1,)
        return NotImplemented


class _Cloud(cloudpickle.CloudPickler):
    """:class:`_Plain` for values that only cloudpickle pickles (a class made by a task)."""

    kept: list

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _HANDLES):
            self.kept.append(obj)
            return _kept, (len(self.kept) - 1,)
        return super().reducer_override(obj)


_local = threading.local()


def _kept(i: int) -> Any:
    return _local.kept[i]


def _copy(value: Any, out_of_band: bool = False) -> Any:
    """``value`` pickled and unpickled (plain pickle, else cloudpickle), its refs and
    handles kept as they are.  ``out_of_band``: large contiguous buffers (a numpy array's
    data) are copied once into bytes, and come back read-only.

    Raises:
        Exception: what cloudpickle raises for a value it cannot pickle.
    """
    for kind in (_Plain, _Cloud):
        f = io.BytesIO()
        bufs: list = []

        def keep(pb: pickle.PickleBuffer) -> bool:
            try:
                raw = pb.raw()
            except BufferError:  # not contiguous: in-band
                return True
            if raw.nbytes < WIRE_INBAND_BYTES:
                return True
            bufs.append(bytes(raw))
            return False

        p = kind(f, protocol=5, buffer_callback=keep if out_of_band else None)
        p.kept = []
        try:
            p.dump(value)
        except Exception:
            if kind is _Cloud:
                raise
            continue
        _local.kept = p.kept
        try:
            return pickle.loads(f.getbuffer(), buffers=bufs)
        finally:
            _local.kept = None
    raise AssertionError("unreachable")


def argument_error(name: str, args: Sequence, kwargs: dict,
                   exc: SerializationError) -> SerializationError:
    """The error of arguments of ``name`` that cannot be pickled, naming the first argument
    that fails, as in local mode."""
    for i, a in enumerate(args):
        if isinstance(a, ObjectRef):  # a ref travels as a placeholder, never pickled
            continue
        try:
            encode(a)
        except SerializationError as e:
            return SerializationError(
                f"argument {i} of {name}() ({type(a).__qualname__}) cannot be serialized: "
                f"{e.__cause__ or e}. Pass something picklable, or create it inside the task.")
    for k, a in kwargs.items():
        if isinstance(a, ObjectRef):
            continue
        try:
            encode(a)
        except SerializationError as e:
            return SerializationError(
                f"keyword argument {k!r} of {name}() ({type(a).__qualname__}) cannot be "
                f"serialized: {e.__cause__ or e}. Pass something picklable, or create it "
                f"inside the task.")
    return SerializationError(f"the arguments of {name}() cannot be serialized: "
                              f"{exc.__cause__ or exc}")


@contextlib.contextmanager
def naming_arguments(name: str, args: Sequence, kwargs: dict) -> Iterator[None]:
    """Pickling the arguments of ``name`` in the block: a :class:`SerializationError` comes
    out as :func:`argument_error` (naming the argument)."""
    try:
        yield
    except SerializationError as exc:
        raise argument_error(name, args, kwargs, exc) from exc.__cause__
