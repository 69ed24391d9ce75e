"""The per-process runtime client, the core worker: submit tasks, own their results, get and
wait.

Its state is two pure state machines (``docs/architecture.md``, "Runtime state machines"):
the task manager (``task_manager.py``) and the object table (``object_table.py``).
:class:`CoreClient` decodes what arrives, feeds them and carries out the instructions they
return (:meth:`CoreClient._carry_out`); its I/O jobs live in one module each, as the classes
it is made of: ``ownership.py`` (refs, values in the arena, futures), ``submitting.py``
(records, pushes, actor calls), ``completions.py`` (the inbox), ``waiting.py`` (get, wait,
helping), ``cancelling.py``, ``spilling.py`` (making room in a full arena), ``handles.py``
(actor handles: this process's count, the node's events, actor operations on the node).

Every process that submits work -- the driver, and a worker running a task that submits
tasks -- has one :class:`CoreClient` bound to its slot of the scheduler segment::

    submit ──▶ task record ──▶ own deque (bottom) ──▶ stolen by a worker (top)
                                                          │ runs the task
    get/wait ◀── object table ◀── poll() ◀── own inbox ◀──┘ completion (result location)

* **Object table** (owner side): ``object id -> [refcount, location, remote waiters, held]``
  (locations: ``protocol.Location``; ``None`` while pending).  ``ObjectRef`` instances hold
  the counts; their ``__del__`` only appends to
  :attr:`dead_refs`, which :meth:`poll` processes (no lock is ever taken inside ``__del__``).
* **Dependencies**: top-level ``ObjectRef`` arguments are replaced by markers; the task is
  pushed once every one of them is ready, with their locations in the record, so a worker
  never waits for an argument.
* **Waiting**: spin briefly (``spin_us``), then park on the inbox eventcount; while waiting
  for many results, sleep-poll instead, so a stream of completions does not cost a wake-up
  each.
"""

from __future__ import annotations

import collections
import threading
import time

from ..scheduler.deque import Backlog
from ..scheduler.record import HEADER as RECORD_HEADER
from .messages import stop_task
from .protocol import MSG_LARGE, MSG_OBJECT, MSG_RELEASE, encode
from .cancelling import Cancelling
from .completions import Completions
from .handles import Handles
from .object_table import (FreeBlock, LetGo, ReleaseLoan, Reply, Resolved, Unpin,
                           ObjectTable)
from .ownership import Ownership
from .task_manager import Fail, Push, Retry, SendCall, Stop, TaskManager
from .spilling import Spilling
from .submitting import Submitting
from .waiting import Waiting


__all__ = ["CoreClient", "RECORD_HEADER"]

class CoreClient(Ownership, Submitting, Completions, Waiting, Cancelling, Spilling, Handles):
    """The runtime of one process, bound to ``slot`` of the node's scheduler segment."""

    def __init__(self, segment, arena, slot: int, config, session: str) -> None:
        self.segment = segment
        self.arena = arena
        self.slot = slot
        self.config = config
        self.session = session
        self.deque = segment.deques[slot]
        self.inbox = segment.inboxes[slot]
        self.objects = ObjectTable(slot)  # pure state: owned, borrowed, requested objects
        self.manager = TaskManager()  # pure state: the tasks this process owns
        self.table = self.objects.owned  # (read-only views for the hot paths of get/wait)
        self.borrowed = self.objects.borrowed
        self.tasks = self.manager.tasks
        self.backlog = Backlog(len(self.deque.levels))
        self.dead_refs: collections.deque[bytes] = collections.deque()
        self.dead_pins: collections.deque[int] = collections.deque()  # of borrowed refs
        self.dead_actors: collections.deque[bytes] = collections.deque()  # last handle here died
        # in the driver: (slot, actor id, class name) of actors whose last handle anywhere
        # died (the node's count, see handles.py), to end in poll
        self.actor_ends: collections.deque[tuple] = collections.deque()
        self.dead_borrows: collections.deque[bytes] = collections.deque()
        self.functions: dict[bytes, tuple[int, int]] = {}
        self._headers: dict[tuple, tuple[bytes, bytes]] = {}  # (options, holds refs) -> parts
        self.calls: collections.deque = collections.deque()  # in an actor: calls received
        self.futures: dict[bytes, list] = {}  # object id -> concurrent.futures.Future list
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()
        self._getters = 0
        self._local = threading.local()
        self.helper = None  # in a worker: runs queued tasks and lends the CPU while get waits
        self._version = 0  # bumped whenever poll() handled messages
        self.node = None  # the Node, in the process that runs it (the driver)
        self.actor_epoch: int | None = None  # in an actor's process: calls of other epochs drop
        self.batch_submits = False  # only where a pump thread flushes the backlog
        self._spin = config.spin_us / 1e6
        self.closed = False
        arena.make_room = self.make_room  # a full arena spills this process's objects
        self._init_handles()

    def post(self, slot: int, msg: bytes) -> None:
        """Put ``msg`` into the inbox of ``slot``, waiting while it is full.  A message too
        large for an inbox (a quarter of its ring) goes into an arena block owned by this
        process until the receiver claims it; only a small ``MSG_LARGE`` message travels.

        Raises:
            ObjectStoreFullError: the message is too large for an inbox and the arena has
                no room for it either.
        """
        inbox = self.segment.inboxes[slot]
        if len(msg) > inbox.max_message:
            arena = self.arena
            off = arena.allocate(len(msg), self.slot)
            arena.writable(off, len(msg))[:] = msg
            msg = encode((MSG_LARGE, off, len(msg), arena.generation(off)))
        while not inbox.put(msg):  # the receiver is draining: wait a bit
            if self.segment.shutting_down:
                return
            time.sleep(0.0005)

    def _carry_out(self, instrs: list) -> None:
        """Do what the object table and the task manager decided (their instructions, in
        order)."""
        for i in instrs:
            kind = type(i)
            if kind is Push:  # (the common one: tested first, called directly)
                self._push(i[0])
            else:
                self._handlers[kind](self, i)

    _handlers = {
        Reply: lambda self, i: self.post(i.slot, encode((MSG_OBJECT, i.object_id, i.loc))),
        FreeBlock: lambda self, i: self.arena.release(i.offset),
        Unpin: lambda self, i: self.arena.unpin(i.offset),
        LetGo: lambda self, i: self.arena.let_go(i.offset),
        ReleaseLoan: lambda self, i: self.post(i.owner, encode((MSG_RELEASE, i.object_id))),
        Resolved: lambda self, i: self._resolved(i),
        SendCall: lambda self, i: self._send_call(i.task),
        Retry: lambda self, i: self._retry(i.task),
        Fail: lambda self, i: self._fail(i.task, i.error),
        Stop: lambda self, i: stop_task(self.segment, i.task_id, i.request, i.force),
    }

    def num_objects(self) -> int:
        return len(self.table)

    def tasks_in_flight(self) -> int:
        return len(self.tasks)
