"""The node's side of actors (a part of :class:`~.node.Node`, whose state it shares;
``docs/architecture.md``, "Actors"): slots for new actors, starting them when their
resources are free (oldest first), watching their processes (restart or death), killing
them, and failing the calls left in a dead actor's inbox."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings

from ..config import resource_names
from ..errors import RepartirError
from ..scheduler.segment import SlotState
from .actor_life import CTOR_FAILED_EXIT
from .messages import EXITED_ON_PURPOSE
from .protocol import (ARENA, MSG_ACTOR_EPOCH, MSG_CALL, MSG_DONE, MSG_ITEM, MSG_OWNER_DIED,
                       MSG_RELEASE, StopReason, decode, encode, open_large, result_blocks)


__all__ = ["NodeActors", "ActorRecord"]


class ActorRecord:
    def __init__(self, actor_id: bytes, config: dict, demand: tuple, held) -> None:
        self.actor_id = actor_id
        self.config = config
        self.demand = demand
        self.held = held  # refs among the constructor's arguments
        self.restarts_left = config["max_restarts"]
        self.killed = False
        self.exiting = False  # its last handle died: it ends after the calls made before
        self.kill_cause = "it was killed by repartir.kill()"
        self.pending = False  # waiting for its resources, not started yet
        self.pending_since = 0.0  # time.monotonic() when it began to wait
        self.warned = False  # the "waits for resources" warning was given
        self.dead = False


class NodeActors:
    def create_actor(self, actor_id: bytes, creation: bytes, config: dict,
                     demand: tuple, held: list | None = None) -> int:
        """Start an actor process; returns its slot.  ``held``: refs among the constructor's
        arguments, kept alive as long as the actor may need them (restarts included).

        Raises:
            RepartirError: every actor slot is taken (``REPARTIR_MAX_ACTORS``).
        """
        seg = self.segment
        deadline = time.monotonic() + 30
        while True:
            with self._lock:
                slot = next((i for i in range(self.first_actor_slot, self.first_stuck_slot)
                             if (i not in self.actors or self.actors[i].dead)
                             and seg.slot_state(i)[0] in (SlotState.FREE, SlotState.DEAD,
                                                          SlotState.ACTOR_DEAD)), None)
                if slot is not None:
                    path = os.path.join(self.session_dir, f"actor-{actor_id.hex()}.pkl")
                    with open(path, "wb") as f:
                        f.write(creation)
                    config = dict(config, creation_file=path)
                    self.actors[slot] = ActorRecord(actor_id, config, demand, held)
                    break
                exiting = any(r.exiting and not r.dead for r in self.actors.values())
            if not exiting or time.monotonic() > deadline:
                raise RepartirError(
                    f"this node already runs {len(self.actors)} actors, its maximum; kill "
                    f"actors you no longer need or raise REPARTIR_MAX_ACTORS")
            time.sleep(0.005)  # actors whose last handle died are finishing their calls
        for raw in seg.inboxes[slot].drain():  # nothing meant for an earlier actor remains
            open_large(self.arena, slot, decode(raw))  # frees a large message's block
        first_epoch = seg.bump_actor_epoch(slot, actor_id)
        self.actors[slot].config["first_epoch"] = first_epoch  # later ones: restarts
        seg.set_note(slot, "")
        if any(demand) and not self._fits(demand):
            # as in Ray, the actor waits for its resources (its calls wait in its inbox);
            # the supervisor starts it when they are free
            seg.set_slot_state(slot, SlotState.STARTING)
            with self._lock:
                self.actors[slot].pending = True
                self.actors[slot].pending_since = time.monotonic()
                self.pending_actors.append(slot)
            return slot
        self._start_actor(slot)
        return slot

    def _fits(self, demand: tuple) -> bool:
        """Whether ``demand`` is free now (idle workers' CPU tokens count as free)."""
        seg = self.segment
        avail = list(seg.available())
        avail[0] += 1000 * seg.free_tokens()
        return all(d <= a for d, a in zip(demand, avail) if d > 0)

    def _start_actor(self, slot: int) -> None:
        rec = self.actors[slot]
        rec.pending = False
        if any(rec.demand):
            self.segment.force_acquire(rec.demand, 0)  # actors' reservations: the driver's
        self._spawn(slot, actor=rec.config)

    def _start_pending_actors(self) -> None:
        """Start the pending actors whose resources are free now, oldest first."""
        with self._lock:
            pending = list(self.pending_actors)
        for slot in pending:
            rec = self.actors.get(slot)
            if rec is None or not rec.pending:
                with self._lock:
                    self.pending_actors.remove(slot)
                continue
            if self._fits(rec.demand):
                with self._lock:
                    if not rec.pending:  # killed meanwhile
                        continue
                    self.pending_actors.remove(slot)
                try:
                    self._start_actor(slot)
                except OSError:  # the node is stopping
                    return
            elif not rec.warned and time.monotonic() - rec.pending_since > self.stuck_warning_s:
                rec.warned = True
                self._warn_pending_actor(rec, time.monotonic() - rec.pending_since)

    def _free_resources_text(self) -> str:
        """What the node has free now, e.g. ``CPU 0, GPU 1``."""
        seg = self.segment
        names = resource_names(self.config)
        avail = list(seg.available())
        avail[0] += 1000 * seg.free_tokens()
        return ", ".join(f"{n} {max(a, 0) / 1000:g}" for n, a in zip(names, avail))

    def _warn_pending_actor(self, rec: "ActorRecord", seconds: float) -> None:
        """An actor has waited this long for resources that other actors (or tasks) hold."""
        names = resource_names(self.config)
        wants = ", ".join(f"{n} {a / 1000:g}" for n, a in zip(names, rec.demand) if a)
        holders = sum(1 for r in self.actors.values()
                      if r is not rec and not r.dead and not r.pending and any(r.demand))
        warnings.warn(
            f"repartir: actor {rec.config['class_name']} has waited {seconds:.0f} s for its "
            f"resources ({wants}) and has not started: free now: "
            f"{self._free_resources_text()}; {holders} live actor(s) hold resources. Kill "
            f"actors you no longer need (repartir.kill), or ask for fewer resources.",
            RuntimeWarning, stacklevel=1)

    def kill_actor(self, slot: int, no_restart: bool = True,
                   cause: str = "it was killed by repartir.kill()") -> None:
        rec = self.actors.get(slot)
        with self._lock:
            proc = self.actor_procs.get(slot)
            never_started = rec is not None and rec.pending
            if never_started:
                rec.pending = False
                self.pending_actors.remove(slot)
        if never_started:  # dead before it started: nothing to stop, nothing to release
            self._end_pending_actor(slot, rec, cause)
            return
        if rec is None or proc is None:
            return
        rec.killed = True
        rec.kill_cause = cause
        if no_restart:
            rec.restarts_left = 0
        try:
            proc.kill()
        except ProcessLookupError:
            pass

    def _end_pending_actor(self, slot: int, rec, cause: str) -> None:
        seg = self.segment
        epoch = seg.bump_actor_epoch(slot)
        rec.dead = True
        rec.held = None
        seg.set_note(slot, cause)
        seg.set_slot_state(slot, SlotState.ACTOR_DEAD)
        self._broadcast(encode((MSG_ACTOR_EPOCH, slot, rec.actor_id, epoch, True, cause, [])))
        self._fail_actor_inbox(slot, rec)

    def _watch_actor(self, slot: int, proc: subprocess.Popen) -> None:
        code = proc.wait()
        self._finish_output(proc)
        if self.stopping or self.segment.shutting_down:
            return
        seg = self.segment
        rec = self.actors[slot]
        running = [task_id for _, task_id, _, _ in seg.running(slot)]
        seg.clear_running(slot)
        seg.release_held(slot)  # (an actor process itself holds nothing)
        self._drop_pins(slot)
        with self._lock:
            if self.actor_procs.get(slot) is proc:
                del self.actor_procs[slot]
        detail = (f"killed by signal {signal.Signals(-code).name}" if code < 0
                  else f"exit code {code}")
        restart = False
        if code in (CTOR_FAILED_EXIT, EXITED_ON_PURPOSE):  # not restarted
            cause = seg.note(slot)
        elif rec.killed and rec.restarts_left == 0:
            cause = rec.kill_cause
        elif rec.restarts_left != 0:  # restart: the constructor runs again
            if rec.restarts_left > 0:
                rec.restarts_left -= 1
            rec.killed = False
            restart, cause = True, detail
        else:
            cause = (f"its process died ({detail}) after "
                     f"{rec.config['max_restarts']} restart(s) (max_restarts)")
        # A new epoch: calls sent to the dead process (in its inbox or already taken from
        # it) are re-sent or failed by their callers, who all hear of it.
        epoch = seg.bump_actor_epoch(slot)
        if restart:
            seg.set_slot_state(slot, SlotState.ACTOR_RESTARTING)
        else:
            rec.dead = True
            rec.held = None
            seg.set_note(slot, cause)
            seg.set_slot_state(slot, SlotState.ACTOR_DEAD)
            if any(rec.demand):
                seg.release(rec.demand, 0)
        self._broadcast(encode(
            (MSG_ACTOR_EPOCH, slot, rec.actor_id, epoch, not restart, cause, running)))
        self._broadcast(encode((MSG_OWNER_DIED, slot)))
        if restart:
            try:
                self._spawn(slot, actor=rec.config, state=SlotState.ACTOR_RESTARTING)
            except OSError:  # the node is stopping (its session directory is gone)
                return
        else:
            self._fail_actor_inbox(slot, rec)

    def _fail_actor_inbox(self, slot: int, rec: ActorRecord) -> None:
        """Answer the calls waiting in the inbox of the dead actor ``rec`` with
        ActorDiedError -- only while the slot is still that actor's: a new actor may have
        been created in it since (its calls, sent once its creation returned, are its own;
        the dead one's callers learn of its death from the epoch broadcast)."""
        with self._lock:
            if self.actors.get(slot) is not rec:
                return
            cause = self.segment.note(slot)
            raws = self.segment.inboxes[slot].drain()
        for raw in raws:
            msg = open_large(self.arena, slot, decode(raw))
            if msg is None:
                continue
            if msg.kind == MSG_CALL:
                self._tell_owners([(msg.owner, msg.task_id, 0.0, 0.0)], cause,
                                  StopReason.ACTOR_DIED)
            elif msg.kind in (MSG_DONE, MSG_ITEM):  # results of tasks the actor submitted
                locs, pins = result_blocks(msg)
                for loc in locs:
                    if loc[0] == ARENA and self.arena.claim(loc[1], loc[3], slot):
                        self.arena.release(loc[1])
                for pin in pins or ():
                    if type(pin) is int:
                        self.arena.unpin(pin)
                    else:  # a loan: its owner may free the object now
                        self._post(pin[0], encode((MSG_RELEASE, pin[1])))
