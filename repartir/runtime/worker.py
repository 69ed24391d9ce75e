"""A worker process: pop its own deque, else steal, run the task, send the completion.

Started by the node as ``python -m repartir.runtime.worker`` (a fresh interpreter: the
*spawn* start method, never ``fork``), with the scheduler segment, the arena and the read end
of a *life pipe* inherited as file descriptors.  The node holds the pipe's write end; when the
node's process dies, however it dies, the pipe reads end-of-file and the worker exits at once,
also in the middle of a task.

Main loop::

    record = own deques .pop()  (LIFO, high priority first) ── else ──▶ steal from a random
       │   only if the record's resources can be reserved        victim (FIFO, up to half)
       ▼                                                         ── else ──▶ spin, then park
    decode spec ─ function from cache or arena ─ args (dependency values are zero-copy views)
       ▼
    call ─▶ results: inline, or written into the arena ─▶ completion into the owner's inbox

While a task waits in ``get``, the worker *helps*: it runs queued tasks (nested on its stack)
and lends its CPU to the node's pool, so one worker can run a whole recursive computation.
``SIGUSR1`` asks the worker to stop its current task (cancel, timeout): the handler raises
inside the task if it is still the one the request names.
"""

from __future__ import annotations

import json
import mmap
import os
import pickle
import random
import shutil
import signal
import sys
import threading
import time

from ..config import EXTRA_IDLE_S, Config
from ..errors import ObjectStoreFullError, RepartirSystemError, TaskCancelledError, TaskInterrupted
from ..scheduler import policy, record
from ..scheduler.segment import MAX_NESTING, PinLedger, Segment, SlotState
from ..store.arena import Arena
from ..sync import count_held_mutexes, defer_signal, mutexes_held
from . import context
from .actor_process import run_actor
from .core import RECORD_HEADER, CoreClient
from .executor import drop_message_blocks, exit_process, run_function, stop_error
from .messages import ARENA_SPEC, Dep, failed_message
from .protocol import MSG_DONE, MSG_ITEM, StopRequest, decode
from .threads import ThreadLimit

__all__ = ["Worker", "main"]

_NONE, _FREE, _BUSY = 0, 1, 2  # CPU token states


class Worker:
    def __init__(self, client: CoreClient, ncpus: int, blas_threads: int | None = None) -> None:
        self.client = client
        self.seg = client.segment
        self.arena = client.arena
        self.slot = client.slot
        self.own = self.seg.deques[self.slot]
        self.functions: dict[bytes, object] = {}
        self.rng = random.Random(os.getpid())
        self.ncpus = ncpus
        self.max_spinners = policy.max_spinners(ncpus)
        self.spin = client.config.spin_us / 1e6
        self.extra = self.slot > ncpus  # started to stand in for blocked workers
        self.last_work = time.monotonic()
        # CPU token: a worker that holds one runs default tasks (1 CPU, nothing else) with no
        # shared-memory accounting at all; it gives the token back to the pool when it
        # parks or when its task waits in get.  States: NONE, FREE (held, unused), BUSY.
        self.token = _NONE
        self._charge: tuple = (False, None)  # set by admit(): (uses token, pool charge)
        self.charges: list[tuple] = []  # (uses token, pool charge) of each running task
        self.calls: list[bytes] = []  # ids of the tasks whose function is running now
        self.pending_stops: dict[bytes, int] = {}  # stops for tasks under the top one
        self.children = client.manager.children  # running call -> tasks it submitted
        self.recursive_cancels: set[bytes] = set()  # calls stopped by a recursive cancel
        self.threads = ThreadLimit(blas_threads)  # BLAS/OpenMP threads: the task's CPUs
        self.call_limits: dict[bytes, int] = {}  # function key -> its max_calls (if any)
        self.call_counts: dict[bytes, int] = {}  # function key -> calls run here
        self.exhausted = False  # a function reached its max_calls: retire after this task
        client.helper = self

    # -- finding work --------------------------------------------------------------

    def admit(self, rec) -> bool:
        """Reserve the record's resources and record it as running in this slot -- both
        under the deque's lock, so that a crash at any point leaves the task either queued
        or known to the node.  With a free token, a default task costs nothing and any
        other task only its difference to one CPU; without one, the whole demand comes
        from the node's pool."""
        if self.charges and rec[record.FLAGS_OFFSET] & record.HOLDS_REFS:
            return False  # helping: it might wait on a task below it on this stack
        demand = record.demand_of(rec)
        seg = self.seg
        if self.token == _FREE:
            if demand is record.DEFAULT_VECTOR:
                charge = None
            else:
                charge = (demand[0] - 1000,) + demand[1:]  # a fraction gives the rest back
                if not seg.try_acquire(charge, self.slot):
                    return False
            self.token = _BUSY
            seg.set_token_free(self.slot, False)
            self._charge = (True, charge)
        elif seg.try_acquire(demand, self.slot):
            self._charge = (False, demand)
        else:
            return False
        h = record.header_of(rec)
        seg.push_running(self.slot, h.owner, h.task_id, time.monotonic(), h.timeout)
        return True

    def take_token(self) -> None:
        if self.token == _NONE and not self.charges and self.seg.try_acquire(
                record.DEFAULT_VECTOR, self.slot):
            self.token = _FREE
            self.seg.set_token_free(self.slot, True)

    def give_token(self) -> None:
        if self.token == _FREE:
            self.token = _NONE
            self.seg.set_token_free(self.slot, False)
            self.seg.release(record.DEFAULT_VECTOR, self.slot)

    def steal(self) -> bytes | None:
        deques = self.seg.deques
        n = self.seg.active_slots
        for prio in record.PRIORITIES:
            sizes = [len(deques[i].levels[prio]) for i in range(n)]
            for v in policy.victim_order(sizes, self.slot, self.rng):
                got = deques[v].levels[prio].steal_if(
                    policy.steal_batch(sizes[v], self.ncpus), self.admit,
                    self.own.levels[prio])
                if got is not None:
                    if len(self.own):
                        self.seg.notify_work(len(self.own))  # others may steal from us
                    return got
        return None

    def next_task(self) -> bytes | None:
        rec = self.own.pop_if(self.admit)
        return rec if rec is not None else self.steal()

    def idle(self) -> bytes | None:
        """Nothing to run: spin a little, then park until work is pushed or resources are
        freed.  Returns a record found (and admitted) meanwhile, or ``None``."""
        seg = self.seg
        if self.spin > 0 and seg.try_start_spinning(self.max_spinners, self.slot):
            try:
                end = time.monotonic() + self.spin
                while time.monotonic() < end and not seg.shutting_down:
                    if seg.queued():
                        rec = self.next_task()
                        if rec is not None:
                            return rec
                    os.sched_yield()
            finally:
                seg.stop_spinning(self.slot)
        self.give_token()  # asleep, this worker's CPU is free for others
        rec = seg.park_for_work(self.next_task, 0.5, self.slot)
        if rec is None:
            self.take_token()
        return rec

    def run(self) -> None:
        seg = self.seg
        self.take_token()
        while not seg.shutting_down:
            rec = self.next_task()
            if rec is None:
                self.client.poll()
                if (self.extra and time.monotonic() - self.last_work > EXTRA_IDLE_S
                        and not self.client.num_objects()):  # (objects it lent live there)
                    self.give_token()
                    seg.set_slot_state(self.slot, SlotState.FREE)  # retire quietly
                    return
                rec = self.idle()
                if rec is None:
                    continue
            self.execute(rec)
            if self.client.dead_actors:  # the task dropped actor handles: tell the node now
                self.client.poll()
            if self.exhausted:
                self.retire()
                return

    def retire(self) -> None:
        """A function reached its ``max_calls`` here: take no more tasks, and exit (the node
        starts another worker in this slot) once this process owns no objects -- results of
        tasks it submitted, or objects it ``put``, that other processes still hold refs to
        (as Ray's worker, it serves them until they are released).  Meanwhile its CPU is
        free and the node counts it as busy, so queued tasks get another worker."""
        seg = self.seg
        seg.set_retiring(self.slot, True)
        self.give_token()
        client = self.client
        client.poll()
        while client.table and not seg.shutting_down:
            client.inbox.park(0.05)
            client.poll()
    # -- helping while a task waits in get -------------------------------------------

    def help(self) -> bool:
        """Run one queued task while the current one waits in ``get``; ``False`` when
        there is nothing this worker may run now.  Only tasks whose arguments hold no refs
        to pending objects are helped with (``record.HOLDS_REFS``, checked in
        :meth:`admit`): any other one might wait, directly or through others, on a task
        below it on this stack, which cannot go on before it returns -- a deadlock.  Those
        wait for a worker with an empty stack; the node starts one when every worker is
        blocked (see ``Node._supervise``)."""
        if len(self.charges) >= MAX_NESTING - 1 or self.exhausted:
            return False
        rec = self.next_task()
        if rec is None:
            return False
        self.execute(rec)
        return True

    def lend(self) -> None:
        """The innermost task waits in ``get``: give its resources back meanwhile (each
        nested wait lends its own task's, so waits never hold what the tasks they wait for
        need -- no resource deadlock)."""
        if not self.charges:
            return
        uses_token, charge = self.charges[-1]
        seg = self.seg
        if uses_token:
            self.token = _NONE
            seg.release(record.DEFAULT_VECTOR, self.slot)
        if charge:
            seg.release(charge, self.slot)

    def unlend(self) -> None:
        if not self.charges:
            return
        uses_token, charge = self.charges[-1]
        seg = self.seg
        if uses_token:
            seg.force_acquire(record.DEFAULT_VECTOR, self.slot)
            self.token = _BUSY
        if charge:
            seg.force_acquire(charge, self.slot)

    # -- running a task ------------------------------------------------------------

    def execute(self, rec: bytes) -> None:
        """Run one admitted record (its resources are already reserved) and report it."""
        h = record.header_of(rec)
        kind, owner, task_id = h.kind, h.owner, h.task_id
        seg = self.seg
        uses_token, charge = self._charge  # reserved, and recorded running, by admit()
        self.charges.append((uses_token, charge))
        self.last_work = time.monotonic()
        threads = self.threads
        outer_threads = threads.current
        try:
            try:
                threads.set(h.cpu // 1000 or 1)  # BLAS threads: the task's CPUs (threads.py)
                if seg.is_cancelled(task_id):
                    err = TaskCancelledError("task was cancelled before it started")
                    msg = failed_message(task_id, err, "?")
                else:
                    msg = self._run(kind, rec, task_id, owner)
            except SystemExit as exc:
                exit_process(self, exc, "the task")
            except BaseException as exc:  # a fault of the runtime: the owner must hear of it
                msg = failed_message(task_id, stop_error(exc), "the task")
            self.send(owner, msg)
        finally:
            self.charges.pop()
            if self.charges:  # back to the task waiting below on this stack: its limit
                threads.set(outer_threads)
            seg.pop_running(self.slot)
            if charge:
                seg.release(charge, self.slot)
            if uses_token:
                self.token = _FREE
                seg.set_token_free(self.slot, True)

    def _run(self, kind: int, rec: bytes, task_id: bytes, owner: int) -> bytes:
        if kind == record.SPEC_INLINE:
            body = rec[RECORD_HEADER.size:]
        elif kind == record.SPEC_IN_ARENA:
            off, n = ARENA_SPEC.unpack_from(rec, RECORD_HEADER.size)
            body = self.arena.read(off, n)
        else:  # (execute() reports it to the task's owner; the worker goes on)
            raise RepartirSystemError(
                f"task record of unknown kind {kind} (owner slot {owner}, task "
                f"{task_id.hex()}): the record is corrupted")
        fn_key, fn_off, fn_len, fn_name, args_loc, dep_locs, nret = pickle.loads(body)
        try:
            fn = self.functions.get(fn_key)
            if fn is None:
                fn = pickle.loads(self.arena.view(fn_off, fn_len))
                if type(fn) is tuple:  # (function, max_calls): see RemoteFunction._code
                    fn, self.call_limits[fn_key] = fn
                self.functions[fn_key] = fn
        except BaseException as exc:
            return failed_message(task_id, exc, fn_name)
        if self.call_limits:
            limit = self.call_limits.get(fn_key)
            if limit:  # (counted as it starts: a call that raises counts too, as in Ray)
                count = self.call_counts[fn_key] = self.call_counts.get(fn_key, 0) + 1
                if count >= limit:
                    self.exhausted = True
        return run_function(self, fn, fn_name, args_loc, dep_locs, nret, task_id, owner)

    def load_args(self, args_loc, dep_locs) -> tuple[list, dict]:
        """The call's arguments, with dependency values (zero-copy views) in place."""
        args, kwargs = self.client.value(args_loc)
        if dep_locs:
            value = self.client.value
            args = [value(dep_locs[a.index]) if type(a) is Dep else a for a in args]
            for k, a in kwargs.items():
                if type(a) is Dep:
                    kwargs[k] = value(dep_locs[a.index])
        return args, kwargs

    def send(self, owner: int, msg: bytes) -> None:
        """Send a completion (or a streamed item) to the task's owner.  One too large for an
        inbox travels through the arena (:meth:`CoreClient.post`); when the arena has no
        room for it either, its blocks are freed and the task fails with an error that
        says so (a streamed item raises it inside the generator's task instead) -- the
        owner is never left waiting for a message that cannot come."""
        try:
            self.client.post(owner, msg)
        except ObjectStoreFullError as exc:
            decoded = decode(msg)
            if decoded.kind not in (MSG_DONE, MSG_ITEM):
                raise
            drop_message_blocks(self.client, decoded)
            err = ObjectStoreFullError(
                f"a result of {len(msg):,} bytes (once serialized) could not be sent to the "
                f"task's owner: {exc}")
            if decoded.kind == MSG_ITEM:
                raise err from None
            self.client.post(owner, failed_message(decoded.task_id, err, "the task"))

    def on_stop_signal(self, signum, frame) -> None:
        if mutexes_held():  # raising now could leave a shared mutex held: when released
            defer_signal(signum)
            return
        req = self.seg.take_stop_request(self.slot)
        if req is None or req[1] not in self.calls:
            return  # the task finished meanwhile
        reason, task_id = StopRequest(req[0]), req[1]
        if self.calls[-1] != task_id:
            # it waits in get while this worker runs another task on its stack: raise it
            # there when that task is done (the node kills the worker if that is too late);
            # a cancel also stops that task now if it is a descendant (cancel is recursive)
            self.pending_stops[task_id] = reason
            if reason in (StopRequest.CANCEL, StopRequest.TIMEOUT):
                family = self._family(task_id)
                if self.calls[-1] in family:  # stopped with its ancestor, as are the calls
                    self.recursive_cancels.update(family)  # in between, children and all
                    for call in family:
                        if call != task_id and call != self.calls[-1]:
                            # raised as the stack unwinds
                            self.pending_stops[call] = StopRequest.CANCEL
                    self._raise_stop(StopRequest.CANCEL, self.calls[-1])
            return
        self._raise_stop(reason, task_id)

    def _family(self, ancestor: bytes) -> set:
        """``ancestor`` and the calls above it on this worker's stack that it submitted,
        directly or through calls in between."""
        calls = self.calls
        family = {ancestor}
        for call in calls[calls.index(ancestor) + 1:]:
            if any(call in self.children.get(f, ()) for f in family):
                family.add(call)
        return family

    def cancel_children(self, task_id: bytes) -> None:
        """A call ended by a cancel: cancel what it submitted that is still pending."""
        self.client.cancel_children(task_id)

    def _raise_stop(self, reason: StopRequest, task_id: bytes) -> None:
        """Raise the stop inside the running task: a ``KeyboardInterrupt`` (as Ray does), so
        that ``except Exception`` in user code does not swallow it; :func:`run_function`
        reports it to the owner as ``TaskCancelledError`` or ``TaskTimeoutError``."""
        if reason in (StopRequest.CANCEL, StopRequest.TIMEOUT):
            self.recursive_cancels.add(task_id)  # its children go too (run_function)
        if reason in (StopRequest.CANCEL, StopRequest.CANCEL_ONE):
            raise TaskInterrupted("task was cancelled while running")
        raise TaskInterrupted("task ran longer than its timeout", timed_out=True)

    def raise_pending_stop(self) -> None:
        """After a helped task: stop the waiting task now if a stop came meanwhile."""
        if self.pending_stops and self.calls:
            reason = self.pending_stops.pop(self.calls[-1], None)
            if reason is not None:
                self._raise_stop(reason, self.calls[-1])


_segment: list = []  # this process's scheduler segment, once mapped (for _watch_parent)


def _watch_parent(fd: int, spill_dir: str | None) -> None:
    """Leave when the node's life pipe closes.  When the driver died without
    ``shutdown()`` (which marks the segment as shutting down before it closes the pipe),
    remove its spill directory too: its files can be large, and a ``REPARTIR_SPILL_DIR``
    is swept only by a later session started with the same directory (every worker tries;
    the first one wins)."""
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    if spill_dir and not (_segment and _segment[0].shutting_down):
        shutil.rmtree(spill_dir, ignore_errors=True)
    os._exit(0)  # the node is gone: leave at once, also in the middle of a task


def main() -> None:
    spec = json.loads(os.environ.pop("REPARTIR_WORKER_SPEC"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent,
                     args=(spec["life_fd"], spec.get("spill_dir")), daemon=True,
                     name="repartir-life-pipe").start()
    sys.path[:] = spec["sys_path"]
    # nested tasks run on this stack while their parents wait in get: allow deep recursion
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 50_000))
    try:
        os.chdir(spec["cwd"])
    except OSError:
        pass
    seg = Segment(mmap.mmap(spec["sched_fd"], spec["sched_size"]))
    _segment.append(seg)
    arena = Arena(spec["arena_fd"], spec["arena_size"], spill_dir=spec["spill_dir"])
    cfg = spec["config"]
    config = Config(**{**cfg, "resources": tuple(tuple(r) for r in cfg["resources"])})
    slot = spec["slot"]
    if not spec.get("actor"):
        seg.claim_slot(SlotState.WORKER, os.getpid(), slot)
    arena.ledger = PinLedger(seg, slot)
    client = CoreClient(seg, arena, slot, config, spec["session"])
    context.set_client(client)
    context.set_node_id(spec["node_id"])
    worker = Worker(client, config.num_cpus, spec.get("blas_threads"))
    if spec.get("actor"):
        client.helper = None  # an actor does not run other tasks while it waits
        actor = spec["actor"]
        if actor["is_async"] or actor["max_concurrency"] > 1:
            # calls run on other threads or an event loop, the signal only in this thread:
            # a running call cannot be interrupted (as in Ray's threaded actors); it ends
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        else:  # calls run in this thread: a cancel or timeout is raised inside the call
            count_held_mutexes()  # for on_stop_signal
            signal.signal(signal.SIGUSR1, worker.on_stop_signal)
        run_actor(client, worker, spec)
        os._exit(0)
    count_held_mutexes()  # for on_stop_signal
    signal.signal(signal.SIGUSR1, worker.on_stop_signal)
    worker.run()
    os._exit(0)


if __name__ == "__main__":
    main()
