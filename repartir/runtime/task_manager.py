"""The tasks one process owns, as pure state: events in, instructions out
(``docs/architecture.md``, "Runtime state machines").  No shared memory, no messages, no
locks: the core worker (``submitting.py``, ``completions.py``, ``cancelling.py``) feeds it
what happened and carries out what it returns.  Tested table-style, without processes, in
``tests/runtime/test_task_manager.py``.

Each task is in one :class:`TaskState` until it ends (and leaves the table):

.. code-block:: text

    submit ─▶ WAITING ──(last argument resolved)──▶ QUEUED ──▶ (Done / Crashed: ends)
         │                                            ▲  └─(crash, retries left)─┘
         └─▶ (actor call) CALL_WAITING ─(first in line, arguments ready)─▶ SENT
                                                     ▲  └─(actor restarted: re-sent)
    cancel: WAITING, CALL_WAITING ─▶ ends cancelled;  QUEUED, SENT ─▶ CANCELLING ─▶ ends

The decisions on a task that ends badly are the pure functions of ``task_state.py``.
"""

from __future__ import annotations

import collections
import enum
from typing import NamedTuple

from ..errors import ActorDiedError, TaskCancelledError
from ..serialization import error_from_payload
from .protocol import StopRequest
from .task_state import after_crash, retries_error

__all__ = ["TaskManager", "Task", "TaskState", "Push", "SendCall", "Retry", "Fail",
           "Unqueue", "Stop"]


class TaskState(enum.IntEnum):
    WAITING = 0  #: a task waiting for its arguments
    QUEUED = 1  #: its record is in a deque (queued or running: the owner cannot tell)
    CALL_WAITING = 2  #: an actor call behind earlier calls or waiting for its arguments
    SENT = 3  #: an actor call in the actor's inbox (queued or running there)
    CANCELLING = 4  #: cancelled while queued or running: waiting for its end


class Task:
    """What the owner keeps of one task it submitted."""

    __slots__ = ("task_id", "return_ids", "fn_name", "spec", "deps", "dep_ids", "pending",
                 "held", "record", "spec_block", "args_block", "attempt", "opts", "cancelled",
                 "target", "actor_id", "epoch", "stream", "state", "keep")

    def __init__(self, task_id: bytes, return_ids: list, fn_name: str, opts,
                 target: int | None = None, actor_id: bytes | None = None) -> None:
        self.task_id = task_id
        self.return_ids = return_ids
        self.fn_name = fn_name
        self.opts = opts
        self.target = target  # the slot of the actor of a call, else None
        self.actor_id = actor_id
        self.spec = None
        self.deps: list | None = []  # ObjectRef arguments (kept alive while it runs)
        self.dep_ids: list = []  # ids of the arguments it waited for at submit
        self.held = None  # refs nested in its arguments
        self.keep = None  # an actor call: its handles' count here, kept until it is sent
        self.record = None  # the record (or call message) as last sent
        self.spec_block = self.args_block = None  # arena blocks of its spec and arguments
        self.attempt = 0
        self.pending = 0
        self.cancelled = False
        self.epoch = 0  # of the actor's process the call was sent to
        self.stream = None
        self.state = TaskState.WAITING


# -- instructions: what the core worker does for the manager --------------------------------

class Push(NamedTuple):
    """Build the task's record (its arguments are ready) and push it to this deque."""
    task: Task


def _new_push(fields: tuple, _new=tuple.__new__) -> Push:
    """``Push(*fields)`` without NamedTuple's ``__new__`` (one Push per task)."""
    return _new(Push, fields)


class SendCall(NamedTuple):
    """Send the actor call to its actor (check that the actor lives; note its epoch)."""
    task: Task


class Retry(NamedTuple):
    """Run the task again: push its record again, or re-send the call."""
    task: Task


class Fail(NamedTuple):
    """The task ended without a result (it has left the table): its refs, and its stream,
    get ``error``."""
    task: Task
    error: BaseException


class Unqueue(NamedTuple):
    """Mark the task cancelled in the segment and take its record out of every deque;
    report with :meth:`TaskManager.unqueued`."""
    task: Task


class Stop(NamedTuple):
    """Ask the process running the task to stop it (``force``: kill that process)."""
    task_id: bytes
    request: StopRequest
    force: bool


class TaskManager:
    """The tasks this process owns: their states, the tasks waiting on each object, the
    per-actor call lines, and the tasks each running call of this process submitted."""

    __slots__ = ("tasks", "waiting", "actor_lines", "children")

    def __init__(self) -> None:
        self.tasks: dict[bytes, Task] = {}
        self.waiting: dict[bytes, list[Task]] = {}  # object id -> tasks waiting on it
        self.actor_lines: dict[int, collections.deque] = {}  # actor slot -> calls unsent
        self.children: dict[bytes, set] = {}  # running call here -> tasks it submitted

    def __len__(self) -> int:
        return len(self.tasks)

    def get(self, task_id: bytes) -> Task | None:
        return self.tasks.get(task_id)

    # -- submitting ------------------------------------------------------------------------

    def submit(self, t: Task, pending: list, parent: bytes | None = None) -> list:
        """A new task; ``pending``: the ids of its arguments not resolved yet; ``parent``:
        the call of this process that submitted it (cancelled with it)."""
        self.tasks[t.task_id] = t
        if parent is not None:
            self.children.setdefault(parent, set()).add(t.task_id)
        t.dep_ids = pending
        t.pending = len(pending)
        for oid in pending:
            self.waiting.setdefault(oid, []).append(t)
        if t.target is not None:
            t.state = TaskState.CALL_WAITING
            self.actor_lines.setdefault(t.target, collections.deque()).append(t)
            return self._ready_calls(t.target)
        if pending:
            return []
        t.state = TaskState.QUEUED
        return [_new_push((t,))]

    def resolved(self, object_id: bytes) -> list:
        """``object_id`` got its location: tasks whose last argument it was go."""
        waiters = self.waiting.pop(object_id, None)
        if not waiters:
            return []
        out: list = []
        for w in waiters:
            w.pending -= 1
            if w.pending == 0:
                if w.target is not None:
                    out.extend(self._ready_calls(w.target))
                elif not w.cancelled:
                    w.state = TaskState.QUEUED
                    out.append(Push(w))
        return out

    def _ready_calls(self, slot: int) -> list:
        """This process's calls to the actor at ``slot`` that may go now: in submission
        order, up to the first one still waiting for an argument."""
        q = self.actor_lines.get(slot)
        out: list = []
        while q and q[0].pending == 0:
            t = q.popleft()
            if t.cancelled:
                continue
            t.state = TaskState.SENT
            out.append(SendCall(t))
        if q is not None and not q:
            del self.actor_lines[slot]
        return out

    # -- ends ------------------------------------------------------------------------------

    def completed(self, task_id: bytes) -> Task | None:
        """The task returned its results (``None``: not a task of this table -- a duplicate
        of a retried task, or one of an earlier process in this slot)."""
        return self.tasks.pop(task_id, None)

    def raised(self, task_id: bytes, payload: bytes) -> list:
        """The task raised (``payload``: its pickled ``TaskError``): run again under
        ``retry_exceptions``, else it ends (the core stores the error in its refs)."""
        t = self.tasks.get(task_id)
        if t is None:
            return []
        if self._retries_error(t, payload):
            return self._retry(t)
        del self.tasks[task_id]
        return []

    def _retries_error(self, t: Task, payload: bytes) -> bool:
        retry = t.opts.retry_exceptions
        if not retry or t.cancelled or t.attempt >= t.opts.max_retries:
            return False  # (decided before the payload is unpickled: the common case)
        return retries_error(retry_exceptions=retry, cancelled=t.cancelled, attempt=t.attempt,
                             max_retries=t.opts.max_retries,
                             cause=error_from_payload(payload).cause)

    def _retry(self, t: Task) -> list:
        t.attempt += 1
        if t.target is not None:
            t.state = TaskState.SENT
        return [Retry(t)]

    def crashed(self, task_id: bytes, reason: int, detail: str) -> list:
        """The task's process stopped without a result (a ``Crashed`` message)."""
        t = self.tasks.get(task_id)
        if t is None:
            return []
        err = after_crash(fn_name=t.fn_name, reason=reason, detail=detail,
                          cancelled=t.cancelled, attempt=t.attempt,
                          max_retries=t.opts.max_retries, actor_call=t.target is not None,
                          timeout=t.opts.timeout)
        if err is None:
            return self._retry(t)
        del self.tasks[task_id]
        return [Fail(t, err)]

    def call_failed(self, t: Task, err: BaseException) -> list:
        """A call could not be sent (its actor is dead): it ends with ``err``."""
        self.tasks.pop(t.task_id, None)
        return [Fail(t, err)]

    def actor_epoch(self, slot: int, actor_id: bytes, epoch: int, dead: bool, cause: str,
                    running) -> list:
        """The actor at ``slot`` got a new process (``epoch``) or died for good (``dead``):
        the calls sent to an earlier process that have not completed are re-sent in
        submission order, or fail.  ``running``: those that were running (a retry counts)."""
        lost = [t for t in self.tasks.values()
                if t.target == slot and t.actor_id == actor_id and t.record is not None
                and t.epoch < epoch]
        out: list = []
        for t in lost:
            if not dead and t.task_id in running:
                t.attempt += 1
            if dead or t.attempt > t.opts.max_retries:
                why = cause if dead else (
                    f"its process died while running {t.fn_name}, which was tried "
                    f"{t.attempt} time(s) (max_task_retries={t.opts.max_retries})")
                self.tasks.pop(t.task_id, None)
                out.append(Fail(t, ActorDiedError(f"the actor of {t.fn_name} died: {why}")))
            else:
                t.state = TaskState.SENT
                out.append(SendCall(t))
        return out

    # -- cancelling ------------------------------------------------------------------------

    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> list:
        """``cancel()`` of a task: one not started yet ends at once; one that may be queued
        or running is taken out of the deques first (:class:`Unqueue`), then stopped.

        Raises:
            ValueError: ``force`` on an actor call (it would kill the actor).
        """
        t = self.tasks.get(task_id)
        if t is None:
            return []  # finished (or never ours): nothing to do, as in Ray
        if t.cancelled:
            if force and t.target is None and t.state == TaskState.CANCELLING:
                # cancelled, but still running (it ignored the interrupt): kill its worker
                return [Stop(task_id, StopRequest.CANCEL, True)]
            return []
        if force and t.target is not None:
            raise ValueError("force=True cannot cancel an actor call (it would kill the "
                             "actor); use repartir.kill(actor) to stop the actor")
        t.cancelled = True
        if t.state in (TaskState.WAITING, TaskState.CALL_WAITING):
            self._forget_waits(t)
            return self._cancelled(t)  # (and the calls behind a cancelled call go)
        t.state = TaskState.CANCELLING
        return [Unqueue(t)]

    def unqueued(self, t: Task, found: bool, force: bool, recursive: bool) -> list:
        """After :class:`Unqueue`: a record found in a deque never ran (it ends now); else
        the task is running (or just popped): stop it."""
        if found:
            return self._cancelled(t)
        request = StopRequest.CANCEL if recursive or force else StopRequest.CANCEL_ONE
        return [Stop(t.task_id, request, force)]

    def cancel_queued(self) -> tuple[list, list]:
        """Ctrl-C in the driver: every task not started is cancelled.  Returns the
        instructions for those not queued yet and the tasks whose records must be looked
        for in the deques (then :meth:`unqueued_many`)."""
        out: list = []
        queued: list = []
        waiting: list = []
        for t in self.tasks.values():
            if t.cancelled:
                continue
            if t.state in (TaskState.WAITING, TaskState.CALL_WAITING):
                t.cancelled = True  # all first: no call behind a cancelled one goes
                waiting.append(t)
            elif t.state == TaskState.QUEUED:
                queued.append(t)
        for t in waiting:
            self._forget_waits(t)
            out.extend(self._cancelled(t))
        return out, queued

    def unqueued_many(self, tasks: list, found: set) -> list:
        out: list = []
        for t in tasks:
            if t.task_id in found:
                t.cancelled = True
                out.extend(self._cancelled(t))
        return out

    def take_children(self, parent: bytes) -> set:
        """The tasks the call ``parent`` submitted (it ended by a cancel: they go too)."""
        return self.children.pop(parent, set())

    def _forget_waits(self, t: Task) -> None:
        for oid in t.dep_ids or ():
            lst = self.waiting.get(oid)
            if lst and t in lst:
                lst.remove(t)
                if not lst:
                    del self.waiting[oid]

    def _cancelled(self, t: Task) -> list:
        self.tasks.pop(t.task_id, None)
        out: list = [Fail(t, TaskCancelledError(f"task {t.fn_name} was cancelled"))]
        if t.state == TaskState.CALL_WAITING:  # it leaves its actor line: later calls go
            line = self.actor_lines.get(t.target)
            if line is not None and t in line:
                line.remove(t)
                out.extend(self._ready_calls(t.target))
        return out
