"""What arrives in this process's inbox (a part of :class:`~.core.CoreClient`, whose state it
shares; ``docs/architecture.md``, "Data path of a task", hop 8): completions and streamed
items of its tasks, borrowers' requests, owners' answers, crashes, actor epochs, released
loans, dead owners."""

from __future__ import annotations

import pickle

from ..errors import ActorDiedError, ObjectLostError, RepartirSystemError
from ..ids import new_object_id
from ..serialization import error_from_payload
from .actor_life import end_actor
from .protocol import (MSG_ACTOR_EPOCH, MSG_CALL, MSG_CRASHED, MSG_DONE, MSG_ITEM, MSG_OBJECT,
                       MSG_OWNER_DIED, MSG_RELEASE, MSG_REQUEST, Crashed, Message, Status,
                       StopReason, decode, open_large)
from .messages import log_unreturned_error
from .task_state import after_crash, retries_error

from .ownership import _Task, _log

__all__ = ["Completions"]


class Completions:
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
                        msg = open_large(self.arena, self.slot, decode(m))
                        if msg is not None:
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
                if not t.return_ids:  # (num_returns=0: no ref would ever raise it)
                    log_unreturned_error(t.fn_name, ("e", payload))
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
            elif not t.return_ids:  # (num_returns=0: no ref would ever raise it)
                log_unreturned_error(t.fn_name, ("x", pickle.dumps(err, 5)))
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

    def _should_retry(self, t: _Task, payload: bytes) -> bool:
        retry = t.opts.retry_exceptions
        if not retry or t.cancelled or t.attempt >= t.opts.max_retries:
            return False  # (decided before the payload is unpickled: the common case)
        return retries_error(retry_exceptions=retry, cancelled=t.cancelled, attempt=t.attempt,
                             max_retries=t.opts.max_retries,
                             cause=error_from_payload(payload).cause)

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
