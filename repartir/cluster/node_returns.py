"""A node's side of several returns, generators and cancels (docs/cluster.md, "Returns,
generators, cancel"): a part of :class:`~.node.NodeDaemon`, whose tables it uses; the
driver's side is :mod:`.returns`.

::

    task of num_returns=k ─▶ k local refs ─▶ all ready ─▶ ("done", [(tid, "returns",
                                                           [(what, payload) x k])])
    generator task ─▶ ObjectRefGenerator ─▶ each loop turn, its new items ─▶
                       ("items", [(tid, index, what, payload)]) ... then
                       ("done", [(tid, "stream_end", count)])
    ("cancel", tid, force, recursive) ─▶ queued here: dropped, its error sent
                                         running: repartir.cancel on this node's runtime
                                         not here yet (pulling its arguments, stolen on
                                         its way): remembered, never started

Each return or item larger than ``CLUSTER_INLINE_RESULT_BYTES`` is kept here under its own
id (:func:`~.returns.return_id`), served and released exactly like a single result.
"""

from __future__ import annotations

import collections
import pickle
import threading
from typing import Any

from ..config import CLUSTER_INLINE_RESULT_BYTES
from ..errors import RepartirError, TaskCancelledError
from ..runtime import driver as local_driver
from ..runtime.streaming import ObjectRefGenerator
from .result_refs import WithRefs, export_refs
from .returns import return_id
from .wire import encode

__all__ = ["NodeReturns", "cancel_local", "several"]

#: Task ids of cancels that found no task here, remembered so that the task, should it
#: still come (from a victim, or after its arguments' pull), never starts.
_EARLY_CANCELS = 4096


def picklable_error(exc: BaseException) -> BaseException:
    """``exc``, or a ``RepartirError`` naming it when it cannot be pickled."""
    try:
        pickle.loads(encode(exc)[0])
        return exc
    except Exception:
        return RepartirError(f"{type(exc).__name__}: {exc}")


def cancel_local(out: Any, force: bool = False, recursive: bool = True) -> None:
    """Cancel on this node's runtime, as ``repartir.cancel`` does, the task whose
    ``.remote()`` gave ``out``: one ref, the list of refs of ``num_returns=k`` (their one
    task), or an ``ObjectRefGenerator`` (its task: the generator stops at its next item).
    ``force``: kill its worker; ``recursive``: cancel what it submitted on this node.  A task
    that has finished, or cannot be cancelled, is left alone (nothing is raised)."""
    client = local_driver.client()
    try:
        if isinstance(out, ObjectRefGenerator):
            if out._task_id is not None and not out.completed():
                client.cancel_task(out._task_id, force, recursive)
        elif isinstance(out, list):
            if out:
                client.cancel(out[0], force, recursive)
        else:
            client.cancel(out, force, recursive)
    except Exception:  # noqa: BLE001 -- finished meanwhile: left alone
        pass


def several(out: Any) -> bool:
    """Whether ``out``, what ``.remote()`` gave on this node, is several returns (a list of
    refs) or a generator, which this module completes (not one ref, nor an actor
    operation's answer)."""
    return type(out) is list or isinstance(out, ObjectRefGenerator)


class NodeReturns:
    """Mixed into :class:`~.node.NodeDaemon` (see the module's docstring); uses its
    ``router``, ``pending``, ``done``, ``stored``, ``holdings`` and ``queue``."""

    def _init_returns(self) -> None:
        self.streams: dict[bytes, list] = {}  # task id -> [driver, generator, next index]
        self._early: collections.deque = collections.deque(maxlen=_EARLY_CANCELS)
        self._early_set: set[bytes] = set()

    def _start_returns(self, peer: bytes, tid: bytes, out: Any) -> None:
        """Task ``tid`` was submitted here and ``.remote()`` gave ``out``: a list of refs
        (``num_returns=k``) or an ``ObjectRefGenerator``."""
        self.pending[tid] = (peer, out)
        if isinstance(out, ObjectRefGenerator):
            self.streams[tid] = [peer, out, 0]
            return
        left = [len(out)]
        lock = threading.Lock()
        done = self.done

        def one(_f: Any) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                done.append((peer, tid, None))

        if not out:
            done.append((peer, tid, None))
        for ref in out:
            ref.future().add_done_callback(one)

    def _item(self, oid: bytes, ref: Any, peer: bytes) -> tuple[str, Any]:
        """``(what, payload)`` of a ready local ref: its value inline, or kept here under
        ``oid`` (its size), or its error."""
        fut = ref.future()
        exc = fut.exception()
        if exc is not None:
            return "error", picklable_error(exc)
        value = export_refs(self, peer, fut.result())  # refs inside (result_refs.py)
        frames = encode(value)
        size = sum(memoryview(f).nbytes for f in frames)
        if size <= CLUSTER_INLINE_RESULT_BYTES or type(value) is WithRefs:
            return "value", value
        self.stored[oid] = [ref, frames]
        self.holdings.kept(oid, peer)  # dropped if its driver dies (leases.py)
        return "stored", size

    def _returns_item(self, peer: bytes, tid: bytes, out: Any) -> tuple:
        """The completion of task ``tid`` whose ``.remote()`` gave ``out``."""
        if isinstance(out, ObjectRefGenerator):
            st = self.streams.pop(tid, None)
            return tid, "stream_end", st[2] if st is not None else 0
        return tid, "returns", [self._item(return_id(tid, i), r, peer)
                                for i, r in enumerate(out)]

    def _stream_tick(self) -> None:
        """Send the items the generators here yielded since the last turn; a generator
        that ended completes its task."""
        by_peer: dict[bytes, list] = {}
        for tid, st in list(self.streams.items()):
            peer, gen, index = st
            entry = self.pending.get(tid)
            if peer is None or entry is None or entry[1] is not gen:
                self._drain(tid, st)  # dropped: its driver gone, this node declared dead
                continue
            while True:
                try:
                    ref = gen._take()
                except StopIteration:
                    self.done.append((peer, tid, None))
                    break
                if ref is None:
                    break
                what, payload = self._item(return_id(tid, index), ref, peer)
                by_peer.setdefault(peer, []).append((tid, index, what, payload))
                index += 1
                st[2] = index
        for peer, items in by_peer.items():
            self.router.send(("items", items), to=peer)

    def _drain(self, tid: bytes, st: list) -> None:
        """The generator of stream ``st``, dropped with what this node held for its driver
        (``leases.drop_driver``, ``membership``: its task cancelled there), sends nothing
        more: its items, should some still come before the cancel stops it, are freed as
        they come; at its end its task completes here (no longer counted, not sent), unless
        the same task id runs here again meanwhile."""
        st[0] = None
        try:
            while st[1]._take() is not None:
                pass
        except StopIteration:
            del self.streams[tid]
            if tid not in self.pending:
                self.done.append((None, tid, None))

    # ------------------------------------------------------------------ cancel

    def _on_cancel(self, peer: bytes, tid: bytes, force: bool, recursive: bool) -> None:
        """The driver ``peer`` cancels task ``tid`` (see the module's docstring)."""
        for i, t in enumerate(self.queue):
            if t.tid == tid:
                del self.queue[i]
                self.router.send(("done", [(tid, "error", TaskCancelledError(
                    f"task {tid.hex()} was cancelled before it started"))]), to=peer)
                return
        entry = self.pending.get(tid)
        if entry is None:
            self._never_start(tid)
            return
        cancel_local(entry[1], force, recursive)

    def _never_start(self, tid: bytes) -> None:
        """Task ``tid``, not in this node's runtime (still pulling its arguments, or on its
        way from a victim), fails with ``TaskCancelledError`` instead of starting should it
        come there (:meth:`_check_cancelled`)."""
        if tid not in self._early_set:
            if len(self._early) == self._early.maxlen:
                self._early_set.discard(self._early[0])
            self._early.append(tid)
            self._early_set.add(tid)

    def _check_cancelled(self, tid: bytes) -> None:
        """Raises:
            TaskCancelledError: task ``tid`` was cancelled before it reached this node's
                runtime."""
        if tid in self._early_set:
            self._early_set.discard(tid)
            raise TaskCancelledError(f"task {tid.hex()} was cancelled before it started")
