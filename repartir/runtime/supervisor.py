"""The node's supervisor (a part of :class:`~.node.Node`, whose state it shares;
``docs/architecture.md``, "Faults", "Nested tasks"): it watches every worker process and
restarts it, tells the owners of a dead process's tasks, puts back what it had stolen,
stops tasks past their time-out, starts workers beyond the cap when every worker is blocked,
and warns when queued tasks cannot start."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
import warnings

from ..config import EXTRA_WORKER_AFTER_S, STUCK_SPAWN_BATCH, STUCK_SPAWN_S
from ..scheduler.segment import SlotState
from ..store.arena import BLOCK_HEADER
from ..scheduler import record
from .messages import stop_task
from .protocol import MSG_CRASHED, MSG_OWNER_DIED, StopReason, StopRequest, encode


__all__ = ["Supervisor"]



def _queued_task_fits(cpus: int, smallest: int | None) -> bool:
    """Whether a queued task may fit in ``cpus`` milli-CPUs free, given the smallest CPU
    demand among the oldest queued records: a task of ``num_cpus=0`` always does (also on a
    node of ``num_cpus=0``); others need some CPU free, a whole one unless a fraction that
    small is queued."""
    if smallest == 0:
        return True
    return cpus > 0 and (cpus >= 1000 or (smallest or 1000) <= cpus)


class Supervisor:
    def _watch(self, slot: int, proc: subprocess.Popen) -> None:
        code = proc.wait()
        tail = self._finish_output(proc)
        if self.stopping or self.segment.shutting_down:
            return
        state, _ = self.segment.slot_state(slot)
        running = self.segment.running(slot)
        self.segment.clear_running(slot)
        if state != SlotState.FREE or code != 0:  # before its CPU is free for a thief
            self._requeue_orphans(slot)
        self.segment.release_held(slot)  # what it had reserved goes back to the pool
        self._drop_pins(slot)
        self._holder_died(slot, proc.pid)  # the actor handles it held count no more
        self.segment.set_blocked(slot, False)
        self.segment.set_token_free(slot, False)
        with self._lock:
            if self.procs.get(slot) is proc:
                del self.procs[slot]
        if state == SlotState.FREE and code == 0:  # an extra worker retired
            return
        if state == SlotState.STARTING and code > 0:
            # failed before attaching (an import error, say): do not respawn in a loop.
            # (A signal -- someone killed it -- is not the worker's own failure.)
            self.startup_failures += 1
            if self.startup_failures >= 3:
                self.fatal = (
                    f"worker processes fail to start (exit code {code}); the last one "
                    f"wrote:\n{self._log_tail(slot) if tail is None else tail[-3000:]}")
                self.segment.set_slot_state(slot, SlotState.DEAD)
                return
        else:
            self.startup_failures = 0
        self.segment.set_slot_state(slot, SlotState.DEAD)
        detail = (f"killed by signal {signal.Signals(-code).name}" if code < 0
                  else f"exit code {code}")
        note = self.segment.note(slot)
        if note:  # it said why it exits (a task called sys.exit)
            detail = f"{detail}: {note}"
            self.segment.set_note(slot, "")
        stop = self.segment.take_stop_request(slot)  # killed on purpose: cancel or timeout
        for owner, task_id, _, _ in running:
            reason = (StopReason.of_request(stop[0]) if stop is not None and stop[1] == task_id
                      else StopReason.CRASH)
            msg = encode((MSG_CRASHED, task_id, detail, int(reason)))
            inbox = self.segment.inboxes[owner]
            while not inbox.put(msg) and not self.stopping:
                time.sleep(0.001)
        self._broadcast(encode((MSG_OWNER_DIED, slot)))  # what it lent is lost
        # its children running elsewhere are stopped too (recursively): nobody will read
        # their results, and a cancelled or timed-out tree must stop to its leaves
        seg = self.segment
        for i in range(seg.active_slots):
            if i != slot:
                for owner, task_id, _, _ in seg.running(i):
                    if owner == slot:
                        stop_task(seg, task_id, StopRequest.CANCEL, force=False)
        if not self.stopping and slot <= self.config.num_cpus:
            self._spawn(slot)

    def _requeue_orphans(self, slot: int) -> None:
        """A worker died: the tasks it had stolen into its own deque go back to the top of
        the driver's deque; the tasks it submitted itself are dropped wherever they wait
        (their owner is gone: no one would read their results; a cancelled or timed-out
        task's children end with it)."""
        seg = self.segment
        orphans = seg.deques[slot].remove_if(lambda r: True)
        for i in range(seg.active_slots):
            if i != slot:
                seg.deques[i].remove_if(lambda r: record.owner_of(r) == slot)
        # back at the top of the driver's deque, in the order the dead worker would have
        # popped them (bottom first: a stolen batch lies reversed), so that they start
        # before the tasks queued after them
        put_back = 0
        for prio, level in enumerate(seg.deques[0].levels):
            recs = [r for r in orphans if r[1] == prio
                    and record.owner_of(r) != slot]
            if recs:
                recs.reverse()
                n = level.push_front_many(recs)
                if n < len(recs):  # no room at the top: keep them, at the bottom
                    n += seg.deques[0].push_many(recs[n:])
                put_back += n
        if put_back:
            seg.notify_work(put_back)

    def _drop_pins(self, slot: int) -> None:
        """Clean up after a dead process: take it off the spinner and sleeper counts, give
        back the arena pins it held (its views cannot unpin any more), and release the
        objects it owned (its refs are gone with it)."""
        self.segment.forget_waiting(slot)
        for blk, count in self.segment.take_ledger(slot):
            for _ in range(count):
                self.arena.unpin(blk + BLOCK_HEADER)
        self.arena.release_owned_by(slot)

    def _broadcast(self, msg: bytes) -> None:
        """Put ``msg`` into the inbox of every live process of the node."""
        seg = self.segment
        for i in range(seg.active_slots):
            if seg.slot_state(i)[0] in (SlotState.DRIVER, SlotState.WORKER, SlotState.ACTOR,
                                        SlotState.STARTING):
                inbox = seg.inboxes[i]
                deadline = time.monotonic() + 5
                while not inbox.put(msg) and not self.stopping and time.monotonic() < deadline:
                    time.sleep(0.001)

    def _tell_owners(self, running, detail: str, reason: StopReason) -> None:
        for owner, task_id, _, _ in running:
            msg = encode((MSG_CRASHED, task_id, detail, int(reason)))
            inbox = self.segment.inboxes[owner]
            while not inbox.put(msg) and not self.stopping:
                time.sleep(0.001)

    def _post(self, slot: int, msg: bytes) -> None:
        inbox = self.segment.inboxes[slot]
        while not inbox.put(msg) and not self.stopping:
            time.sleep(0.001)

    def _finish_output(self, proc: subprocess.Popen) -> str | None:
        """Forward the rest of a dead process's output and close its pipes; returns its last
        lines (``None`` when its output went to a log file, or is not known)."""
        if self.output is None:
            return None
        tail = self.output.finish(proc)
        return "(no output)" if tail == "" else tail

    def _log_tail(self, slot: int, nbytes: int = 3000) -> str:
        try:
            with open(os.path.join(self.session_dir, f"worker-{slot}.log"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode(errors="replace")
        except OSError:
            return "(no log)"

    def _supervise(self) -> None:
        """Every few milliseconds: stop tasks past their timeout, and start an extra worker
        when a queued task fits in the CPU left but every worker is busy -- because workers
        blocked in ``get`` lent their CPUs, or tasks ask for fractions of a CPU -- for
        ``EXTRA_WORKER_AFTER_S`` in a row, up to ``max_workers`` processes."""
        seg, cfg = self.segment, self.config
        overdue: dict[bytes, float] = {}
        stuck_since, warned = None, False  # tasks queued while no worker runs anything
        # at the cap: the task on top of each worker's stack, and since when none changed
        stack_tops, all_blocked_since, cap_warned = None, 0.0, False
        want_since = None  # since when an extra worker has been wanted, on every tick
        while not self.stopping:
            time.sleep(0.005)
            if self.stopping:
                return
            with self._lock:
                slots = list(self.procs)
            now = time.monotonic()
            for s in slots:  # every task on a worker's stack (one may wait under another)
                for _, task_id, start, timeout in seg.running(s):
                    if timeout and now - start > timeout:
                        # ask the task to stop; kill the worker if it has not within 1 s
                        first = overdue.get(task_id)
                        if first is None:
                            overdue[task_id] = now
                            stop_task(seg, task_id, StopRequest.TIMEOUT, force=False)
                        elif now - first > 1.0:
                            stop_task(seg, task_id, StopRequest.TIMEOUT, force=True)
            if len(overdue) > 1000:
                overdue.clear()
            if self.pending_actors:
                self._start_pending_actors()
            for slot, rec in list(self.actors.items()):  # late calls to dead actors
                if (rec.dead and seg.slot_state(slot)[0] == SlotState.ACTOR_DEAD
                        and seg.inboxes[slot].pending()):
                    self._fail_actor_inbox(slot, rec)
            if not seg.queued():
                stuck_since, warned, want_since = None, False, None
                continue
            if any(seg.running(s) for s in slots):
                stuck_since = None
            elif stuck_since is None:
                stuck_since = now
            elif not warned and now - stuck_since > self.stuck_warning_s:
                warned = True
                self._warn_stuck(now - stuck_since)
            cpus = seg.available()[0]
            # (a worker retiring after max_calls runs nothing, and takes nothing either)
            busy = sum(1 for s in slots if seg.running(s) or seg.retiring(s))
            if (not _queued_task_fits(cpus, seg.smallest_queued_cpu())
                    or self.fatal or busy < len(slots)):
                want_since = None  # no queued task fits in the CPU left, or a worker is free
                continue
            if want_since is None or now - want_since < EXTRA_WORKER_AFTER_S:
                want_since = want_since or now  # not yet: it may be a worker's wake-up
                continue
            if len(slots) >= cfg.max_workers:
                # At the cap.  Workers blocked in get help only with tasks that cannot wait
                # on their stacks; when no stack moves while tasks stay queued and CPU is
                # free (lent by blocked workers), the queued tasks are others (they hold refs
                # to pending objects) and only a new worker, with an empty stack, can run
                # them: start one beyond the cap, or the program would hang.
                tops = tuple((seg.running(s) or [(0, b"")])[-1][1] for s in slots)
                if tops != stack_tops:
                    stack_tops, all_blocked_since = tops, now
                    continue
                if now - all_blocked_since < STUCK_SPAWN_S:
                    continue
                if len(slots) >= cfg.max_workers + cfg.max_stuck_workers:
                    if not cap_warned and now - all_blocked_since > self.stuck_warning_s:
                        cap_warned = True
                        warnings.warn(
                            f"repartir: all {len(slots)} workers have been blocked in get() "
                            f"for {now - all_blocked_since:.0f} s while {seg.queued()} "
                            f"task(s) wait that none of them may run (they hold refs to "
                            f"pending objects), and the node may start no more workers "
                            f"(max_stuck_workers={cfg.max_stuck_workers}). Raise "
                            f"REPARTIR_MAX_STUCK_WORKERS, or pass fewer nested refs.",
                            RuntimeWarning, stacklevel=1)
                    continue
                cap_warned = False
                stack_tops = None
                # as many as there are queued tasks, a batch at a time: one each time would
                # cost a process start per blocked level, in series
                count = min(seg.queued(), STUCK_SPAWN_BATCH,
                            cfg.max_workers + cfg.max_stuck_workers - len(slots))
            else:
                count = 1
            want_since = None
            spare = itertools.chain(range(cfg.num_cpus + 1, self.first_actor_slot),
                                    range(self.first_stuck_slot, self.nslots))
            free = [i for i in spare if i not in slots and seg.slot_state(i)[0] not in
                    (SlotState.WORKER, SlotState.STARTING)][:max(count, 1)]
            for slot in free:
                try:
                    self._spawn(slot)
                except OSError:
                    break

    def _warn_stuck(self, seconds: float) -> None:
        """Tasks have been queued for a while and no worker runs anything: their resources
        are held elsewhere (actors, most often) or do not exist free on this node."""
        seg = self.segment
        free = self._free_resources_text()
        actors = sum(1 for r in self.actors.values()
                     if not r.dead and not r.pending and any(r.demand))
        warnings.warn(
            f"repartir: {seg.queued()} task(s) have waited {seconds:.0f} s and none can start: "
            f"free now: {free}; {actors} live actor(s) hold resources. Kill actors you no "
            f"longer need (repartir.kill), or ask for fewer resources.", RuntimeWarning,
            stacklevel=1)
