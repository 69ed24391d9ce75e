"""Refs inside the results of tasks run on a cluster (docs/cluster.md, "Refs inside
arguments and results"): a task (or generator item) that returns ``ObjectRef`` s of its
node -- the refs it got nested in its arguments, objects it ``put``, tasks it submitted there
-- gives its driver refs it can ``get``, pass on and drop, as in Ray.

::

    node: the result holds local refs ─▶ export_refs: each local ref becomes a placeholder
          result_ref(its id, this node); the daemon watches it as a task of its own
          (pending[id]) and sends its completion, ("done", [(id, what, payload)]), once
          ready: small inline, large kept here under that id; the result itself travels
          inline (whatever its size), pickled with the placeholders
    driver: unpickling the result, each placeholder becomes a ClusterRef of that id, noted
          in Returns.nested_in; its completion fills it as a task's would.  Dropped before
          its completion came: released when it comes.  Its node died first: ObjectLostError.

A result without refs is untouched (one more pickling pass over it finds that out: cheap,
out-of-band buffers are not copied).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import cloudpickle

from ..runtime import context
from ..runtime.objectref import ObjectRef

__all__ = ["export_refs", "WithRefs", "result_ref", "SIMPLE"]

#: Types a result of which cannot hold a ref: no pass over them.
SIMPLE = frozenset({int, float, str, bytes, bool, type(None), complex})


class _Finder(cloudpickle.CloudPickler):
    """Pickles a value, each local ``ObjectRef`` as a :func:`result_ref` placeholder."""

    def __init__(self, file: Any, node_id: str, found: list, **kw: Any) -> None:
        super().__init__(file, protocol=5, **kw)
        self.node_id, self.found = node_id, found

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, ObjectRef):
            self.found.append(obj)
            return result_ref, (obj._id, self.node_id)
        return super().reducer_override(obj)


class WithRefs:
    """A result that holds refs, pickled with their placeholders (travels as that pickle,
    unpickled by the driver)."""

    __slots__ = ("data", "buffers")

    def __init__(self, data: bytes, buffers: list) -> None:
        self.data, self.buffers = data, buffers

    def __reduce__(self):
        return _loads, (self.data, self.buffers)


def _loads(data: bytes, buffers: list) -> Any:
    return pickle.loads(data, buffers=buffers)


def export_refs(d: Any, peer: bytes, value: Any) -> Any:
    """``value`` as it should travel from node daemon ``d`` to its driver ``peer``: itself
    when it holds no ``ObjectRef``, else a :class:`WithRefs` (and each ref is watched: the
    driver gets its completion)."""
    if type(value) in SIMPLE:
        return value
    found: list = []
    buffers: list = []
    f = io.BytesIO()
    def out_of_band(b: pickle.PickleBuffer) -> bool:
        try:
            b.raw()
        except BufferError:  # not contiguous: in the pickle
            return True
        buffers.append(b)
        return False

    try:
        _Finder(f, d.node_id, found, buffer_callback=out_of_band).dump(value)
    except Exception:  # noqa: BLE001 -- encode raises the error that says why
        return value
    if not found:
        return value
    for ref in found:
        if ref._id not in d.pending:
            d.pending[ref._id] = (peer, ref)
            done = d.done
            ref.future().add_done_callback(
                lambda fut, oid=ref._id: done.append((peer, oid, fut)))
    return WithRefs(f.getvalue(), buffers)


def result_ref(object_id: bytes, node_id: str) -> Any:
    """A placeholder unpickled: in a driver connected to a cluster, its ``ClusterRef``."""
    c = context.cluster
    if c is None:
        raise pickle.UnpicklingError(
            f"a ref kept on node {node_id[:12]} can be unpickled only in a driver connected "
            f"to its cluster")
    c.returns.nested_in.append((object_id, node_id))
    return c.returns.ref_class(object_id, c)
