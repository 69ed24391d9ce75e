"""Tasks of a cluster driver whose ref arguments are not ready yet (docs/cluster.md,
"Dependent tasks"): ``.remote()`` returns their ref at once, as in Ray, and the task waits
in the driver until its last argument is ready; then the driver's loop thread places it
and sends it, from the completion, without a round trip to the caller's thread.

::

    f.remote(a, b)  a not ready ─▶ Deps.defer: the arguments pickled now (an unpicklable
                                   one raises at once), each ref as a placeholder; the task
                                   waits in ``waiting`` (and in the client's ``inflight``,
                                   on no node), its pending refs in ``by_object``
    a completes ─▶ loop thread ─▶ Deps.step: every task whose arguments are all ready:
        an argument failed ─▶ the task fails with that error (its ref raises it at get),
                              and so, in turn, the tasks that wait for it
        else ─▶ placed as any task with ready arguments (the node that keeps the most
                argument bytes, if it fits there): each placeholder becomes a StoredArg
                (kept there), a RemoteArg (kept on another node) or the value kept in
                the driver, and the task is sent with the next batch; the objects kept
                on nodes are borrowed by the task (borrows.py) until it ends

The task holds its argument refs until it is sent, then its borrows keep the objects on
their nodes until it ends (so the caller may drop them); a task
whose own ref is dropped while it waits still runs (its result is released when it comes),
as in Ray.  Every method but :meth:`defer` is called with the client's lock held.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, NamedTuple

from ..errors import InfeasibleTaskError, NodeDiedError, RepartirError
from ..runtime.objectref import ObjectRef
from .borrows import RemoteArg, prefer_by_bytes
from .nested import PREFIX, FailedArg, pickled_capturing
from .state import StoredArg
from .unplaced import enqueue_or_wait, fitted_before
from .wire import encode

__all__ = ["Deps"]


class _Pending(NamedTuple):
    """The placeholder of a ref argument in a waiting task's pickled arguments."""

    object_id: bytes


class _Waiting:
    """A waiting task: the refs it holds (its top-level ref arguments, then the refs nested
    in its arguments), how many of them are top-level, the ids not ready yet."""

    __slots__ = ("task", "refs", "top", "left")

    def __init__(self, task: Any, refs: list, top: int, left: set) -> None:
        self.task, self.refs, self.top, self.left = task, refs, top, left


def _pickled(value: Any) -> list:
    frames = encode(value)
    return [frames[0], *(pickle.PickleBuffer(f) for f in frames[1:])]


class Deps:
    """The dependency table of a :class:`~.client.ClusterClient` (see the module's
    docstring).

    Attributes:
        waiting: ``{task id: _Waiting}``, the tasks waiting for their arguments.
        by_object: ``{object id: {task id, ...}}``, the waiting tasks of each pending ref.
        released: tasks sent so far after waiting.
    """

    def __init__(self, client: Any, ref_type: type, task_type: type) -> None:
        self.c = client
        self.ref_type, self.task_type = ref_type, task_type
        self.waiting: dict[bytes, _Waiting] = {}
        self.by_object: dict[bytes, set[bytes]] = {}
        self.released = 0

    def defer(self, key: Any, blob: bytes, demand: dict, retries: int, args: tuple,
              kwargs: dict, nret: int = 1, name: str = "", nested: list | None = None):
        """``.remote()`` with ref arguments (top-level ones, or ``nested`` in other values):
        ``None`` if they are all ready (the caller sends the task as usual), else a 1-tuple
        of what ``.remote()`` returns (a ref; for ``nret`` other than 1 what returns.py
        makes) for a new task that waits here.  Called without the lock.

        Raises:
            RepartirError: a ref of another cluster connection.
            InfeasibleTaskError: no node of the cluster fits ``demand``.
            SerializationError: an argument cannot be pickled.
            NodeDiedError: the cluster is gone.
        """
        c = self.c
        refs = [a for a in (*args, *kwargs.values()) if isinstance(a, ObjectRef)]
        for r in (*refs, *(nested or ())):
            if getattr(r, "_cluster", None) is not c:
                raise RepartirError("an ObjectRef among the arguments does not belong to the "
                                    "cluster this driver is connected to")
        with c._lock:
            if all(r._id in c.results for r in refs) and \
                    all(r._id in c.results for r in nested or ()):
                return None
            try:
                c._fitting(demand)  # an infeasible task raises now, as a ready one does
            except InfeasibleTaskError:
                if not fitted_before(c, demand):  # else it may come back (unplaced.py)
                    raise

        def sub(a: Any) -> Any:
            return _Pending(a._id) if isinstance(a, ObjectRef) else a

        payload, inner = pickled_capturing((tuple(sub(a) for a in args),
                                            {k: sub(v) for k, v in kwargs.items()}))
        for r in inner:
            if getattr(r, "_cluster", None) is not c:
                raise RepartirError("an ObjectRef inside the arguments does not belong to "
                                    "the cluster this driver is connected to")
        task = self.task_type(key, blob, payload, demand, retries)
        tid = os.urandom(16)
        with c._lock:
            if c._failed is not None:
                raise NodeDiedError(c._failed)
            held = refs + inner
            left = {r._id for r in held if r._id not in c.results}
            c.inflight[tid] = task  # on no node yet: task.node == ""
            self.waiting[tid] = _Waiting(task, held, len(refs), left)
            for oid in left or (held[0]._id,):  # all ready meanwhile: the loop sends it
                self.by_object.setdefault(oid, set()).add(tid)
            if nret != 1:
                return (c.returns.refs_locked(tid, nret, name),)
        return (self.ref_type(tid, c),)

    def step(self) -> None:
        """Send (or fail) the waiting tasks whose arguments are all ready, and in turn
        those that waited for the ones that failed."""
        c = self.c
        while True:
            ready = []
            for oid in [o for o in self.by_object if o in c.results]:
                for tid in self.by_object.pop(oid):
                    w = self.waiting.get(tid)
                    if w is None:
                        continue
                    w.left.discard(oid)
                    if not w.left:
                        ready.append(tid)
            if not ready:
                return
            for tid in ready:
                self._release(tid)
            c._cv.notify_all()

    def _release(self, tid: bytes) -> None:
        c = self.c
        w = self.waiting.get(tid)
        if w is None:
            return
        task = w.task
        if c.inflight.get(tid) is not task:  # failed meanwhile (the client broke)
            del self.waiting[tid]
            return
        holdings: dict[str, int] = {}
        kept: dict[bytes, tuple[str, int]] = {}
        for i, r in enumerate(w.refs):
            res = c.results.get(r._id)
            if res is None or (res[0] == "stored" and res[1] not in c._eps):
                w.left.add(r._id)  # lost since (being rebuilt): wait for it again
                self.by_object.setdefault(r._id, set()).add(tid)
                continue
            if res[0] == "error":
                if i < w.top:  # a nested one reaches the task as a ref that raises it
                    self.fail(tid, res[1])
                    return
                continue
            where = c._kept_on(res)
            if where is not None and c.nodes_seen.get(where[0], {}).get("Alive"):
                kept[r._id] = where
                if i < w.top:
                    holdings[where[0]] = holdings.get(where[0], 0) + where[1]
        if w.left:
            return
        if c._failed is not None:  # the head is gone: no node takes tasks any more
            self.fail(tid, NodeDiedError(c._failed))
            return
        prefer = prefer_by_bytes(holdings, lambda n: c._fits_on(task.demand, n))
        subst: dict[bytes, Any] = {}
        extra: dict[str, Any] = {}
        borrowed = []
        for i, r in enumerate(w.refs):
            oid = r._id
            if i >= w.top:  # nested (nested.py): a RemoteArg even when kept on its node
                res = c.results[oid]
                if res[0] == "error":
                    extra[PREFIX + oid.hex()] = FailedArg(res[1])
                elif oid in kept:
                    nid, size = kept[oid]
                    rec = c.nodes_seen[nid]
                    extra[PREFIX + oid.hex()] = RemoteArg(oid, nid, rec["NodeManagerAddress"],
                                                          size, rec.get("CurveKey"))
                    borrowed.append((oid, nid))
                else:
                    extra[PREFIX + oid.hex()] = res[1]
            elif oid in kept and kept[oid][0] == prefer:
                subst[oid] = StoredArg(oid)
                borrowed.append((oid, prefer))  # its node keeps it until the task ends,
                # though this ref goes now (the task may wait in the node's queue)
            elif oid in kept:
                nid, size = kept[oid]
                rec = c.nodes_seen[nid]
                subst[oid] = RemoteArg(oid, nid, rec["NodeManagerAddress"], size,
                                       rec.get("CurveKey"))
                borrowed.append((oid, nid))
            else:  # a value in the driver (put, small, pulled): large ones go once per
                subst[oid] = c.dvals.arg(oid, c.results[oid]) or c.results[oid][1]  # node
        task.payload = _substituted(task.payload, subst, extra)
        task.dvals = c.dvals.frames_of(subst.values())  # (driver_values.py)
        del self.waiting[tid]
        del c.inflight[tid]
        if prefer is not None or borrowed:
            c._lineage.submitted(tid, (*subst.values(), *extra.values()), {})
        try:
            enqueue_or_wait(c, tid, task, prefer)  # or waits for one to come (unplaced.py)
        except InfeasibleTaskError as exc:  # the nodes that fit it are gone
            c.inflight[tid] = task
            self.waiting[tid] = w
            self.fail(tid, exc)
            return
        if borrowed:
            c.borrows.borrow(tid, borrowed)
        w.refs = []  # sent: the task no longer holds its arguments' refs
        self.released += 1

    def fail(self, tid: bytes, error: BaseException) -> None:
        """Task ``tid`` cannot run: its ref raises ``error``."""
        c = self.c
        w = self.waiting.pop(tid)
        w.refs = []
        c.inflight.pop(tid, None)
        for oid in w.left:
            tids = self.by_object.get(oid)
            if tids is not None:
                tids.discard(tid)
                if not tids:
                    del self.by_object[oid]
        settle_error(c, tid, error)


def settle_error(c: Any, tid: bytes, error: BaseException) -> None:
    """The error of task ``tid``, which never reached a node, for whoever waits on it: its
    returns' refs (several returns, a generator: returns.py), else its ref, unless the
    driver dropped that ref. Call with ``c``'s lock held."""
    if tid in c.returns.tasks:
        c.returns.done_locked_error(tid, ("error", error))
    elif tid in c._dropped:  # its ref is gone: nobody will ask
        c._dropped.discard(tid)
    else:
        c.results[tid] = ("error", error)


def _substituted(payload: list, subst: dict[bytes, Any], extra: dict[str, Any]) -> list:
    """A waiting task's pickled ``(args, kwargs)`` with each placeholder replaced as
    ``subst`` says (object id -> what to send), and the keyword arguments ``extra`` that
    say where its nested refs are (nested.py)."""
    args, kwargs = pickle.loads(payload[0], buffers=payload[1:])

    def sub(a: Any) -> Any:
        return subst[a.object_id] if type(a) is _Pending else a

    return _pickled((tuple(sub(a) for a in args),
                     {**{k: sub(v) for k, v in kwargs.items()}, **extra}))
