"""What arrives in this process's inbox (a part of :class:`~.core.CoreClient`, whose state it
shares; ``docs/architecture.md``, "Data path of a task", hop 8): completions and streamed
items of its tasks, borrowers' requests, owners' answers, crashes, actor epochs, released
loans, dead owners; in the driver also the handle events and actor operations of other
processes, for the node; elsewhere the node's answers to this process's operations."""

from __future__ import annotations

from ..errors import ObjectLostError, RepartirSystemError
from ..ids import new_object_id
from .actor_life import end_actor
from .object_table import unpin_all
from .protocol import (ARENA, ERROR, MSG_ACTOR_EPOCH, MSG_ACTOR_OP, MSG_ACTOR_OP_REPLY, MSG_CALL,
                       MSG_CRASHED, MSG_DONE, MSG_HANDLE, MSG_ITEM, MSG_OBJECT, MSG_OWNER_DIED,
                       MSG_RELEASE, MSG_REQUEST, Done, Item, Message, Status, StopReason, decode,
                       failed, open_large)
from .messages import log_unreturned_error
from .task_manager import Task

from .ownership import _log

__all__ = ["Completions"]


class Completions:
    def poll(self) -> int:
        """Handle what arrived in the inbox, dropped refs and the backlog; returns the
        number of messages handled (0 when another thread is polling)."""
        if not (self.dead_refs or self.dead_pins or self.backlog or self.inbox.pending()
                or self.arena._pending_unpins or self.dead_actors or self.dead_borrows
                or self.actor_ends):
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
            if self.dead_actors:
                self._drop_lives()
            while self.actor_ends:
                end_actor(self, *self.actor_ends.popleft())
            return len(msgs)
        finally:
            self._poll_lock.release()

    def _handle(self, msg: Message) -> None:
        """Decode-side of the state machines: feed ``msg`` to the task manager and the
        object table, and carry out what they return."""
        kind = msg.kind
        if kind == MSG_DONE:
            self._on_done(msg)
        elif kind == MSG_ITEM:
            self._on_item(msg)
        elif kind == MSG_CALL:
            if self.actor_epoch is None or msg.epoch == self.actor_epoch:
                self.calls.append(msg)
            # else: sent to an earlier process of this actor; its caller re-sends it
        elif kind == MSG_ACTOR_EPOCH:
            if msg.dead and self.actor_held:  # an actor created here: its arguments go
                self.actor_held.pop(msg.actor_id, None)
            self._carry_out(self.manager.actor_epoch(msg.slot, msg.actor_id, msg.epoch,
                                                     msg.dead, msg.cause, msg.running))
        elif kind == MSG_CRASHED:
            self._carry_out(self.manager.crashed(msg.task_id, msg.reason, msg.detail))
        elif kind == MSG_REQUEST:
            reply = self.objects.request(msg.object_id, msg.requester)
            if reply is not None:
                self._carry_out([reply])
        elif kind == MSG_RELEASE:
            self.dead_refs.append(msg.object_id)  # the loan's count goes (poll does it next)
        elif kind == MSG_OWNER_DIED:
            self._carry_out(self.objects.owner_died(msg.slot))
        elif kind == MSG_OBJECT:
            self._on_object(msg.object_id, msg.loc)
        elif kind == MSG_HANDLE and self.node is not None:
            self.node.handle_event(msg.op, msg.actor_id, msg.slot, msg.pid, msg.token)
        elif kind == MSG_ACTOR_OP and self.node is not None:
            self.node.serve_actor_op(self, msg)  # on a thread of its own: it may wait
        elif kind == MSG_ACTOR_OP_REPLY:
            self.op_replies[msg.request_id] = msg
        else:
            raise RepartirSystemError(
                f"slot {self.slot} received a message of unknown kind {kind!r}")

    def _on_done(self, msg: Done) -> None:
        _, task_id, status, payload, pins = msg  # (unpacked: this runs once per task)
        manager = self.manager
        ok = status == Status.OK
        results = ok and isinstance(payload, list)
        t = manager.tasks.get(task_id)
        if t is None:
            # A duplicate (a task retried after a crash reported too late), or a task of
            # an earlier process in this slot: nobody wants its results.
            if results:
                self.drop_results(payload)
            self._carry_out(unpin_all(pins))
            return
        if results and not self.claim_results(payload):
            self._carry_out(unpin_all(pins))
            self._carry_out(manager.crashed(task_id, "its process died as it sent the result",
                                            StopReason.CRASH))
            return
        if not ok:
            instrs = manager.raised(task_id, payload)
            if instrs:  # retried (as in Ray, a stream runs again; items already delivered
                self._carry_out(instrs)  # are dropped as they come again, by index)
                return
        else:
            manager.completed(task_id)
        if t.stream is not None:  # a streaming task ended: payload is the item count
            t.stream.end(None if ok else (ERROR, payload))
            self._finish(t, [])
            return
        if ok:
            if pins is not None:  # the result holds refs
                self._carry_out(self.objects.keep_pins(t.return_ids, pins))
            self._finish(t, payload)
        else:
            if not t.return_ids:  # (num_returns=0: no ref would ever raise it)
                log_unreturned_error(t.fn_name, (ERROR, payload))
            self._finish(t, [(ERROR, payload)] * len(t.return_ids))

    def _on_item(self, msg: Item) -> None:
        task_id, index, loc, pins = msg.task_id, msg.index, msg.loc, msg.pins
        t = self.manager.get(task_id)
        if (t is None or t.stream is None or not t.stream.alive()
                or index < t.stream.delivered):  # (a retry yields them again)
            self.drop_results([loc])
            self._carry_out(unpin_all(pins))
            return
        if not self.claim_results([loc]):
            self._carry_out(unpin_all(pins))
            return  # the stream ends with the crash of its process
        oid = new_object_id()  # any number of items (return ids stop at 65,534)
        objects = self.objects
        objects.own(oid, loc, 0, None if pins is None else objects.adopt(pins, True))
        t.stream.delivered = index + 1
        t.stream.add(self.make_ref(oid))

    def _on_object(self, object_id: bytes, loc) -> None:
        """The owner answered a request for ``object_id``'s location."""
        objects = self.objects
        if not objects.wants(object_id):
            return  # every ref to it died meanwhile
        hold = None
        if loc[0] == ARENA:  # hold the block while our refs live, if it still is that object
            if self.arena.hold_if_generation(loc[1], loc[3]):
                hold = loc[1]
            else:
                loc = failed(ObjectLostError(
                    f"object {object_id.hex()} was freed by its owner before this "
                    f"process could hold it: keep a ref to it in its owner"))
        self._carry_out(objects.arrived(object_id, loc, hold))

    def _fail(self, t: Task, err: BaseException) -> None:
        """``t`` ended without a result: its refs (and stream) get ``err``."""
        loc = failed(err)
        if t.stream is not None:
            t.stream.end(loc)
        elif not t.return_ids:  # (num_returns=0: no ref would ever raise it)
            log_unreturned_error(t.fn_name, loc)
        self._finish(t, [loc] * len(t.return_ids))

    def _finish(self, t: Task, locs: list) -> None:
        """``t`` ended (it has left the task table): its return objects get ``locs``,
        borrowers that asked are answered, tasks waiting on them go, futures resolve; its
        spec and argument blocks are freed."""
        objects, manager, carry_out = self.objects, self.manager, self._carry_out
        futures = self.futures
        for rid, loc in zip(t.return_ids, locs):
            instrs = objects.resolve(rid, loc)
            if instrs:
                carry_out(instrs)
            if manager.waiting:  # (read: the common case has no task waiting at all)
                instrs = manager.resolved(rid)
                if instrs:
                    carry_out(instrs)
            if futures:
                waiting = futures.pop(rid, None)
                if waiting:
                    self._resolve(waiting, loc)
        if t.spec_block is not None:
            self.arena.release(t.spec_block)
            t.spec_block = None
        if t.args_block is not None:
            self.arena.release(t.args_block)
            t.args_block = None
        t.deps = t.held = t.keep = None
