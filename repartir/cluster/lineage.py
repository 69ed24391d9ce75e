"""Lineage reconstruction of a cluster driver's objects (docs/cluster.md, "Failures").

A task's result larger than ``CLUSTER_INLINE_RESULT_BYTES`` stays on the node that made it.
When that node dies, the driver still has what it needs to make the result again: the task
itself (its function's key and pickled blob, its arguments pickled at ``.remote()``, its
resources and retries left), and, for an argument that was a result kept on the node the
task ran on (sent as a :class:`~.state.StoredArg`), that argument's own lineage.  So a lost
result is rebuilt by running its task again, recursively for its lost arguments, while the
task's ``max_retries`` allow (each rebuild counts one retry, as a resubmission does); else
its ref raises :class:`ObjectLostError` saying why.

::

    node N dies ─▶ ClusterClient._node_died ─▶ for each result kept on N:
                       rebuild(tid): lineage kept and a retry left?
                         no  ─▶ results[tid] = ObjectLostError(why)
                         yes ─▶ results[tid] removed (get waits), the task
                                ├─ without node-kept arguments: sent again (placed anew)
                                └─ with some (StoredArg): waiting ─▶ step(), each loop turn:
                                     an argument lost whose ref was dropped: rebuilt too
                                     an argument failed: the task fails with its error
                                     all on one live node that fits: sent there as is
                                     else: pulled into the driver, then sent by value
                                     no live node fits (its node is dead now): it waits
                                     up to REPARTIR_NODE_TIMEOUT for one (a node that
                                     comes back as a new incarnation), then fails

What is kept, and for how long (the limit): the lineage of a result kept on a node (its
task's pickled arguments; the function's blob is shared by its tasks) while the driver's ref
to it lives or while the lineage of a task that took it as a node-kept argument is kept.
Results that come back with their completion (the small ones), errors, and ``put`` values
live in the driver and need none.  All of it is bounded by ``CLUSTER_LINEAGE_BYTES`` of
pickled arguments (256 MiB): past it the oldest lineage is dropped, and those results, if
their node dies, raise ``ObjectLostError`` ("no lineage kept").  The returns of tasks of
several returns and the items of generators that had ended are rebuilt the same way, their
task run again once for all of them (lineage_returns.py).  Every method is called with the
client's lock held.
"""

from __future__ import annotations

import pickle
import time
from typing import Any

from ..config import CLUSTER_LINEAGE_BYTES
from ..errors import InfeasibleTaskError, ObjectLostError
from .borrows import RemoteArg, prefer_by_bytes
from .lineage_returns import ReturnSpec, ReturnsLineage
from .state import StoredArg
from .wire import encode


__all__ = ["Lineage"]

NO_LINEAGE = ("no lineage was kept for it (its ref was dropped, or its lineage was evicted "
              f"past CLUSTER_LINEAGE_BYTES = {CLUSTER_LINEAGE_BYTES >> 20} MiB)")


class _Spec:
    """The lineage of one result kept on a node: its task, whether the driver's ref to it
    lives, how many kept or running tasks took it as a node-kept argument."""

    __slots__ = ("task", "ref", "users", "nbytes")

    def __init__(self, task: Any, ref: bool, nbytes: int) -> None:
        self.task, self.ref, self.users, self.nbytes = task, ref, 0, nbytes


class Lineage(ReturnsLineage):
    """The lineage a :class:`~.client.ClusterClient` keeps (see the module's docstring;
    the returns of tasks of several returns: lineage_returns.py).

    Attributes:
        specs: ``{object id: _Spec}``, results kept on nodes that can be rebuilt.
        deps: ``{task id: (object id, ...)}``, the node-kept arguments of a task in flight or
            of a kept result.
        waiting: ``{task id: _Task}``, tasks being rebuilt that wait for their arguments.
        nbytes: bytes of pickled arguments kept (at most ``CLUSTER_LINEAGE_BYTES``).
        evicted: lineages dropped so far to stay under that bound.
        rebuilt: tasks run again so far to rebuild a lost result.
    """

    def __init__(self, client: Any, max_bytes: int = CLUSTER_LINEAGE_BYTES) -> None:
        self.c = client
        self.max_bytes = max_bytes
        self.specs: dict[bytes, _Spec] = {}
        self.deps: dict[bytes, tuple[bytes, ...]] = {}
        self.waiting: dict[bytes, Any] = {}
        self.unplaced: dict[bytes, float] = {}  # waiting for a node that fits: until when
        # the error a task that no node fitted in time fails with, if not ObjectLostError:
        # {task id: (why) -> error}, a retry or a new task waiting for a node (unplaced.py)
        self.fails_as: dict[bytes, Any] = {}
        self.nbytes = 0
        self.evicted = 0
        self.rebuilt = 0
        self._init_groups()

    # ------------------------------------------------------------------ bookkeeping

    def submitted(self, tid: bytes, args: tuple, kwargs: dict) -> None:
        """Task ``tid`` was sent with these (resolved) arguments: its node-kept ones are
        its dependencies, whose lineage it holds."""
        deps = tuple(a.object_id for a in (*args, *kwargs.values())
                     if type(a) is StoredArg or type(a) is RemoteArg)
        if deps:
            self.deps[tid] = deps
            for d in deps:
                spec = self.specs.get(d)
                if spec is not None:
                    spec.users += 1

    def done(self, tid: bytes, what: str, task: Any, ref_alive: bool) -> None:
        """Task ``tid`` finished: ``what`` is ``"stored"`` (kept on its node), ``"value"``
        or ``"error"``."""
        spec = self.specs.get(tid)
        if what == "stored" and (spec is not None or ref_alive):
            if spec is None:
                nbytes = sum(memoryview(f).nbytes for f in task.payload)
                spec = self.specs[tid] = _Spec(task, ref_alive, nbytes)
                self.nbytes += nbytes
                if self.nbytes > self.max_bytes:
                    self._evict()
            elif not spec.ref and spec.users <= 0:  # rebuilt for tasks that no longer need it
                self._drop(tid, release=False)
                self.c._dropped.add(tid)  # so the client releases it on its node
        elif spec is None:
            for d in self.deps.pop(tid, ()):
                self._unuse(d)

    def ref_dropped(self, tid: bytes) -> None:
        """The driver dropped its ref to ``tid``."""
        spec = self.specs.get(tid)
        if spec is None:
            return
        spec.ref = False
        if spec.users <= 0:
            self._drop(tid, release=False)
        else:  # tasks being rebuilt may need it: keep its result when it comes
            self.c._dropped.discard(tid)

    def _unuse(self, oid: bytes) -> None:
        spec = self.specs.get(oid)
        if spec is not None:
            spec.users -= 1
            if spec.users <= 0 and not spec.ref:
                self._drop(oid, release=True)

    def _drop(self, oid: bytes, release: bool) -> None:
        spec = self.specs.pop(oid, None)
        if spec is None:
            return
        self.nbytes -= spec.nbytes
        for d in self.deps.pop(oid, ()):
            self._unuse(d)
        if release and oid in self.c.results:
            self.c.dead.append(oid)  # rebuilt for others only: released as a dropped ref
        if type(spec) is ReturnSpec:
            self._return_dropped(oid, spec)

    def _evict(self) -> None:
        for oid in list(self.specs):
            if self.nbytes <= self.max_bytes:
                return
            spec = self.specs[oid]
            if oid in self.c.inflight or getattr(spec, "tid", oid) in self.c.inflight:
                continue
            self._drop(oid, release=not spec.ref)
            self.evicted += 1

    # ------------------------------------------------------------------ rebuilding

    def rebuild(self, tid: bytes) -> str | None:
        """The result ``tid`` was lost with its node: start running its task again, and
        return ``None``; or return why it cannot be rebuilt."""
        spec = self.specs.get(tid)
        if spec is None:
            return self.c.returns.lost(tid)  # NO_LINEAGE, or an item (returns.py)
        return self._again(tid, spec)  # a return of several: lineage_returns.py

    def _start(self, tid: bytes, task: Any) -> str | None:
        c = self.c
        if c._failed is not None:
            return "the cluster is gone (its head stopped answering)"
        if task.retries <= 0:
            return ("its task's max_retries are used up (each rebuild or resubmission "
                    "counts one; raise max_retries to rebuild more often)")
        task.retries -= 1
        c.results.pop(tid, None)
        self.rebuilt += 1
        if self.deps.get(tid):
            self.wait(tid, task)
            return None
        try:
            c._enqueue(tid, task, None)
        except InfeasibleTaskError:  # its node is dead now: wait for one (step)
            self.wait(tid, task)
        return None

    def wait(self, tid: bytes, task: Any) -> None:
        """Task ``tid`` (in flight on a node that died, or being rebuilt) has node-kept
        arguments: it waits in :attr:`waiting` until :meth:`step` can send it again."""
        task.node = ""
        self.c.inflight[tid] = task
        self.waiting[tid] = task

    def step(self) -> None:
        """Send the waiting tasks whose arguments are back (see the module's docstring)."""
        c = self.c
        for tid, task in list(self.waiting.items()):
            if c.inflight.get(tid) is not task:  # failed meanwhile (the client broke)
                del self.waiting[tid]
                continue
            deps = self.deps.get(tid, ())
            ready, error, where = True, None, {}
            for d in deps:
                res = c.results.get(d)
                if res is None:
                    if d in c.inflight:
                        ready = False
                        continue
                    spec = self.specs.get(d)
                    why = NO_LINEAGE if spec is None else self._again(d, spec)
                    if why is not None:
                        error = ObjectLostError(f"argument {d.hex()} of task {tid.hex()} was "
                                                f"lost and cannot be rebuilt: {why}")
                        break
                    ready = False
                elif res[0] == "error":
                    error = res[1]
                    break
                elif res[0] == "stored":
                    if res[1] not in c._eps:
                        ready = False
                    where[d] = (res[1], res[2])
            if error is not None:
                self._fail(tid, task, error)
                continue
            if not ready or not self._placeable(tid, task):
                continue
            holdings: dict[str, int] = {}
            for d, (nid, size) in where.items():
                holdings[nid] = holdings.get(nid, 0) + size
            target = prefer_by_bytes(holdings, lambda n: c._fits_on(task.demand, n))
            subst: dict[bytes, Any] = {}
            borrowed = []
            for d in deps:
                if d in where and where[d][0] == target:
                    subst[d] = StoredArg(d)
                elif d in where:
                    nid, size = where[d]
                    subst[d] = RemoteArg(d, nid, c.nodes_seen[nid]["NodeManagerAddress"], size)
                    borrowed.append((d, nid))
                else:
                    subst[d] = c.results[d][1]  # a value in the driver (put, small, pulled)
            if subst:  # (none: a retry waiting for a node, its payload as it was)
                task.payload = _repickle(task.payload, subst)
            kept = tuple(d for d in deps if d in where)
            if kept:
                self.deps[tid] = kept
            else:  # none on a node: its node's death resubmits it as any task's (unplaced.py)
                self.deps.pop(tid, None)
            for d in deps:
                if d not in where:
                    self._unuse(d)
            del self.waiting[tid]
            del c.inflight[tid]
            try:
                c._enqueue(tid, task, target)
            except InfeasibleTaskError as exc:
                self._fail(tid, task, ObjectLostError(
                    f"task {tid.hex()} cannot be run again: {exc}"))
                continue
            if borrowed:
                c.borrows.borrow(tid, borrowed)
        c._cv.notify_all()

    def _placeable(self, tid: bytes, task: Any) -> bool:
        """Whether a live node fits task ``tid`` now.  None does (the one that did is dead
        now, and may come back as a new incarnation): the task waits up to
        ``REPARTIR_NODE_TIMEOUT`` for one, then fails."""
        c = self.c
        try:
            c._fitting(task.demand)
        except InfeasibleTaskError as exc:
            until = self.unplaced.setdefault(tid, time.monotonic() + c.timeout)
            if time.monotonic() >= until:
                why = f"no live node fitted it for {c.timeout:g} s (REPARTIR_NODE_TIMEOUT): {exc}"
                make = self.fails_as.get(tid)
                self._fail(tid, task, make(why) if make is not None else ObjectLostError(
                    f"task {tid.hex()} cannot be run again (to rebuild its result, or "
                    f"its retry): {why}"))
            return False
        self.unplaced.pop(tid, None)
        self.fails_as.pop(tid, None)
        return True

    def _fail(self, tid: bytes, task: Any, error: BaseException) -> None:
        c = self.c
        self.unplaced.pop(tid, None)
        self.fails_as.pop(tid, None)
        self.waiting.pop(tid, None)
        c.inflight.pop(tid, None)
        c._due.extend(c.borrows.task_ended(tid))
        ref_alive = tid not in c._dropped
        c._dropped.discard(tid)
        self.done(tid, "error", task, ref_alive)
        spec = self.specs.get(tid)
        if ref_alive:
            c.results[tid] = ("error", error)
        elif spec is not None and spec.users <= 0:
            self._drop(tid, release=False)


def _repickle(payload: list, subst: dict[bytes, Any]) -> list:
    """A task's pickled ``(args, kwargs)`` with its node-kept arguments (``StoredArg``,
    ``RemoteArg``) replaced as ``subst`` says (object id -> what to send now)."""
    args, kwargs = pickle.loads(payload[0], buffers=payload[1:])

    def sub(a: Any) -> Any:
        if (type(a) is StoredArg or type(a) is RemoteArg) and a.object_id in subst:
            return subst[a.object_id]
        return a

    frames = encode((tuple(sub(a) for a in args), {k: sub(v) for k, v in kwargs.items()}))
    return [frames[0], *(pickle.PickleBuffer(f) for f in frames[1:])]
