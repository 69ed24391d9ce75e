"""Several returns, generators, cancel and futures in a driver connected to a cluster
(docs/cluster.md, "Returns, generators, cancel"): a part of
:class:`~.client.ClusterClient`, whose lock and tables it shares.

- **``num_returns=k``**, ``k >= 2`` (also a generator that yields exactly ``k`` items):
  ``.remote()`` returns ``k`` refs whose ids derive from the task's (:func:`return_id`).  The
  node sends them with one completion, ``(task id, "returns", [(what, payload) x k])``, each
  small one inline and each larger one kept on the node under its own id, so each is pulled
  and released on its own (its ref dropped: ``release``), exactly as a single result.
- **``num_returns=0``**: ``.remote()`` returns ``None``; the node runs the task as one of one
  return and the driver drops the result (an error is logged by the ``repartir`` logger, as
  locally).
- **Generators** (``num_returns="streaming"``, a generator function's default):
  ``.remote()`` returns a :class:`ClusterRefGenerator`.  The node sends each item as its
  generator yields it (``("items", [(task id, index, what, payload), ...])``), the driver
  hands out its ref at once; an error raised by the generator is one more item, the last,
  whose ``get`` raises it; the completion ``(task id, "stream_end", count)`` ends it.  A
  generator dropped before its end releases the items it did not hand out, and those that
  arrive later, on their node.
- **Cancel**: a task not sent yet is dropped in the driver; one sent is cancelled by its node
  (``("cancel", task id, force, recursive)``: removed from its queue, or stopped by the
  node's runtime as ``repartir.cancel`` does locally), and a task stolen meanwhile by its
  thief (the driver sends it again on ``moved``).  Its refs raise ``TaskCancelledError``;
  a finished task is left alone.
- **Futures**: ``ref.future()`` (and ``await ref``) is resolved by one thread of the driver,
  started while futures wait, that pulls kept results as ``get`` does.

Returns of several and generator items kept on a node that dies are rebuilt by running
their task again (lineage_returns.py: :meth:`Returns.run_again_locked`, the ``again``
stream); the items of a generator that had not ended and cannot run again raise
``ObjectLostError`` saying so (:data:`NOT_REBUILT`).  Every method named ``*_locked`` is
called with the client's lock held.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import threading
import time
import weakref
from typing import Any

from ..errors import ObjectLostError, RepartirError, TaskCancelledError
from ..runtime.objectref import ObjectRef
from ..runtime.streaming import ObjectRefGenerator
from .lineage import NO_LINEAGE
from .lineage_returns import AGAIN

__all__ = ["Returns", "ClusterRefGenerator", "return_id", "NOT_REBUILT"]

NOT_REBUILT = ("it is an item of a generator that had not ended, and its task cannot run "
               "again (no retry left): such items are not rebuilt from lineage")

_log = logging.getLogger("repartir")


def return_id(tid: bytes, index: int) -> bytes:
    """The object id of return (or generator item) ``index`` of task ``tid``: 16 bytes,
    the same in the driver and on the node (BLAKE2b of the task id and the index)."""
    return hashlib.blake2b(tid + index.to_bytes(8, "little"), digest_size=16).digest()


class _Stream:
    """What the driver knows of a generator task: items arrived, handed out, its end."""

    __slots__ = ("tid", "arrived", "handed", "end", "gen", "name", "lost", "again", "kept")

    def __init__(self, tid: bytes, name: str) -> None:
        self.tid, self.name = tid, name
        self.arrived: set[int] = set()  # indexes whose result is in the client's results
        self.handed = 0  # refs handed out by the generator (items 0 .. handed - 1)
        self.end: int | None = None  # the item count, once the task ended
        self.gen: Any = None  # weakref to the ClusterRefGenerator (None: dropped)
        self.lost: set[int] = set()  # items lost with their node, which its rerun yields
        self.again = False  # ended, and run again to rebuild lost items (lineage_returns.py)
        self.kept: set[int] = set()  # indexes of the items that came kept on a node


class ClusterRefGenerator(ObjectRefGenerator):
    """The ``ObjectRefGenerator`` of a generator task run on a cluster: ``next()`` (or
    ``async for``) gives the ref of each item as soon as the node has sent it, in order;
    the last one raises the generator's error, if it raised.  ``completed()`` tells whether
    the task ended.  Dropping it releases the items not handed out."""

    def __init__(self, client: Any, stream: _Stream, make_ref: Any) -> None:
        self._client = client
        self._stream = stream
        self._make_ref = make_ref
        self._task_id = stream.tid

    def completed(self) -> bool:
        return self._stream.end is not None

    def _take(self):
        c, st = self._client, self._stream
        with c._lock:
            if st.handed in st.arrived:
                st.handed += 1
                return self._make_ref(return_id(st.tid, st.handed - 1), c)
            if st.end is not None and st.handed >= st.end:
                raise StopIteration
        return None

    def __del__(self) -> None:
        try:
            self._client.dead_streams.append(self._stream.tid)
        except AttributeError:
            pass

    def __reduce__(self):
        raise RepartirError("an ObjectRefGenerator cannot be passed to a task (as in Ray): "
                            "pass the refs it gives, one by one")

    def __repr__(self) -> str:
        st = self._stream
        return f"ClusterRefGenerator(done={st.end is not None}, handed={st.handed})"


class Returns:
    """The driver's state for several returns, generators, cancels and futures (see the
    module's docstring).

    Attributes:
        tasks: ``{task id: spec}`` of tasks in flight with ``num_returns`` other than 1:
            ``("zero", name)``, ``("multi", [return ids])`` (``("multi", [return ids],
            AGAIN)`` while it runs again to rebuild them) or ``("stream", _Stream)``.
        owner_of: ``{return id: task id}`` while its ref may live.
        streams: ``{task id: _Stream}``, until the generator is dropped and the task ended
            (and does not run again).
        cancelled: task ids cancelled while in flight.
        cancel_out: ``[(node id, message)]`` cancels the loop thread sends.
    """

    def __init__(self, client: Any, ref_class: type) -> None:
        self.c = client
        self.ref_class = ref_class
        self.tasks: dict[bytes, tuple] = {}
        self.owner_of: dict[bytes, bytes] = {}
        self.streams: dict[bytes, _Stream] = {}
        self.cancelled: set[bytes] = set()
        self.cancel_out: list[tuple[str, tuple]] = []
        #: ``[(object id, node id)]`` refs unpickled from results (result_refs.py), appended
        #: without the lock by the thread that unpickles
        self.nested_in: list[tuple[bytes, str]] = []
        self.awaited: dict[bytes, str] = {}  # such refs whose completion has not come
        self._how: dict[bytes, tuple] = {}  # task id -> (force, recursive) of its cancel
        self._futures: list[tuple[Any, concurrent.futures.Future]] = []
        self._resolver: threading.Thread | None = None
        self._next_settle = 0.0
        client.dead_streams = []  # task ids of dropped generators, by __del__

    # ------------------------------------------------------------------ submitting

    def refs_locked(self, tid: bytes, nret: int, name: str) -> Any:
        """What ``.remote()`` returns for task ``tid`` of ``nret`` returns (``-1``:
        streaming): ``None``, a list of refs or a :class:`ClusterRefGenerator`.  A task that
        failed already (``results[tid]`` an error) passes its error on to them."""
        c = self.c
        failed = c.results.pop(tid, None)
        if nret == 0:
            if failed is not None:
                _log.error("repartir: task %s (num_returns=0) failed and no ref can raise "
                           "it: %s", name, failed[1])
            else:
                self.tasks[tid] = ("zero", name)
            return None
        if nret > 0:
            oids = [return_id(tid, i) for i in range(nret)]
            for oid in oids:
                self.owner_of[oid] = tid
                if failed is not None:
                    c.results[oid] = failed
            if failed is None:
                self.tasks[tid] = ("multi", oids)
            return [self.ref_class(oid, c) for oid in oids]
        st = _Stream(tid, name)
        self.streams[tid] = st
        gen = ClusterRefGenerator(c, st, self.ref_class)
        st.gen = weakref.ref(gen)
        if failed is not None:
            self._stream_item(st, 0, failed, None, [])
            st.end = 1
        else:
            self.tasks[tid] = ("stream", st)
        return gen

    # ------------------------------------------------------------------ completions

    def done_locked(self, nid: str, tid: bytes, what: str, payload: Any,
                    releases: list) -> None:
        """The completion of task ``tid`` (one of :attr:`tasks`) from node ``nid``."""
        c = self.c
        task = c.inflight.pop(tid, None)
        if task is None and tid in c.results:  # failed by the client meanwhile: that error
            self.done_locked_error(tid, c.results.pop(tid))
        c._due.extend(c.borrows.task_ended(tid))
        self.cancelled.discard(tid)
        spec = self.tasks.pop(tid, None)
        if task is not None:
            c._used[task.node] -= task.demand.get("CPU", 0.0)
            c._count[task.node] -= 1
            if spec is None or spec[0] == "zero":  # (several, streams: returns_done)
                c._lineage.done(tid, "value", task, False)  # no lineage: its arguments' ends
        if spec is None or task is None:  # failed or finished already: drop what came
            if what == "stored":
                releases.append(tid)
            elif what == "returns":
                releases.extend(return_id(tid, i) for i, r in enumerate(payload)
                                if r[0] == "stored")
            return
        if spec[0] == "zero":
            if what == "error":
                _log.error("repartir: task %s (num_returns=0) failed and no ref can raise "
                           "it: %s", spec[1], payload)
            elif what == "stored":
                releases.append(tid)
        elif spec[0] == "multi":
            again = len(spec) > 2  # run again to rebuild lost returns (lineage_returns.py)
            for i, oid in enumerate(spec[1]):
                res = payload[i] if what == "returns" else ("error", payload)
                if oid in c._dropped or (again and not c._lineage.awaits(oid)):
                    c._dropped.discard(oid)  # (or not lost, or no longer wanted)
                    if not again:
                        self.owner_of.pop(oid, None)
                    if res[0] == "stored":
                        releases.append(oid)
                    continue
                c.results[oid] = ("stored", nid, res[1]) if res[0] == "stored" else res
            c._lineage.returns_done(tid, task, dict(enumerate(spec[1])), again)
        else:
            st = spec[1]
            again, error = st.again, None
            if again:  # run again for its lost items: its end stays (lineage_returns.py)
                st.again = False
                error = None if what == "stream_end" else ("error", payload)
            elif what == "stream_end":
                st.end = payload
            else:  # failed before it ran (or was cancelled in a queue): one error item
                self._stream_item(st, len(st.arrived), ("error", payload), nid, releases)
                st.end = len(st.arrived)
            self._forget_stream(st, error)
            c._lineage.returns_done(tid, task, {i: return_id(tid, i) for i in st.kept},
                                    again, st)

    def items_locked(self, nid: str, items: list, releases: list) -> None:
        """Generator items sent by node ``nid`` as they were yielded."""
        for tid, index, what, payload in items:
            st = self.streams.get(tid)
            if st is None or tid not in self.tasks:
                if what == "stored":
                    releases.append(return_id(tid, index))
                continue
            self._stream_item(st, index, (what, payload), nid, releases)

    def _stream_item(self, st: _Stream, index: int, res: tuple, nid: str | None,
                     releases: list) -> None:
        oid = return_id(st.tid, index)
        if index in st.lost:  # lost with its node: its task, run again, yields it again
            st.lost.discard(index)
            if st.again:  # an ended generator run again (lineage_returns.py)
                gone = not self.c._lineage.awaits(oid)
            else:
                gone = index < st.handed and oid not in self.owner_of  # its ref is gone
            if gone:
                if res[0] == "stored":
                    releases.append(oid)
                return
        elif index in st.arrived or st.gen is None or st.again:
            if res[0] == "stored":  # a replay of a retried task (or of one run again for
                # other items), or a dropped generator
                releases.append(oid)
            return
        st.arrived.add(index)
        if res[0] == "stored":
            st.kept.add(index)
        self.owner_of[oid] = st.tid
        self.c.results[oid] = ("stored", nid, res[1]) if res[0] == "stored" else res

    def _forget_stream(self, st: _Stream, error: tuple | None = None) -> None:
        """Once a generator ended: its lost items its rerun did not yield raise ``error``
        (default ``ObjectLostError``); a dropped one is forgotten."""
        if st.again:  # run again (lineage_returns.py): not before that run ends
            return
        if st.end is not None and st.lost:  # its rerun ended before it yielded them again
            for index in st.lost:
                oid = return_id(st.tid, index)
                if oid in self.owner_of or self.c._lineage.awaits(oid):
                    self.c.results[oid] = error or ("error", ObjectLostError(
                        f"object {oid.hex()} was lost with its node, and its generator, run "
                        f"again, ended before it yielded it again"))
            st.lost.clear()
        if st.gen is None and st.end is not None:
            self.streams.pop(st.tid, None)

    def lost(self, oid: bytes) -> str | None:
        """Result ``oid`` was kept on a node that died and has no lineage: why it cannot be
        rebuilt, or ``None`` when it is the item of a generator that had not ended and runs
        again (it waits for the item yielded again, as a rebuilt result does)."""
        tid = self.owner_of.get(oid)
        st = self.streams.get(tid) if tid is not None else None
        if st is None or st.end is not None:  # (an ended generator's items: lineage)
            return NO_LINEAGE
        if tid in self.c.inflight:
            for index in st.arrived:
                if return_id(tid, index) == oid:
                    st.lost.add(index)
                    self.c.results.pop(oid, None)
                    return None
        return NOT_REBUILT

    def run_again_locked(self, tid: bytes, oids: tuple, st: _Stream | None) -> None:
        """Task ``tid`` of several returns ``oids`` (or the generator of ``st``) runs again
        to rebuild those lost with their node (lineage_returns.py): its completion (its
        items) goes to the lost ones still wanted, and is released for the others."""
        if st is None:
            self.tasks[tid] = ("multi", list(oids), AGAIN)
            return
        st.again = True
        self.streams[tid] = st
        self.tasks[tid] = ("stream", st)

    # ------------------------------------------------------------------ each loop turn

    def flush_locked(self, dead: list, releases: dict) -> None:
        """Dropped refs and generators, failed tasks, cancels to send (``releases``:
        ``{node id: [object ids]}``, extended)."""
        c = self.c
        nested, self.nested_in[:] = list(self.nested_in), []
        for oid, nid in nested:
            if oid not in c.results:
                self.awaited[oid] = nid
        for oid in dead:
            if self.awaited.pop(oid, None) is not None and oid not in c.results:
                c._dropped.add(oid)  # released when its completion comes
            tid = self.owner_of.pop(oid, None)
            if tid is not None and self.tasks.get(tid, ("",))[0] == "multi":
                c._dropped.add(oid)  # not back yet: released when it comes
        streams, c.dead_streams[:] = list(c.dead_streams), []
        for tid in streams:
            st = self.streams.get(tid)
            if st is None:
                continue
            st.gen = None
            for index in sorted(st.arrived):
                if index < st.handed:
                    continue
                oid = return_id(tid, index)
                self.owner_of.pop(oid, None)
                res = c.results.pop(oid, None)
                if res is not None and res[0] == "stored":
                    releases.setdefault(res[1], []).append(oid)
                if c._lineage.specs:
                    c._lineage.ref_dropped(oid)
            self._forget_stream(st)
        now = time.monotonic()
        if now >= self._next_settle:
            self._next_settle = now + 0.05
            self._settle()

    def _settle(self) -> None:
        """Tasks failed by the client (a node died, the client broke, a rebuild failed):
        their error, put under the task id, goes to their returns or generator."""
        c = self.c
        for tid in [t for t in self.tasks if t in c.results and t not in c.inflight]:
            res = c.results.pop(tid)
            self.done_locked_error(tid, res)
        self.cancelled.intersection_update(c.inflight)
        for oid, nid in list(self.awaited.items()):
            if oid in c.results:
                del self.awaited[oid]
            elif nid not in c._eps:
                del self.awaited[oid]
                c.results[oid] = ("error", ObjectLostError(
                    f"object {oid.hex()} was kept on node {nid[:12]}, which died before it "
                    f"was ready; a ref inside a result is not rebuilt from lineage"))
        for tid in [t for t in self._how if t not in self.cancelled]:
            del self._how[tid]

    def done_locked_error(self, tid: bytes, res: tuple) -> None:
        spec = self.tasks.pop(tid, None)
        if spec is None:
            return
        c = self.c
        if (len(spec) > 2 or spec[0] == "stream" and spec[1].again) and \
                tid not in c._lineage.groups:  # run again, its lineage dropped meanwhile:
            c._lineage.done(tid, "error", None, False)  # its arguments' lineage ends
        if spec[0] == "zero":
            _log.error("repartir: task %s (num_returns=0) failed and no ref can raise it: "
                       "%s", spec[1], res[1])
        elif spec[0] == "multi":
            again = len(spec) > 2  # run again: the lost returns only (lineage_returns.py)
            for oid in spec[1]:
                if oid in c._dropped:
                    c._dropped.discard(oid)
                elif not again or c._lineage.awaits(oid):
                    c.results[oid] = res
        else:
            st = spec[1]
            if st.again:  # its lost items raise the error (lineage_returns.py)
                st.again = False
                self._forget_stream(st, res)
                return
            self._stream_item(st, len(st.arrived), res, None, [])
            st.end = len(st.arrived)
            self._forget_stream(st)

    def moved_locked(self, thief: str, tids: list) -> None:
        """Tasks stolen by ``thief``: a cancel sent to their victim goes to it too."""
        for tid in tids:
            if tid in self.cancelled and tid in self.c.inflight:
                self.cancel_out.append((thief, ("cancel", tid, *self._how[tid])))

    # ------------------------------------------------------------------ cancel

    def cancel(self, target: Any, force: bool, recursive: bool) -> None:
        """``repartir.cancel(target)`` (a ref or a generator of this driver; see the
        module's docstring).

        Raises:
            TypeError: ``target`` is not an ObjectRef or ObjectRefGenerator.
            RepartirError: it belongs to another cluster connection.
        """
        c = self.c
        if isinstance(target, ClusterRefGenerator):
            tid = target._stream.tid
        elif isinstance(target, self.ref_class):
            if target._cluster is not c:
                raise RepartirError(f"{target!r} does not belong to the cluster at "
                                    f"{c.address} this driver is connected to")
            tid = self.owner_of.get(target._id, target._id)
        elif isinstance(target, (ObjectRef, ObjectRefGenerator)):
            raise RepartirError(f"{target!r} does not belong to the cluster at {c.address} "
                                f"this driver is connected to (made before init?)")
        else:
            raise TypeError(f"cancel() takes an ObjectRef or ObjectRefGenerator, got "
                            f"{type(target).__qualname__}")
        with c._lock:
            task = c.inflight.get(tid)
            if task is None:
                return  # finished (or failed): left alone, as locally
            task.retries = 0  # a cancelled task is never resubmitted
            error = TaskCancelledError(f"task {tid.hex()} was cancelled")
            if tid in c._lineage.waiting:
                c._lineage._fail(tid, task, error)
            elif tid in c._deps.waiting:  # waiting for its arguments (deps.py)
                c._deps.fail(tid, error)
            elif tid in c._actor_deps.calls:  # an actor call, likewise (actor_deps.py)
                c._actor_deps.cancel(tid, error)
            elif not task.node or tid in c._outbox.get(task.node, ()):
                del c.inflight[tid]  # never sent: the batch skips it
                c._used[task.node] -= task.demand.get("CPU", 0.0)
                c._count[task.node] -= 1
                c._due.extend(c.borrows.task_ended(tid))
                c._lineage.done(tid, "error", task, False)
                c.results[tid] = ("error", error)
            else:
                self.cancelled.add(tid)
                self._how[tid] = (force, recursive)
                self.cancel_out.append((task.node, ("cancel", tid, force, recursive)))
                return
            if tid in self.tasks:
                self.done_locked_error(tid, c.results.pop(tid, ("error", error)))
            c._cv.notify_all()

    # ------------------------------------------------------------------ futures

    def future(self, ref: Any) -> concurrent.futures.Future:
        """A ``concurrent.futures.Future`` that gets ``ref``'s value (or its error)."""
        f: concurrent.futures.Future = concurrent.futures.Future()
        with self.c._lock:
            self._futures.append((ref, f))  # holds the ref until resolved
            if self._resolver is None or not self._resolver.is_alive():
                self._resolver = threading.Thread(target=self._resolve, daemon=True,
                                                  name="repartir-cluster-futures")
                self._resolver.start()
            self.c._cv.notify_all()
        return f

    def _resolve(self) -> None:
        c = self.c
        while not c._closed:
            with c._cv:
                if not self._futures:
                    self._resolver = None
                    return
                ready = [(r, f) for r, f in self._futures if r._id in c.results]
                if not ready:
                    c._cv.wait(0.05)
                    continue
                self._futures = [(r, f) for r, f in self._futures if r._id not in c.results]
            for r, f in ready:
                if f.cancelled():
                    continue
                try:
                    value = c.get([r], None)[0]
                except BaseException as exc:  # the task's error goes into the future
                    f.set_exception(exc)
                else:
                    f.set_result(value)
        with c._lock:
            pending, self._futures = self._futures, []
        for _, f in pending:
            if not f.done():
                f.set_exception(RepartirError("the cluster connection was closed "
                                              "(repartir.shutdown()) before this value "
                                              "was ready"))
