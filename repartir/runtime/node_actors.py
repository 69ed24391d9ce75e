"""The node's side of actors (a part of :class:`~.node.Node`, whose state it shares;
``docs/architecture.md``, "Actors"): slots for new actors, starting them when their
resources are free (oldest first), watching their processes (restart or death), killing
them, and failing the calls left in a dead actor's inbox; named actors, the count of every
actor's handles across the node's processes (``handle_table.py``), and the actor operations
(create, look up, kill) that tasks and actors ask of the node (``protocol.ActorOp``),
answered on a thread of their own."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import threading
import time
import warnings

from ..config import resource_names
from ..errors import RepartirError, RepartirSystemError
from ..scheduler.segment import SlotState
from .actor_life import CTOR_FAILED_EXIT
from .handles import new_token
from .messages import EXITED_ON_PURPOSE
from .protocol import (ARENA, MSG_ACTOR_EPOCH, MSG_ACTOR_OP_REPLY, MSG_CALL, MSG_DONE, MSG_ITEM,
                       MSG_OWNER_DIED, MSG_RELEASE, ActorOp, ActorOpKind, HandleOp, StopReason,
                       decode, encode, open_large, result_blocks)


__all__ = ["NodeActors", "ActorRecord", "no_such_actor"]


def no_such_actor(name: str, namespace: str) -> ValueError:
    return ValueError(f"no live actor named {name!r} in namespace {namespace!r}")


def _error_blob(exc: BaseException) -> bytes:
    """``exc`` pickled for an :class:`ActorOpReply` (as a ``RepartirError`` with its text
    when it cannot be pickled)."""
    try:
        return pickle.dumps(exc, 5)
    except Exception:
        return pickle.dumps(RepartirError(f"{type(exc).__name__}: {exc}"), 5)


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
    # -- handles, named actors, operations asked by other processes ----------------------

    def handle_event(self, op: int, actor_id: bytes, slot: int, pid: int, token: int) -> None:
        """A process's handles of ``actor_id`` changed (``protocol.HandleOp``); an actor
        whose last handle anywhere is gone is queued for the driver's client to end."""
        holder = (slot, pid)
        with self._handles_lock:
            table = self.handles
            if op == HandleOp.ADD:
                ends = table.add(actor_id, holder)
            elif op == HandleOp.REMOVE:
                ends = table.remove(actor_id, holder)
            elif op == HandleOp.IN_FLIGHT:
                ends = table.in_flight(actor_id, token)
            elif op == HandleOp.LANDED:
                ends = table.landed(actor_id, token)
            else:
                raise RepartirSystemError(f"a handle event of unknown kind {op!r}")
        self._queue_ends(ends)

    def _queue_ends(self, ends: list) -> None:
        for e in ends:  # (the driver's poll sends each exit call: actor_life.end_actor)
            self.actor_ends.append((e.slot, e.actor_id, e.class_name))

    def _holder_died(self, slot: int, pid: int) -> None:
        """A process died: the handles it held count no more."""
        with self._handles_lock:
            ends = self.handles.process_died((slot, pid))
        self._queue_ends(ends)

    def _forget_actor(self, actor_id: bytes) -> None:
        with self._handles_lock:
            self.handles.forget(actor_id)

    def new_actor(self, spec: dict, creation: bytes, held: list | None,
                  dest: tuple[int, int]) -> tuple[bool, tuple]:
        """Create an actor (or, for a named one with ``get_if_exists``, find it): returns
        ``(created, fields)``, ``fields`` being a handle's fields and the token of that
        handle, in flight to the process ``dest`` ``(slot, pid)`` (``actor._rebuild_handle``).

        ``spec``: ``name``, ``namespace``, ``get_if_exists``, ``detached``, ``config``,
        ``demand`` and ``handle`` (class name, method table, ``max_task_retries``).

        Raises:
            ValueError: an actor with this name exists (without ``get_if_exists``).
            RepartirError: every actor slot is taken (``REPARTIR_MAX_ACTORS``).
        """
        name, namespace = spec["name"], spec["namespace"]
        with self._naming:  # "is the name free? then create" is one step
            if name is not None:
                existing = self.named(namespace, name, dest)
                if existing is not None:
                    if spec["get_if_exists"]:
                        return False, existing
                    raise ValueError(f"an actor named {name!r} already exists in namespace "
                                     f"{namespace!r}; pass get_if_exists=True to reuse it")
            actor_id = os.urandom(16)
            slot = self.create_actor(actor_id, creation, spec["config"], spec["demand"], held)
            class_name, methods, max_task_retries = spec["handle"]
            fields = (actor_id, slot, class_name, methods, max_task_retries, self.session)
            token = new_token()
            with self._handles_lock:
                ends = self.handles.register(actor_id, slot, class_name, spec["detached"],
                                             token, dest)
            if name is not None:
                self.named_actors[(namespace, name)] = fields
        self._queue_ends(ends)
        return True, fields + (token,)

    def named(self, namespace: str, name: str, dest: tuple[int, int]) -> tuple | None:
        """The fields of a handle of the live actor ``name`` of ``namespace``, with a token
        in flight to ``dest``; ``None`` when there is no such actor, or its last handle is
        gone (it is ending)."""
        fields = self.named_actors.get((namespace, name))
        if fields is None:
            return None
        actor_id, slot = fields[0], fields[1]
        seg = self.segment
        if (seg.actor_epoch(slot)[1] != actor_id
                or seg.slot_state(slot)[0] == SlotState.ACTOR_DEAD):
            return None
        token = new_token()
        with self._handles_lock:
            if self.handles.count(actor_id) is None or self.handles.ending(actor_id):
                return None
            self.handles.in_flight(actor_id, token, dest)
        return fields + (token,)

    def serve_actor_op(self, client, msg: ActorOp) -> None:
        """Answer another process's :class:`ActorOp`, on a thread of its own (creating an
        actor may wait for the slot of an actor that is ending, whose exit call's completion
        the driver's poll must handle meanwhile)."""
        threading.Thread(target=self._serve, args=(client, msg), daemon=True,
                         name="repartir-actor-op").start()

    def _serve(self, client, msg: ActorOp) -> None:
        dest = (msg.reply_slot, msg.pid)
        try:
            if msg.op == ActorOpKind.CREATE:
                spec, creation = msg.args
                result = self.new_actor(spec, creation, None, dest)
            elif msg.op == ActorOpKind.GET_ACTOR:
                namespace, name = msg.args
                result = self.named(namespace, name, dest)
                if result is None:
                    raise no_such_actor(name, namespace)
            elif msg.op == ActorOpKind.KILL:
                actor_id, slot, no_restart = msg.args
                self.kill_actor(slot, no_restart, actor_id=actor_id)
                result = None
            else:
                raise RepartirSystemError(f"an actor operation of unknown kind {msg.op!r}")
            ok, blob = True, pickle.dumps(result, 5)
        except BaseException as exc:  # the asker raises it
            ok, blob = False, _error_blob(exc)
        client.post(msg.reply_slot, encode((MSG_ACTOR_OP_REPLY, msg.request_id, ok, blob)))

    # -- actor processes -------------------------------------------------------------------

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
                   cause: str = "it was killed by repartir.kill()",
                   actor_id: bytes | None = None) -> None:
        """Kill the actor at ``slot`` (only if it is still ``actor_id``, when given: a dead
        actor's slot may run another one now)."""
        rec = self.actors.get(slot)
        if actor_id is not None and (rec is None or rec.actor_id != actor_id):
            return
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
        self._forget_actor(rec.actor_id)
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
        self._holder_died(slot, proc.pid)  # the handles it held count no more
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
            self._forget_actor(rec.actor_id)
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
