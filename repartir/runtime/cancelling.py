"""Cancelling tasks (a part of :class:`~.core.CoreClient`, whose state it shares;
``docs/architecture.md``, "Cancellation and time-outs"): a queued task leaves every deque,
a running one is stopped (with its children unless ``recursive=False``)."""

from __future__ import annotations

from ..ids import task_of
from ..scheduler import record
from .objectref import ObjectRef
from .task_manager import Stop, Unqueue

__all__ = ["Cancelling"]


class Cancelling:
    def cancel(self, ref: ObjectRef, force: bool = False, recursive: bool = True) -> None:
        """Cancel the task computing ``ref`` (see :func:`repartir.cancel`)."""
        self.cancel_task(task_of(ref._id), force, recursive)

    def cancel_task(self, task_id: bytes, force: bool = False, recursive: bool = True) -> None:
        manager = self.manager
        with self._lock:
            instrs = manager.cancel(task_id, force, recursive)
            if len(instrs) == 1 and type(instrs[0]) is Unqueue:
                t = instrs[0].task
                self.segment.add_cancelled(task_id)
                found = bool(self._unqueue({task_id}))
                instrs = manager.unqueued(t, found, force, recursive)
                if type(instrs[0]) is Stop:  # running: stopped outside the lock
                    stop = instrs[0]
                    instrs = []
                else:
                    stop = None
            else:
                stop = None
            self._carry_out(instrs)
        if stop is not None:
            self._carry_out([stop])

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

    def cancel_queued(self) -> int:
        """Cancel every task of this process that has not started; returns how many."""
        with self._lock:
            instrs, queued = self.manager.cancel_queued()
            found = self._unqueue({t.task_id for t in queued}) if queued else set()
            instrs += self.manager.unqueued_many(queued, found)
            self._carry_out(instrs)
            return len(instrs)

    def cancel_children(self, parent: bytes) -> None:
        """The call ``parent`` of this process ended by a cancel: cancel what it submitted
        that is still pending (best effort, as Ray's recursive cancel)."""
        for child in self.manager.take_children(parent):
            try:
                self.cancel_task(child)
            except Exception:  # noqa: BLE001
                pass
