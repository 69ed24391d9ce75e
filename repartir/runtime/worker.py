"""A worker process: pop its own deque, else steal, run the task, send the completion.

Started by the node as ``python -m repartir.runtime.worker`` (a fresh interpreter: the
*spawn* start method, never ``fork``), with the scheduler segment, the arena and the read end
of a *life pipe* inherited as file descriptors.  The node holds the pipe's write end; when the
node's process dies, however it dies, the pipe reads end-of-file and the worker exits at once,
also in the middle of a task.

Main loop::

    record = own deque .pop()  (LIFO)          ── else ──▶  steal from a random victim (FIFO,
       │                                                    up to half, the rest kept in own deque)
       ▼                                                    ── else ──▶  spin, then park
    decode spec ─ function from cache or arena ─ args (dependency values are zero-copy views)
       ▼
    call ─▶ results: inline, or written into the arena ─▶ completion into the owner's inbox
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import sys
import threading
import time

from ..config import Config
from ..scheduler import policy
from ..scheduler.segment import MAX_NESTING, Segment, SlotState
from ..serialization import deserialize, error_payload, serialize
from ..store.arena import Arena
from . import context
from .core import FAILED, MSG_DONE, OK, RECORD_HEADER, CoreClient, Dep, _ARENA_SPEC

__all__ = ["Worker", "main"]

EXTRA_IDLE_S = 2.0  # an extra worker idle this long exits


class Worker:
    def __init__(self, client: CoreClient, ncpus: int) -> None:
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
        client.helper = self.help

    # -- finding work --------------------------------------------------------------

    def steal(self) -> bytes | None:
        deques = self.seg.deques
        n = self.seg.active_slots
        sizes = [len(deques[i]) for i in range(n)]
        for v in policy.victim_order(sizes, self.slot, self.rng):
            got = deques[v].steal(policy.steal_batch(sizes[v], self.ncpus))
            if got:
                if len(got) > 1:
                    rest = got[:0:-1]  # the oldest of the rest is popped first
                    pushed = self.own.push_many(rest)
                    for rec in rest[pushed:]:  # own deque full: run them here, in order
                        self.execute(rec)
                    self.seg.notify_work(pushed)
                return got[0]
        return None

    def idle(self) -> None:
        seg = self.seg
        if self.spin > 0 and seg.try_start_spinning(self.max_spinners):
            try:
                end = time.monotonic() + self.spin
                while time.monotonic() < end:
                    if seg.queued() or seg.shutting_down:
                        return
                    os.sched_yield()
            finally:
                seg.stop_spinning()
        seg.park_for_work(lambda: seg.queued() > 0, 0.5)

    def run(self) -> None:
        seg, own = self.seg, self.own
        while not seg.shutting_down:
            rec = own.pop()
            if rec is None:
                rec = self.steal()
                if rec is None:
                    self.client.poll()
                    if self.extra and time.monotonic() - self.last_work > EXTRA_IDLE_S:
                        seg.set_slot_state(self.slot, SlotState.FREE)  # retire quietly
                        return
                    self.idle()
                    continue
            self.execute(rec)

    # -- running a task ------------------------------------------------------------

    def help(self) -> bool:
        """Called while a task of this worker waits in ``get``: run one queued task (own
        deque first, then a stolen one) so that the wait does not idle a CPU or deadlock
        the node.  ``False`` when there is nothing to run or nesting is too deep."""
        if len(self.seg.running(self.slot)) >= MAX_NESTING - 1:
            return False
        rec = self.own.pop()
        if rec is None:
            rec = self.steal()
            if rec is None:
                return False
        self.execute(rec)
        return True

    def execute(self, rec: bytes) -> None:
        kind, owner, task_id = RECORD_HEADER.unpack_from(rec, 0)
        self.seg.push_running(self.slot, owner, task_id)
        self.last_work = time.monotonic()
        try:
            if kind == 0:
                body = rec[RECORD_HEADER.size:]
            else:
                off, n = _ARENA_SPEC.unpack_from(rec, RECORD_HEADER.size)
                body = bytes(self.arena.view(off, n))
            fn_key, fn_off, fn_len, fn_name, blob, dep_locs, nret = pickle.loads(body)
            try:
                fn = self.functions.get(fn_key)
                if fn is None:
                    fn = self.functions[fn_key] = pickle.loads(self.arena.view(fn_off, fn_len))
                args, kwargs = deserialize(memoryview(blob))
                if dep_locs:
                    value = self.client.value
                    args = [value(dep_locs[a.index]) if type(a) is Dep else a for a in args]
                    for k, a in kwargs.items():
                        if type(a) is Dep:
                            kwargs[k] = value(dep_locs[a.index])
                result = fn(*args, **kwargs)
                if nret == 1:
                    results = (result,)
                else:
                    if not isinstance(result, (tuple, list)) or len(result) != nret:
                        raise ValueError(
                            f"{fn_name} was declared with num_returns={nret} but returned "
                            f"{type(result).__name__} of length "
                            f"{len(result) if hasattr(result, '__len__') else 'n/a'}")
                    results = result
                locs = [self.client.store(serialize(r, f"the return value of {fn_name}"))
                        for r in results]
                del result, results, args, kwargs
                msg = pickle.dumps((MSG_DONE, task_id, OK, locs), 5)
            except BaseException as exc:  # the task's own error, reported to its owner
                msg = pickle.dumps((MSG_DONE, task_id, FAILED, error_payload(exc, fn_name)), 5)
                exc = None
            self.send(owner, msg)
        finally:
            self.seg.pop_running(self.slot)

    def send(self, owner: int, msg: bytes) -> None:
        inbox = self.seg.inboxes[owner]
        while not inbox.put(msg):  # the owner's inbox is full: it is draining, wait a bit
            if self.seg.shutting_down:
                return
            time.sleep(0.0005)


def _watch_parent(fd: int) -> None:
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    os._exit(0)  # the node is gone: leave at once, also in the middle of a task


def main() -> None:
    spec = json.loads(os.environ.pop("REPARTIR_WORKER_SPEC"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(spec["life_fd"],), daemon=True,
                     name="repartir-life-pipe").start()
    sys.path[:] = spec["sys_path"]
    try:
        os.chdir(spec["cwd"])
    except OSError:
        pass
    import mmap

    seg_mm = mmap.mmap(spec["sched_fd"], spec["sched_size"])
    seg = Segment(seg_mm)
    arena = Arena(spec["arena_fd"], spec["arena_size"])
    config = Config(**spec["config"])
    slot = spec["slot"]
    seg.claim_slot(SlotState.WORKER, os.getpid(), slot)
    client = CoreClient(seg, arena, slot, config, spec["session"])
    context.set_client(client)
    Worker(client, config.num_cpus).run()
    os._exit(0)


if __name__ == "__main__":
    main()
