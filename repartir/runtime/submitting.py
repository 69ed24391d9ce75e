"""Submitting tasks and actor calls (a part of :class:`~.core.CoreClient`, whose state it
shares; ``docs/architecture.md``, "Data path of a task", hops 1-3): exported functions,
dependencies, the task record and its ``HOLDS_REFS`` flag, the backlog, actor call queues,
retries."""

from __future__ import annotations

import pickle
from typing import Sequence

from ..config import resource_names
from ..errors import SerializationError
from ..ids import new_task_id, return_id
from ..scheduler import record
from ..scheduler.record import HEADER as RECORD_HEADER
from ..serialization import serialize
from .actor_life import actor_dead_error
from .messages import ARENA_SPEC, Dep, TaskOptions, demand_vector, name_bad_argument
from .protocol import ARENA, MSG_CALL, encode
from .objectref import ObjectRef, capture_refs
from .streaming import DYNAMIC, StreamLink

from .ownership import _EMPTY_ARGS
from .task_manager import Task

__all__ = ["Submitting"]


class Submitting:
    def export_function(self, key: bytes, blob_factory) -> tuple[int, int]:
        """Store a function's cloudpickle blob in the arena once; returns (offset, nbytes)."""
        loc = self.functions.get(key)
        if loc is None:
            blob = blob_factory()
            off = self.arena.allocate(len(blob), self.slot)
            self.arena.writable(off, len(blob))[:] = blob
            loc = self.functions[key] = (off, len(blob))
        return loc

    def demand_vector(self, num_cpus: float, num_gpus: float, resources: dict,
                      memory: float = 0) -> tuple:
        """The resource vector of a task on this node (see :func:`messages.demand_vector`)."""
        return demand_vector(resource_names(self.config), self.segment.totals(), num_cpus,
                             num_gpus, resources, memory)

    def submit(self, fn_key, fn_loc: tuple[int, int], fn_name: str, args: Sequence,
               kwargs: dict, opts: TaskOptions, target: int | None = None,
               stream=None, actor_id: bytes | None = None, keep=None) -> list[ObjectRef]:
        """Submit a task; returns its ``opts.num_returns`` refs at once (none for a
        streaming task: see :meth:`stream`).

        ``target`` is ``None`` for a task (pushed to this process's deque, stolen by any
        worker) or the slot of an actor (``fn_key`` is then the method name; the call goes
        to the actor's inbox, after the earlier calls of this process to that actor).
        ``keep``: an actor call's handle count in this process, kept until the call is in
        the actor's inbox (so that the exit call after the last handle comes behind it).

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
                    self.land_unsent(nested)
                    raise name_bad_argument(fn_name, args, kwargs) from None
            args_loc = self.store(s)  # large arguments go to the arena once, as Ray does
            if args_loc[0] == ARENA:
                args_block = args_loc[1]
        else:
            args_loc, nested = _EMPTY_ARGS, []
        task_id = new_task_id()
        helper = self.helper
        parent = helper.calls[-1] if helper is not None and helper.calls else None
        nids = 1 if num_returns == DYNAMIC else max(num_returns, 0)  # (streaming: none)
        t = Task(task_id, [return_id(task_id, i) for i in range(nids)], fn_name, opts, target,
                 actor_id)
        t.spec = (fn_key, fn_loc[0], fn_loc[1], fn_name, args_loc, num_returns)
        t.deps = deps
        t.held = nested
        t.keep = keep
        t.args_block = args_block
        if stream is not None:
            t.stream = StreamLink(stream)
            stream._task_id = task_id
        with self._lock:
            objects = self.objects
            refs = []
            for rid in t.return_ids:
                objects.own(rid, None, 1)
                refs.append(ObjectRef(rid, self.slot, self, True))
            pending = [d._id for d in deps if self._loc_of(d) is None] if deps else []
            instrs = self.manager.submit(t, pending, parent)
            if instrs:
                self._carry_out(instrs)
        return refs

    def _body(self, t: Task) -> bytes:
        fn_key, fn_off, fn_len, fn_name, args_loc, nret = t.spec
        dep_locs = [self._loc_of(d) for d in t.deps]
        return pickle.dumps((fn_key, fn_off, fn_len, fn_name, args_loc, dep_locs, nret), 5)

    def _push(self, t: Task) -> None:
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

    def _send_call(self, t: Task) -> None:
        """Send an actor call to its actor's inbox (its body in an arena block when large),
        stamped with the epoch of the actor's process; a call to a dead actor fails."""
        err = actor_dead_error(self.segment, t.target, t.actor_id)
        if err is not None:
            self._carry_out(self.manager.call_failed(t, err))
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
        t.keep = None  # in the inbox: the exit call after the last handle comes behind it

    def _flush_backlog(self) -> None:
        """Move the backlog into this process's deque as far as it fits (records stay in
        the backlog, in order per priority, while workers are busy and the deque is
        full), and wake workers for what went in."""
        pushed = self.backlog.flush_into(self.deque)
        if pushed:
            self.segment.notify_work(pushed)

    def _may_wait(self, ref: ObjectRef, dep: bool) -> bool:
        """Whether a task holding ``ref`` (a top-level dependency when ``dep``, ready then;
        else a ref nested in its arguments) may, through it, wait on another task: its
        object is pending, or holds refs, or is borrowed (its value is not known here)."""
        objects = self.objects
        return objects.holds_refs(ref._id) or (not dep and objects.location(ref._id) is None)

    def _holds_refs(self, t: Task) -> bool:
        """Whether the task must never run on top of a task blocked in ``get`` (the record
        flag ``HOLDS_REFS``): it might wait on that task, which cannot go on until it
        returns.  A task holding no such refs can only wait on tasks it submits itself."""
        may_wait = self._may_wait
        if t.held and any(may_wait(r, False) for r in t.held if type(r) is ObjectRef):
            return True
        return bool(t.deps) and any(may_wait(d, True) for d in t.deps)

    def _retry(self, t: Task) -> None:
        """Run ``t`` again (the manager counted the attempt)."""
        if t.target is not None:
            self._send_call(t)
            return
        self.backlog.append(t.record)
        self._flush_backlog()
