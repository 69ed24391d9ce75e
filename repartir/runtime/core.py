"""The per-process runtime client: submit tasks, own their results, get and wait.

Every process that submits work -- the driver, and a worker running a task that submits
tasks -- has one :class:`CoreClient` bound to its slot of the scheduler segment::

    submit ──▶ task record ──▶ own deque (bottom) ──▶ stolen by a worker (top)
                                                          │ runs the task
    get/wait ◀── object table ◀── poll() ◀── own inbox ◀──┘ completion (result location)

* **Object table** (owner side): ``object id -> [refcount, location, remote waiters]``.  A
  location is ``("i", blob)`` for an inline object, ``("a", offset, nbytes, generation)``
  for one in the arena, ``("e", payload)`` for a task error, and ``None`` while pending.
  ``ObjectRef`` instances hold the counts; their ``__del__`` only appends to
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
import concurrent.futures
import logging
import os
import pickle
import threading
import time
from typing import Any, Sequence

from ..errors import (ActorDiedError, GetTimeoutError, ObjectLostError, RepartirSystemError,
                      SerializationError, TaskCancelledError, WorkerCrashedError)
from ..ids import new_object_id, new_task_id, return_id, task_of
from ..scheduler import record
from ..scheduler.deque import Backlog
from ..scheduler.record import HEADER as RECORD_HEADER
from ..serialization import Serialized, deserialize, deserialize_at, error_from_payload, serialize
from .actor_life import actor_dead_error, end_actor
from .messages import ARENA_SPEC, Dep, TaskOptions, demand_vector, name_bad_argument, stop_task
from .protocol import (MSG_ACTOR_EPOCH, MSG_CALL, MSG_CRASHED, MSG_DONE, MSG_ITEM, MSG_LARGE,
                       MSG_OBJECT, MSG_OWNER_DIED, MSG_RELEASE, MSG_REQUEST, Crashed, Large,
                       Message, Status, StopReason, StopRequest, decode, encode)
from .objectref import ObjectRef, capture_refs
from .streaming import StreamLink
from .task_state import after_crash, retries_error

_log = logging.getLogger("repartir")

__all__ = ["CoreClient", "RECORD_HEADER"]

class _Task:
    __slots__ = ("task_id", "return_ids", "fn_name", "spec", "deps", "pending", "held",
                 "record", "spec_block", "args_block", "attempt", "opts", "cancelled",
                 "target", "actor_id", "epoch", "stream")


_EMPTY_ARGS = ("i", serialize(((), {})).to_bytes())
_ERROR_KINDS = ("e", "x")  # locations that stand for an error (see value())
_HOLDS_REFS = "holds refs"  # in an object entry's held list: its value holds refs


class CoreClient:
    """The runtime of one process, bound to ``slot`` of the node's scheduler segment."""

    def __init__(self, segment, arena, slot: int, config, session: str) -> None:
        self.segment = segment
        self.arena = arena
        self.slot = slot
        self.config = config
        self.session = session
        self.deque = segment.deques[slot]
        self.inbox = segment.inboxes[slot]
        self.table: dict[bytes, list] = {}
        self.tasks: dict[bytes, _Task] = {}
        self.waiting: dict[bytes, list[_Task]] = {}
        self.backlog = Backlog(len(self.deque.levels))
        self.dead_refs: collections.deque[bytes] = collections.deque()
        self.dead_pins: collections.deque[int] = collections.deque()  # of borrowed refs
        self.dead_actors: collections.deque[tuple] = collections.deque()  # last handle died
        self.borrowed: dict[bytes, Any] = {}
        self.borrow_counts: dict[bytes, int] = {}  # borrowed ObjectRefs alive, per object
        self.dead_borrows: collections.deque[bytes] = collections.deque()
        self.borrow_holds: dict[bytes, int] = {}  # arena holds of locations heard of late
        self.requested: set[bytes] = set()
        self.lent_from: dict[bytes, int] = {}  # object id -> slot of its owner, who lent it
        self.functions: dict[bytes, tuple[int, int]] = {}
        self._headers: dict[tuple, tuple[bytes, bytes]] = {}  # (options, holds refs) -> parts
        self.actor_queues: dict[int, collections.deque] = {}  # calls not yet sent, per actor
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

    # -- refs ----------------------------------------------------------------------

    def owns(self, object_id: bytes) -> bool:
        return object_id in self.table

    def make_ref(self, object_id: bytes) -> ObjectRef:
        with self._lock:
            self.table[object_id][0] += 1
        return ObjectRef(object_id, self.slot, self, True)

    def note_borrowed(self, object_id: bytes, loc) -> None:
        """A borrowed ref to ``object_id`` was made in this process (``loc``: its location,
        ``None`` while unknown).  Counted, so that the entry goes with the last such ref."""
        self.borrow_counts[object_id] = self.borrow_counts.get(object_id, 0) + 1
        if loc is not None:
            self.borrowed[object_id] = loc

    def _drop_borrowed(self) -> None:
        counts = self.borrow_counts
        while self.dead_borrows:
            oid = self.dead_borrows.popleft()
            n = counts.get(oid, 0) - 1
            if n > 0:
                counts[oid] = n
                continue
            counts.pop(oid, None)
            self.borrowed.pop(oid, None)
            self.requested.discard(oid)
            off = self.borrow_holds.pop(oid, None)
            if off is not None:
                self.arena.let_go(off)
            owner = self.lent_from.pop(oid, None)
            if owner is not None:  # the loan ends with the last ref here
                self.post(owner, encode((MSG_RELEASE, oid)))

    def lend(self, object_id: bytes) -> bool:
        """A ref to ``object_id`` (owned here, pending) leaves in a result: hold one count
        for the receiver until it sends ``MSG_RELEASE``, so that the object, and this
        process's answer to requests for it, outlive the task's own refs (Ray's borrowers,
        reduced to one loan per result).  ``False`` when this process no longer owns it."""
        with self._lock:
            e = self.table.get(object_id)
            if e is None:
                return False
            e[0] += 1
            return True

    def _adopt(self, pins, first: bool) -> list:
        """The held list of an object entry made from a result's export pins: a marker that
        its value holds refs, the arena pins (on the ``first`` entry only: each is released
        once) and the loans, each counted as a borrow of this process until the entry is
        freed."""
        held: list = [_HOLDS_REFS]
        for pin in pins:
            if type(pin) is int:
                if first:
                    held.append(pin)
            else:
                owner, oid = pin
                self.note_borrowed(oid, None)
                self.lent_from[oid] = owner
                held.append(pin)
        return held

    def location_for_export(self, object_id: bytes):
        e = self.table.get(object_id)
        if e is not None:
            return e[1]
        return self.borrowed.get(object_id)

    # -- storing values ------------------------------------------------------------

    def store(self, s: Serialized) -> tuple:
        """Where a serialized value goes: inline under the threshold, else the arena (a
        block owned by this process; a task's owner claims its results on arrival)."""
        if s.nbytes < self.config.inline_threshold:
            return ("i", s.to_bytes())
        arena = self.arena
        off = arena.allocate(s.nbytes, self.slot)
        s.write_into(arena.writable(off, s.nbytes))
        return ("a", off, s.nbytes, arena.generation(off))

    def claim_results(self, locs: list) -> bool:
        """Take ownership of the arena blocks of a result message; returns False, having
        released those it took, when one is gone (its worker died and the node released
        what it owned before the message was read: the result is lost)."""
        taken = []
        for loc in locs:
            if loc[0] == "a":
                if not self.arena.claim(loc[1], loc[3], self.slot):
                    for off in taken:
                        self.arena.release(off)
                    return False
                taken.append(loc[1])
        return True

    def drop_results(self, locs: list) -> None:
        """Free the arena blocks of a result nobody wants (a duplicate, a cancelled task)."""
        for loc in locs:
            if loc[0] == "a" and self.arena.claim(loc[1], loc[3], self.slot):
                self.arena.release(loc[1])

    def put(self, value: Any) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("put() of an ObjectRef is not allowed: pass the ref itself instead")
        if self.dead_refs:  # free what was dropped first: its warm block is reused
            with self._lock:
                self._process_dead()
        with capture_refs() as nested:
            s = serialize(value, "the value passed to put()")
        loc = self.store(s)
        oid = new_object_id()
        with self._lock:
            self.table[oid] = [0, loc, None, nested or None]
            return self.make_ref(oid)

    def value(self, loc) -> Any:
        kind = loc[0]
        if kind == "i":
            return deserialize(memoryview(loc[1]))
        if kind == "a":
            value, anchor = deserialize_at(self.arena, loc[1], loc[2])
            self.arena.anchor(loc[1], anchor)
            return value
        if kind == "e":  # the task raised
            raise error_from_payload(loc[1])
        if kind == "x":  # the runtime stopped the task (crash, cancel, timeout)
            raise pickle.loads(loc[1])
        raise ObjectLostError(f"object location {loc!r} is not understood")

    # -- functions -----------------------------------------------------------------

    def export_function(self, key: bytes, blob_factory) -> tuple[int, int]:
        """Store a function's cloudpickle blob in the arena once; returns (offset, nbytes)."""
        loc = self.functions.get(key)
        if loc is None:
            blob = blob_factory()
            off = self.arena.allocate(len(blob), self.slot)
            self.arena.writable(off, len(blob))[:] = blob
            loc = self.functions[key] = (off, len(blob))
        return loc

    # -- submitting ----------------------------------------------------------------

    def demand_vector(self, num_cpus: float, num_gpus: float, resources: dict) -> tuple:
        """The resource vector of a task on this node (see :func:`messages.demand_vector`)."""
        names = ["CPU", "GPU"] + [n for n, _ in self.config.resources]
        return demand_vector(names, self.segment.totals(), num_cpus, num_gpus, resources)

    def submit(self, fn_key, fn_loc: tuple[int, int], fn_name: str, args: Sequence,
               kwargs: dict, opts: TaskOptions, target: int | None = None,
               stream=None, actor_id: bytes | None = None) -> list[ObjectRef]:
        """Submit a task; returns its ``opts.num_returns`` refs at once (none for a
        streaming task: see :meth:`stream`).

        ``target`` is ``None`` for a task (pushed to this process's deque, stolen by any
        worker) or the slot of an actor (``fn_key`` is then the method name; the call goes
        to the actor's inbox, after the earlier calls of this process to that actor).

        Raises:
            SerializationError: an argument cannot be pickled (the message names it).
        """
        num_returns = opts.num_returns
        deps: list[ObjectRef] = []
        if args:
            args = list(args)
            for i, a in enumerate(args):
                if type(a) is ObjectRef:
                    deps.append(a)
                    args[i] = Dep(len(deps) - 1)
        if kwargs:
            kwargs = dict(kwargs)
            for k, a in kwargs.items():
                if type(a) is ObjectRef:
                    deps.append(a)
                    kwargs[k] = Dep(len(deps) - 1)
        if deps:
            self._check_session(deps)
        args_block = None
        if args or kwargs:
            with capture_refs() as nested:
                try:
                    s = serialize((tuple(args), kwargs))
                except SerializationError:
                    raise name_bad_argument(fn_name, args, kwargs) from None
            args_loc = self.store(s)  # large arguments go to the arena once, as Ray does
            if args_loc[0] == "a":
                args_block = args_loc[1]
        else:
            args_loc, nested = _EMPTY_ARGS, []
        task_id = new_task_id()
        helper = self.helper
        if helper is not None and helper.calls:  # a task's child: cancelled with it
            helper.children.setdefault(helper.calls[-1], set()).add(task_id)
        t = _Task()
        t.task_id = task_id
        t.return_ids = [return_id(task_id, i) for i in range(max(num_returns, 0))]
        t.fn_name = fn_name
        t.spec = (fn_key, fn_loc[0], fn_loc[1], fn_name, args_loc, num_returns)
        t.deps = deps
        t.held = nested
        t.spec_block = None
        t.args_block = args_block
        t.record = None
        t.attempt = 0
        t.opts = opts
        t.cancelled = False
        t.target = target
        t.actor_id = actor_id
        t.epoch = 0
        t.stream = None if stream is None else StreamLink(stream)
        if stream is not None:
            stream._task_id = task_id
        with self._lock:
            refs = []
            for rid in t.return_ids:
                self.table[rid] = [1, None, None, None]
                refs.append(ObjectRef(rid, self.slot, self, True))
            self.tasks[task_id] = t
            pending = 0
            for d in deps:
                if self._loc_of(d) is None:
                    pending += 1
                    self.waiting.setdefault(d._id, []).append(t)
            t.pending = pending
            if target is not None:
                self.actor_queues.setdefault(target, collections.deque()).append(t)
                self._send_calls(target)
            elif not pending:
                self._push(t)
        return refs

    def _body(self, t: _Task) -> bytes:
        fn_key, fn_off, fn_len, fn_name, args_loc, nret = t.spec
        dep_locs = [self._loc_of(d) for d in t.deps]
        return pickle.dumps((fn_key, fn_off, fn_len, fn_name, args_loc, dep_locs, nret), 5)

    def _push(self, t: _Task) -> None:
        """Build the task's record (dependencies are ready now) and push it."""
        body = self._body(t)
        o = t.opts
        holds = self._holds_refs(t) if (t.held or t.deps) else False
        if len(body) + RECORD_HEADER.size > self.deque.max_payload:
            off = self.arena.allocate(len(body), self.slot)
            self.arena.writable(off, len(body))[:] = body
            t.spec_block = off
            rec = record.pack_header(record.SPEC_IN_ARENA, o.priority, self.slot, t.task_id,
                                     o.demand, o.timeout, holds) + ARENA_SPEC.pack(off, len(body))
        else:
            parts = self._headers.get((o, holds))
            if parts is None:
                parts = self._headers[(o, holds)] = record.header_parts(
                    record.SPEC_INLINE, o.priority, self.slot, o.demand, o.timeout, holds)
            rec = parts[0] + t.task_id + parts[1] + body
        t.record = rec
        if self.batch_submits:
            # The driver batches: while every worker is busy nobody could take the task
            # now, so records gather in the backlog and go in with one lock per batch --
            # at once when a worker idles, at 64 records, at the next get/wait, or by the
            # pump thread within a few milliseconds.
            self.backlog.append(rec)
            if len(self.backlog) >= 64 or self.segment.idle_workers():
                self._flush_backlog()
            return
        if self.backlog or not self.deque.push(rec):
            self.backlog.append(rec)
            self._flush_backlog()
        self.segment.notify_work(1)

    def _send_calls(self, slot: int) -> None:
        """Send this process's queued calls to the actor at ``slot``, in submission order,
        up to the first one still waiting for an argument."""
        q = self.actor_queues.get(slot)
        while q and q[0].pending == 0:
            t = q.popleft()
            if t.cancelled:
                continue
            self._send_call(t)

    def _send_call(self, t: _Task) -> None:
        err = actor_dead_error(self.segment, t.target, t.actor_id)
        if err is not None:
            self.tasks.pop(t.task_id, None)
            self._finish(t, [("x", pickle.dumps(err, 5))] * len(t.return_ids))
            return
        t.epoch = epoch = self.segment.actor_epoch(t.target)[0]
        if t.spec_block is not None:  # re-sent after a restart
            self.arena.release(t.spec_block)
            t.spec_block = None
        body = self._body(t)
        if len(body) > self.inbox.max_message // 2:
            off = self.arena.allocate(len(body), self.slot)
            self.arena.writable(off, len(body))[:] = body
            t.spec_block = off
            msg = encode((MSG_CALL, t.task_id, self.slot, None, (off, len(body)), epoch))
        else:
            msg = encode((MSG_CALL, t.task_id, self.slot, body, None, epoch))
        t.record = msg
        self.post(t.target, msg)

    def _flush_backlog(self) -> None:
        """Move the backlog into this process's deque as far as it fits (records stay in
        the backlog, in order per priority, while workers are busy and the deque is
        full), and wake workers for what went in."""
        pushed = self.backlog.flush_into(self.deque)
        if pushed:
            self.segment.notify_work(pushed)

    # -- messages ------------------------------------------------------------------

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

    def open_large(self, msg: Large) -> Message | None:
        """The message inside a :class:`~.protocol.Large` one (its block is freed), or
        ``None`` when its sender died before this process claimed it (the node freed the
        block)."""
        off, arena = msg.offset, self.arena
        if not arena.claim(off, msg.generation, self.slot):
            return None
        try:
            return decode(arena.view(off, msg.nbytes))
        finally:
            arena.release(off)

    # -- completions ---------------------------------------------------------------

    def poll(self) -> int:
        """Handle what arrived in the inbox, dropped refs and the backlog; returns the
        number of messages handled (0 when another thread is polling)."""
        if not (self.dead_refs or self.dead_pins or self.backlog or self.inbox.pending()
                or self.arena._pending_unpins or self.dead_actors or self.dead_borrows):
            return 0  # nothing to do: no lock taken (this runs in every spin of get)
        if not self._poll_lock.acquire(blocking=False):
            return 0
        try:
            msgs = self.inbox.drain()
            with self._lock:
                for m in msgs:
                    try:
                        msg = decode(m)
                        if msg.kind == MSG_LARGE:
                            msg = self.open_large(msg)
                            if msg is None:
                                continue
                        self._handle(msg)
                    except Exception:  # a runtime bug: report it, keep the session usable
                        _log.exception("repartir: a message could not be handled")
                if msgs:
                    self._version += 1
                if self.dead_refs:
                    self._process_dead()
                while self.dead_pins:
                    self.arena.let_go(self.dead_pins.popleft())
                if self.dead_borrows:
                    self._drop_borrowed()
                self.arena.drain_unpins()
                if self.backlog:
                    self._flush_backlog()
            while self.dead_actors:
                end_actor(self, *self.dead_actors.popleft())
            return len(msgs)
        finally:
            self._poll_lock.release()

    def _handle(self, msg: Message) -> None:
        kind = msg.kind
        if kind == MSG_DONE:
            _, task_id, status, payload, pins = msg
            t = self.tasks.pop(task_id, None)
            results = status == Status.OK and isinstance(payload, list)
            if t is None:
                # A duplicate (a task retried after a crash reported too late), or a task of
                # an earlier process in this slot: nobody wants its results.
                if results:
                    self.drop_results(payload)
                self._unpin_all(pins)
                return
            if results and not self.claim_results(payload):
                self._unpin_all(pins)
                self.tasks[task_id] = t
                self._handle(Crashed(MSG_CRASHED, task_id,
                                     "its process died as it sent the result",
                                     StopReason.CRASH))
                return
            if t.stream is not None:  # a streaming task ended: payload is the item count
                if status != Status.OK and self._should_retry(t, payload):
                    # as in Ray: run the generator again; the items already delivered are
                    # dropped as they come again (by index), the caller sees one stream
                    self.tasks[task_id] = t
                    self._retry(t)
                    return
                t.stream.end(None if status == Status.OK else ("e", payload))
                self._finish(t, [])
                return
            if status == Status.OK:
                locs = payload
                self._keep_pins(t.return_ids, pins)
            else:
                if self._should_retry(t, payload):
                    self.tasks[task_id] = t
                    self._retry(t)
                    return
                locs = [("e", payload)] * len(t.return_ids)
            self._finish(t, locs)
        elif kind == MSG_ITEM:
            _, task_id, index, loc, pins = msg
            t = self.tasks.get(task_id)
            if (t is None or t.stream is None or not t.stream.alive()
                    or index < t.stream.delivered):  # (a retry yields them again)
                self.drop_results([loc])
                self._unpin_all(pins)
                return
            if not self.claim_results([loc]):
                self._unpin_all(pins)
                return  # the stream ends with the crash of its process
            oid = new_object_id()  # any number of items (return ids stop at 65,534)
            self.table[oid] = [0, loc, None, None if pins is None else self._adopt(pins, True)]
            t.stream.delivered = index + 1
            t.stream.add(self.make_ref(oid))
        elif kind == MSG_CALL:
            if self.actor_epoch is None or msg.epoch == self.actor_epoch:
                self.calls.append(msg)
            # else: sent to an earlier process of this actor; its caller re-sends it
        elif kind == MSG_ACTOR_EPOCH:
            self._on_actor_epoch(msg.slot, msg.actor_id, msg.epoch, msg.dead, msg.cause,
                                 msg.running)
        elif kind == MSG_CRASHED:
            _, task_id, detail, reason = msg
            t = self.tasks.get(task_id)
            if t is None:
                return
            err = after_crash(fn_name=t.fn_name, reason=reason, detail=detail,
                              cancelled=t.cancelled, attempt=t.attempt,
                              max_retries=t.opts.max_retries, actor_call=t.target is not None,
                              timeout=t.opts.timeout)
            if err is None:
                self._retry(t)
                return
            del self.tasks[task_id]
            if t.stream is not None:
                t.stream.end(("x", pickle.dumps(err, 5)))
            self._finish(t, [("x", pickle.dumps(err, 5))] * len(t.return_ids))
        elif kind == MSG_REQUEST:
            _, object_id, reply_slot = msg
            e = self.table.get(object_id)
            if e is None:  # a runtime error, raised as is by the asker's get (no TaskError)
                err = ObjectLostError(
                    f"object {object_id.hex()} was freed by its owner (slot {self.slot}) "
                    f"before this process asked for its value: no ref to it was left there")
                self._reply(reply_slot, object_id, ("x", pickle.dumps(err, 5)))
            elif e[1] is not None:
                self._reply(reply_slot, object_id, e[1])
            else:
                if e[2] is None:
                    e[2] = []
                e[2].append(reply_slot)
        elif kind == MSG_RELEASE:
            self.dead_refs.append(msg.object_id)  # the loan's count goes (poll does it next)
        elif kind == MSG_OWNER_DIED:
            dead = msg.slot
            for oid, owner in list(self.lent_from.items()):
                if owner == dead and self.borrowed.get(oid) is None:
                    err = ObjectLostError(
                        f"object {oid.hex()} was lost: the process that owned it (slot "
                        f"{dead}) died before it was ready. Its task returned the ref "
                        f"pending; get() it inside that task to keep the value.")
                    loc = ("x", pickle.dumps(err, 5))
                    self.borrowed[oid] = loc
                    futures = self.futures.pop(oid, None)
                    if futures:
                        self._resolve(futures, loc)
        elif kind == MSG_OBJECT:
            _, object_id, loc = msg
            if object_id not in self.borrow_counts:
                return  # every ref to it died meanwhile
            if loc[0] == "a":  # hold the block while our refs live, if it still is that object
                if self.arena.hold_if_generation(loc[1], loc[3]):
                    self.borrow_holds[object_id] = loc[1]
                else:
                    loc = ("x", pickle.dumps(ObjectLostError(
                        f"object {object_id.hex()} was freed by its owner before this "
                        f"process could hold it: keep a ref to it in its owner"), 5))
            self.borrowed[object_id] = loc
            futures = self.futures.pop(object_id, None)
            if futures:
                self._resolve(futures, loc)
        else:
            raise RepartirSystemError(
                f"slot {self.slot} received a message of unknown kind {kind!r}")

    def _on_actor_epoch(self, slot: int, actor_id: bytes, epoch: int, dead: bool, cause: str,
                        running: list) -> None:
        """An actor's process died: fail or re-send, in submission order, this process's
        calls that were sent to the earlier process and have not completed."""
        lost = [t for t in self.tasks.values()
                if t.target == slot and t.actor_id == actor_id and t.record is not None
                and t.epoch < epoch]
        for t in lost:
            if not dead and t.task_id in running:
                t.attempt += 1  # it was running: a retry counts
            if dead or t.attempt > t.opts.max_retries:
                why = cause if dead else (
                    f"its process died while running {t.fn_name}, which was tried "
                    f"{t.attempt} time(s) (max_task_retries={t.opts.max_retries})")
                err = ActorDiedError(f"the actor of {t.fn_name} died: {why}")
                self.tasks.pop(t.task_id, None)
                if t.stream is not None:
                    t.stream.end(("x", pickle.dumps(err, 5)))
                self._finish(t, [("x", pickle.dumps(err, 5))] * len(t.return_ids))
            else:
                self._send_call(t)

    def _keep_pins(self, return_ids: list, pins: list | None) -> None:
        """Export pins of refs inside a result stay until that result is freed.  ``pins`` is
        ``None`` when the result holds no refs; otherwise every return entry is marked as
        holding refs (see :meth:`_may_wait`), and the pins stay with the first one alive."""
        if pins is None:
            return
        kept = False
        for rid in return_ids:
            e = self.table.get(rid)
            if e is not None:
                e[3] = (e[3] or []) + self._adopt(pins, not kept)
                kept = True
        if not kept:
            self._unpin_all(pins)

    def _may_wait(self, ref: ObjectRef, dep: bool) -> bool:
        """Whether a task holding ``ref`` (a top-level dependency when ``dep``, ready then;
        else a ref nested in its arguments) may, through it, wait on another task: its
        object is pending, or holds refs, or is borrowed (its value is not known here)."""
        e = self.table.get(ref._id)
        if e is None:
            return True
        return bool(e[3]) or (not dep and e[1] is None)

    def _holds_refs(self, t: _Task) -> bool:
        """Whether the task must never run on top of a task blocked in ``get`` (the record
        flag ``HOLDS_REFS``): it might wait on that task, which cannot go on until it
        returns.  A task holding no such refs can only wait on tasks it submits itself."""
        may_wait = self._may_wait
        if t.held and any(may_wait(r, False) for r in t.held if type(r) is ObjectRef):
            return True
        return bool(t.deps) and any(may_wait(d, True) for d in t.deps)

    def _unpin_all(self, pins) -> None:
        """Give back the export pins and loans of a result nobody keeps."""
        for pin in pins or ():
            if type(pin) is int:
                self.arena.unpin(pin)
            else:
                self.post(pin[0], encode((MSG_RELEASE, pin[1])))

    def _should_retry(self, t: _Task, payload: bytes) -> bool:
        retry = t.opts.retry_exceptions
        if not retry or t.cancelled or t.attempt >= t.opts.max_retries:
            return False  # (decided before the payload is unpickled: the common case)
        return retries_error(retry_exceptions=retry, cancelled=t.cancelled, attempt=t.attempt,
                             max_retries=t.opts.max_retries,
                             cause=error_from_payload(payload).cause)

    def _retry(self, t: _Task) -> None:
        t.attempt += 1
        if t.target is not None:
            self._send_call(t)
            return
        self.backlog.append(t.record)
        self._flush_backlog()

    def _finish(self, t: _Task, locs: list) -> None:
        for rid, loc in zip(t.return_ids, locs):
            e = self.table.get(rid)
            if e is None:  # every ref was dropped before the result came
                if loc[0] == "a":
                    self.arena.release(loc[1])
                continue
            e[1] = loc
            if e[2]:
                for s in e[2]:
                    self._reply(s, rid, loc)
                e[2] = None
            for w in self.waiting.pop(rid, ()):
                w.pending -= 1
                if w.pending == 0:
                    if w.target is not None:
                        self._send_calls(w.target)
                    elif not w.cancelled:
                        self._push(w)
            futures = self.futures.pop(rid, None)
            if futures:
                self._resolve(futures, loc)
        if t.spec_block is not None:
            self.arena.release(t.spec_block)
            t.spec_block = None
        if t.args_block is not None:
            self.arena.release(t.args_block)
            t.args_block = None
        t.deps = t.held = None

    def _resolve(self, futures: list, loc) -> None:
        try:
            value = self.value(loc)
        except BaseException as exc:  # the task's error goes into the future
            for f in futures:
                if not f.done():
                    f.set_exception(exc)
            return
        for f in futures:
            if not f.done():
                f.set_result(value)

    def future(self, ref: ObjectRef):
        """A ``concurrent.futures.Future`` that gets ``ref``'s value (or error) once ready;
        resolved by whichever thread polls (the driver's pump thread at the latest)."""

        f: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            loc = self._loc_of(ref)
            if loc is None:
                self.futures.setdefault(ref._id, []).append(f)
                f._repartir_ref = ref  # keeps the object alive until resolved
                return f
        self._resolve([f], loc)
        return f

    def _reply(self, slot: int, object_id: bytes, loc) -> None:
        self.post(slot, encode((MSG_OBJECT, object_id, loc)))

    def _process_dead(self) -> None:
        table, arena = self.table, self.arena
        while self.dead_refs:
            oid = self.dead_refs.popleft()
            e = table.get(oid)
            if e is None:
                continue
            e[0] -= 1
            if e[0] <= 0:
                del table[oid]
                if e[2]:  # borrowers wait for a value that will never come: tell them
                    lost = ("x", pickle.dumps(ObjectLostError(
                        f"object {oid.hex()} was freed by its owner (slot {self.slot}) while "
                        f"still pending: no ref to it was left there"), 5))
                    for s in e[2]:
                        self._reply(s, oid, lost)
                loc = e[1]
                if loc is not None and loc[0] == "a":
                    arena.release(loc[1])
                if e[3]:  # refs held by the value, export pins and loans of refs inside it
                    for x in e[3]:
                        if type(x) is int:
                            arena.unpin(x)
                        elif type(x) is tuple:
                            self.dead_borrows.append(x[1])

    # -- get and wait --------------------------------------------------------------

    def _loc_of(self, ref: ObjectRef):
        e = self.table.get(ref._id)
        if e is not None:
            return e[1]
        loc = self.borrowed.get(ref._id)
        if loc is None and ref._id not in self.requested and not ref._owned:
            self.requested.add(ref._id)
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
                return self._wait(refs, num_returns, timeout, fail_fast)
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

    def _wait(self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None,
              fail_fast: bool = False) -> list[bool]:
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
                            failed = failed or loc[0] in _ERROR_KINDS
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
            if helper is not None and helper.help():
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

    # -- cancellation ----------------------------------------------------------------

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
                if loc is not None and loc[0] in _ERROR_KINDS:
                    self.value(loc)  # raises the task's error
            missing = ready.count(False)
            raise GetTimeoutError(
                f"get() timed out after {timeout} s with {missing} of {len(refs)} objects "
                f"not ready. Raise timeout=, or use repartir.wait() to take what is ready."
            )
        with self._lock:
            locs = [self._loc_of(r) for r in refs]
        return [self.value(loc) for loc in locs]

    # -- statistics ------------------------------------------------------------------

    def num_objects(self) -> int:
        return len(self.table)

    def tasks_in_flight(self) -> int:
        return len(self.tasks)
