"""``get`` and ``wait`` (a part of :class:`~.core.CoreClient`, whose state it shares;
``docs/architecture.md``, "Nested tasks"): spin, then park on the inbox, helping with
queued tasks in a worker; a list fails fast on its first error."""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from ..errors import GetTimeoutError, ObjectLostError, WorkerCrashedError
from ..ids import task_of
from .protocol import ERROR_KINDS, MSG_REQUEST, encode
from .objectref import ObjectRef


__all__ = ["Waiting"]


class Waiting:
    def _loc_of(self, ref: ObjectRef):
        e = self.table.get(ref._id)
        if e is not None:
            return e[1]
        loc = self.borrowed.get(ref._id)
        if loc is None and not ref._owned and self.objects.should_request(ref._id):
            msg = encode((MSG_REQUEST, ref._id, self.slot))
            while not self.segment.inboxes[ref._owner_slot].put(msg):
                time.sleep(0.0005)
        return loc

    def wait(self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None,
             fail_fast: bool = False) -> list[bool]:
        """Block until ``num_returns`` of ``refs`` are ready or ``timeout`` passes; returns
        which are ready.  With ``fail_fast`` (for ``get``), also return as soon as a ready
        one is an error.  Ctrl-C (``KeyboardInterrupt``) while the driver waits cancels the
        tasks it has queued and propagates; the session stays usable.

        Raises:
            ObjectLostError: a ref belongs to a session that was shut down.
        """
        self._check_session(refs)
        if self._all_ready(refs, num_returns):
            return [self._loc_of(r) is not None for r in refs]
        helper = self.helper
        if helper is not None:  # a worker: the waiting task lends its CPU meanwhile
            helper.lend()
            try:
                return self._wait(refs, num_returns, timeout, fail_fast,
                                  self._may_help(refs))
            finally:
                helper.unlend()
        local = self._local
        outer = not getattr(local, "waiting", False)
        if outer:
            local.waiting = True
            self._getters += 1
        try:
            return self._wait(refs, num_returns, timeout, fail_fast)
        except KeyboardInterrupt:
            self.cancel_queued()
            raise
        finally:
            if outer:
                local.waiting = False
                self._getters -= 1

    def _check_session(self, refs: Sequence[ObjectRef]) -> None:
        for r in refs:
            if r._client is not self:
                raise ObjectLostError(
                    f"{r!r} belongs to a session that was shut down; its value is gone. "
                    f"Keep values you need (repartir.get them) before repartir.shutdown().")

    def _all_ready(self, refs: Sequence[ObjectRef], num_returns: int) -> bool:
        """Whether ``num_returns`` of ``refs`` are ready now (no waiting machinery)."""
        table, borrowed = self.table, self.borrowed
        n = 0
        for r in refs:
            e = table.get(r._id)
            loc = e[1] if e is not None else borrowed.get(r._id)
            if loc is not None:
                n += 1
                if n >= num_returns:
                    return True
            elif num_returns == len(refs):
                return False
        return n >= num_returns

    def _may_help(self, refs: Sequence[ObjectRef]) -> bool:
        """Whether a worker waiting for ``refs`` may run queued tasks on its stack meanwhile:
        not when one of them is the result of an actor call this process made.  An actor
        may wait on other tasks (a queue's ``get`` waits for a producer task); a task run
        on this stack could be that task, or wait on it, and neither can go on before the
        waiting task returns.  The worker then only lends its CPU and parks; the node
        starts another worker if every worker is blocked (``docs/architecture.md``,
        "Nested tasks")."""
        tasks = self.tasks
        for r in refs:
            if r._owned:
                t = tasks.get(task_of(r._id))
                if t is not None and t.target is not None:
                    return False
        return True

    def _wait(self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None,
              fail_fast: bool = False, may_help: bool = True) -> list[bool]:
        deadline = None if timeout is None else time.monotonic() + timeout
        n = len(refs)
        ready = [False] * n
        pending = list(range(n))
        count = 0
        changed = True
        seen = -1
        helper = self.helper
        spin_end = time.monotonic() + self._spin
        nap = 0.0001
        while True:
            if changed:
                seen = self._version
                with self._lock:
                    still = []
                    failed = False
                    for i in pending:
                        loc = self._loc_of(refs[i])
                        if loc is not None:
                            ready[i] = True
                            count += 1
                            failed = failed or loc[0] in ERROR_KINDS
                        else:
                            still.append(i)
                    pending = still
                if count >= num_returns or (fail_fast and failed):
                    return ready
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return ready
            if self.node is not None and self.node.fatal:
                raise WorkerCrashedError(self.node.fatal)
            if self.closed:
                raise ObjectLostError("repartir.shutdown() ended the session while this "
                                      "thread waited for its objects")
            changed = self.poll() > 0 or self._version != seen
            if changed:
                continue
            if may_help and helper is not None and helper.help():
                helper.raise_pending_stop()
                changed = True
                spin_end = time.monotonic() + self._spin
                continue
            if now < spin_end:
                os.sched_yield()  # spin politely: a process with work may share this core
                continue
            left = 0.05 if deadline is None else max(0.0, min(deadline - now, 0.05))
            if helper is not None:  # a worker: look for work to help with again soon
                self.segment.set_blocked(self.slot, True)
                try:
                    self.inbox.park(min(left, 0.001))
                finally:
                    self.segment.set_blocked(self.slot, False)
            elif len(pending) > 1 and num_returns - count > 1:
                time.sleep(min(nap, left))  # many results to come: batch them
                nap = min(nap * 2, 0.002)
            else:
                self.inbox.park(left if self._getters == 1 else min(left, 0.002))
            changed = True

    def get_one(self, ref: ObjectRef, timeout: float | None) -> Any:
        """``get`` of one ref of this session: a ready object costs two lookups and the
        rebuild (the common case of ``get`` inside a task of a ref passed to it)."""
        e = self.table.get(ref._id)
        loc = e[1] if e is not None else self.borrowed.get(ref._id)
        if loc is None:
            return self.get([ref], timeout)[0]
        return self.value(loc)

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list:
        """The values of ``refs``, in order.  Fails fast, as Ray's ``get``: as soon as one of
        them is an error, that error is raised, without waiting for the others.

        Raises:
            GetTimeoutError: not all were ready within ``timeout`` seconds.
            TaskError, ...: the error of a ref's task (the first found, in list order).
        """
        ready = self.wait(refs, len(refs), timeout, fail_fast=True)
        if not all(ready):
            with self._lock:
                locs = [self._loc_of(r) if ok else None for r, ok in zip(refs, ready)]
            for loc in locs:
                if loc is not None and loc[0] in ERROR_KINDS:
                    self.value(loc)  # raises the task's error
            missing = ready.count(False)
            raise GetTimeoutError(
                f"get() timed out after {timeout} s with {missing} of {len(refs)} objects "
                f"not ready. Raise timeout=, or use repartir.wait() to take what is ready."
            )
        with self._lock:
            locs = [self._loc_of(r) for r in refs]
        return [self.value(loc) for loc in locs]
