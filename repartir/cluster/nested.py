"""Refs nested inside the arguments of a task run on a cluster (docs/cluster.md, "Refs
inside arguments and results"), as in Ray: they are not resolved, the task gets
``ObjectRef`` s it can ``get``.

::

    driver: f.remote([ref_a, ref_b])
      pickling the arguments, each ClusterRef met is captured and pickled as a
      placeholder (nested_ref(object id)); the captured refs are resolved as top-level
      ones are: ready first, then for each an extra keyword argument
      "\\0nested:<id hex>" = RemoteArg (kept on a node: the task's node pulls it, the
      driver counts the borrow) or the value (kept in the driver)
    node: the puller brings the RemoteArgs here (local refs); remote_with_nested pops the
      extra keywords, puts the values in this node's store, and submits the task while
      each placeholder pickles as the local ref of its object: the task's worker gets a
      local ObjectRef, which it can get (or pass on) as on a local node

The objects stay alive while the task runs: on their node by the driver's borrow (as for a
top-level argument), here by the local runtime, which holds a task's nested refs while it
runs.  A task whose nested refs are not ready waits for them in the driver (deps.py), as
for top-level ones, and so does an actor call (actor_deps.py).  A nested ref whose task
failed travels as :class:`FailedArg`, and becomes a local ref whose
``get`` raises that error, as in Ray.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any, NamedTuple

from ..errors import RepartirError
from ..runtime import driver as local_driver
from ..ids import new_object_id
from ..runtime.objectref import ObjectRef
from ..runtime.protocol import FAILED
from .borrows import RemoteArg
from .wire import encode

__all__ = ["NestedRef", "nested_ref", "capture", "reduce_ref", "pickled_capturing",
           "remote_with_nested", "resolve_nested", "FailedArg", "PREFIX"]

#: The keyword of the extra argument that says where nested object ``<id hex>`` is.
PREFIX = "\0nested:"

_local = threading.local()


class FailedArg(NamedTuple):
    """A nested ref whose task failed, as it travels to the task's node."""

    error: BaseException


def _local_ref(value: Any) -> ObjectRef:
    """A ref of this node's runtime for a nested value that came with the task: the value
    ``put`` in the store, or for a :class:`FailedArg` an object whose ``get`` raises."""
    client = local_driver.client()
    if type(value) is not FailedArg:
        return client.put(value)
    oid = new_object_id()
    with client._lock:
        client.objects.own(oid, (FAILED, encode(value.error, 1 << 62)[0]), 0, None)
        return client.make_ref(oid)


class NestedRef:
    """A ref nested in a task's arguments, as the node daemon unpickles it: pickled again
    (when the node submits the task to its runtime) as the local ref bound to its id."""

    __slots__ = ("object_id",)

    def __init__(self, object_id: bytes) -> None:
        self.object_id = object_id

    def __reduce__(self):
        bound = getattr(_local, "bound", None)
        ref = bound.get(self.object_id) if bound else None
        if ref is not None:
            return ref.__reduce__()
        return (nested_ref, (self.object_id,))

    def __repr__(self) -> str:
        return f"NestedRef({self.object_id.hex()})"


def nested_ref(object_id: bytes) -> NestedRef:
    return NestedRef(object_id)


class capture:
    """Context manager: the ``ClusterRef`` s pickled in this thread meanwhile are collected
    (and pickled as placeholders) instead of refused."""

    def __enter__(self) -> list:
        self.prev = getattr(_local, "captured", None)
        _local.captured = []
        return _local.captured

    def __exit__(self, *exc: Any) -> None:
        _local.captured = self.prev


def reduce_ref(ref: Any) -> tuple | None:
    """``ClusterRef.__reduce__``: a placeholder while :class:`capture` is open, else
    ``None`` (the ref cannot be pickled)."""
    captured = getattr(_local, "captured", None)
    if captured is None:
        return None
    captured.append(ref)
    return (nested_ref, (ref._id,))


def pickled_capturing(value: Any) -> tuple[list, list]:
    """``value`` pickled (the pickle, then large buffers out of band) and the refs nested
    in it."""
    with capture() as refs:
        frames = encode(value)
    return [frames[0], *(pickle.PickleBuffer(f) for f in frames[1:])], refs


def remote_with_nested(rf: Any, args: list, kwargs: dict) -> Any:
    """``rf.remote(*args, **kwargs)`` on this node, the refs nested in the arguments bound
    to local refs (see the module's docstring)."""
    keys = [k for k in kwargs if k.startswith(PREFIX)] if kwargs else None
    if not keys:
        return rf.remote(*args, **kwargs)
    bound = {}
    for k in keys:
        v = kwargs.pop(k)
        bound[bytes.fromhex(k[len(PREFIX):])] = v if isinstance(v, ObjectRef) \
            else _local_ref(v)
    _local.bound = bound
    try:
        return rf.remote(*args, **kwargs)
    finally:
        _local.bound = None


def resolve_nested(c: Any, args: tuple, kwargs: dict, refs: list) -> tuple:
    """The driver's side: for the ``refs`` nested in a task's arguments (waiting for those
    not ready), the extra keyword arguments that say where each is, and the arguments
    pickled again with them.  Returns ``(kwargs, payload, borrowed)``: ``borrowed`` the
    ``(object id, node id)`` pairs the task borrows.  Called by ``ClusterClient.submit``
    without the lock.

    Raises:
        RepartirError: a ref of another cluster connection.
    """
    for r in refs:
        if getattr(r, "_cluster", None) is not c:
            raise RepartirError("an ObjectRef inside the arguments does not belong to the "
                                "cluster this driver is connected to")
    ids = list(dict.fromkeys(r._id for r in refs))
    c._wait_for(ids, None, len(ids))
    extra: dict[str, Any] = {}
    borrowed = []
    for oid in ids:
        with c._lock:
            res = c.results[oid]
            if res[0] == "error":
                extra[PREFIX + oid.hex()] = FailedArg(res[1])
                continue
            kept = c._kept_on(res)
            rec = c.nodes_seen.get(kept[0]) if kept is not None else None
            if rec is not None and rec["Alive"]:
                extra[PREFIX + oid.hex()] = RemoteArg(oid, kept[0], rec["NodeManagerAddress"],
                                                      kept[1], rec.get("CurveKey"))
                borrowed.append((oid, kept[0]))
                continue
        extra[PREFIX + oid.hex()] = c._get_one(oid, None)
    kwargs = {**kwargs, **extra}
    payload, _ = pickled_capturing((args, kwargs))
    return kwargs, payload, borrowed
