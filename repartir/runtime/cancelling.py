"""Cancelling tasks (a part of :class:`~.core.CoreClient`, whose state it shares;
``docs/architecture.md``, "Cancellation and time-outs"): a queued task leaves every deque,
a running one is stopped (with its children unless ``recursive=False``)."""

from __future__ import annotations

import pickle

from ..errors import TaskCancelledError
from ..ids import task_of
from ..scheduler import record
from .messages import stop_task
from .protocol import StopRequest
from .objectref import ObjectRef

from .ownership import _Task

__all__ = ["Cancelling"]


class Cancelling:
    def cancel(self, ref: ObjectRef, force: bool = False, recursive: bool = True) -> None:
        """Cancel the task computing ``ref`` (see :func:`repartir.cancel`)."""
        self.cancel_task(task_of(ref._id), force, recursive)

    def cancel_task(self, task_id: bytes, force: bool = False, recursive: bool = True) -> None:
        with self._lock:
            t = self.tasks.get(task_id)
            if t is None:
                return  # finished (or never ours): nothing to do, as in Ray
            if t.cancelled:
                if force and t.target is None and t.record is not None:
                    # cancelled, but still running (the task ignored the interrupt): kill
                    # its worker now, whatever happened before
                    self.stop_running(task_id, StopRequest.CANCEL, True)
                return
            if force and t.target is not None:
                raise ValueError("force=True cannot cancel an actor call (it would kill the "
                                 "actor); use repartir.kill(actor) to stop the actor")
            t.cancelled = True
            if t.record is None:  # still waiting for its arguments
                for d in t.deps:
                    lst = self.waiting.get(d._id)
                    if lst and t in lst:
                        lst.remove(t)
                self._cancelled(t)
                return
            self.segment.add_cancelled(task_id)
            if self._unqueue({task_id}):
                self._cancelled(t)
                return
        # running now (or popped and about to be dropped by its worker)
        self.stop_running(task_id, StopRequest.CANCEL if recursive or force
                          else StopRequest.CANCEL_ONE, force)

    def _unqueue(self, task_ids: set) -> set:
        """Remove queued copies of ``task_ids`` from the backlog and every deque; returns
        the ids found."""
        def match(rec) -> bool:
            return record.task_id_of(rec) in task_ids

        found = self.backlog.remove_if(match)
        seg = self.segment
        for i in range(seg.active_slots):
            for r in seg.deques[i].remove_if(match):
                found.add(record.task_id_of(r))
        return found

    def _cancelled(self, t: _Task) -> None:
        self.tasks.pop(t.task_id, None)
        err = pickle.dumps(TaskCancelledError(f"task {t.fn_name} was cancelled"), 5)
        if t.stream is not None:
            t.stream.end(("x", err))
        self._finish(t, [("x", err)] * len(t.return_ids))

    def cancel_queued(self) -> int:
        """Cancel every task of this process that has not started; returns how many."""
        with self._lock:
            queued = [t for t in self.tasks.values() if not t.cancelled]
            ids = {t.task_id for t in queued if t.record is not None}
            found = self._unqueue(ids) if ids else set()
            n = 0
            for t in queued:
                if t.record is None or t.task_id in found:
                    t.cancelled = True
                    self._cancelled(t)
                    n += 1
            return n

    def stop_running(self, task_id: bytes, reason: int, force: bool) -> None:
        stop_task(self.segment, task_id, reason, force)
