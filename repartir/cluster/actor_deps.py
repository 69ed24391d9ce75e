"""Actor method calls of a cluster driver whose ref arguments are not ready yet
(docs/cluster.md, "Dependent tasks"): ``handle.m.remote(ref)`` returns its ref at once, as
in Ray, and the call waits in the driver until its arguments are ready; the calls of one
driver to one actor still reach it in the order they were made.

::

    a.m.remote(x)  x not ready, or an earlier call to a waits ─▶ ActorDeps.defer: the
        arguments pickled now (an unpicklable one raises at once), each top-level ref as a
        placeholder, nested ones captured (nested.py); the call joins the actor's queue
        (and the client's ``inflight``, on no node)
    each turn of the loop thread ─▶ ActorDeps.step: for each actor, from the head of its
        queue, while the call's refs are all ready:
            a top-level one failed ─▶ the call's ref raises that error; the next call goes on
            the actor is dead, or the head is lost ─▶ the call fails as it would at .remote()
            else ─▶ each placeholder becomes a StoredArg (kept on the actor's node) or the
                    value (kept in the driver), each nested ref a RemoteArg (kept on the
                    actor's node), a FailedArg or the value, and the call goes to the
                    actor's node with the next batch, behind the calls before it
        the first call that waits stops its actor's queue: a later call never overtakes it

An object kept on another node than the actor's, top-level or nested, is pulled into the
driver first (as :meth:`ActorDeps.resolve` does for the top-level ones of a call that goes
at once) and travels with the call: the actor's node runs the calls of a driver in the
order they arrive, and a call whose node had to pull an argument first would let the calls
after it run before it.

The **creation** of an actor whose constructor's ref arguments are not ready
(``A.remote(x)``) waits the same way, at the head of the actor's queue
(:meth:`ActorDeps.prepare_create`): the actor is placed, named and its handle returned at
once; the creation goes to its node once the arguments are ready (an argument that failed
leaves the actor dead: its calls raise ``ActorDiedError`` saying why), and the calls made
meanwhile go after it.

A call whose own ref is dropped while it waits still runs, as in Ray, and keeps its actor
alive until it is sent; one cancelled while it waits fails with ``TaskCancelledError`` and
is not sent.  Calls still waiting when the driver shuts down are dropped with it (their
actor ends with the driver, unless detached).  Every method but :meth:`ActorDeps.defer`,
:meth:`ActorDeps.resolve` and :meth:`ActorDeps.prepare_create` is called with the client's
lock held.
"""

from __future__ import annotations

import collections
import os
import pickle
from typing import Any

from ..errors import ActorDiedError, NodeDiedError
from ..runtime.objectref import ObjectRef
from .actors import ActorTask
from .borrows import RemoteArg
from .deps import _Pending, _substituted, settle_error
from .nested import PREFIX, FailedArg, pickled_capturing
from .node_actors import ActorKey
from .state import StoredArg
from .values import naming_arguments
from .wire import encode

__all__ = ["ActorDeps"]

_CALL, _CREATE = ActorKey("call"), ActorKey("create")


class _Call:
    """A waiting call: its task id and task (an :class:`~.actors.ActorTask` on no node yet),
    the refs it holds (the top-level ref arguments, then the nested refs), how many of
    them are top-level, and the life of the handle it was made on (``actors._Life``): the
    actor does not end for want of handles while a call to it waits."""

    __slots__ = ("tid", "task", "refs", "top", "life")

    def __init__(self, tid: bytes, task: ActorTask, refs: list, top: int, life: Any) -> None:
        self.tid, self.task, self.refs, self.top, self.life = tid, task, refs, top, life


class ActorDeps:
    """The waiting actor calls of a :class:`~.client.ClusterClient` (its ``_actor_deps``;
    see the module's docstring).

    Attributes:
        queues: ``{actor id: deque of _Call}``, each actor's waiting calls in call order.
        calls: ``{task id: _Call}``, the same calls by task id.
        creating: ``{actor id: _Call}``, the creations waiting for their arguments (each
            at the head of its actor's queue; its task id is empty).
        released: calls sent so far after waiting.
    """

    def __init__(self, client: Any, ref_type: type) -> None:
        self.c = client
        self.ref_type = ref_type
        self.queues: dict[bytes, collections.deque[_Call]] = {}
        self.calls: dict[bytes, _Call] = {}
        self.creating: dict[bytes, _Call] = {}
        self.released = 0

    def resolve(self, actor: Any, args: tuple, kwargs: dict, once: bool = False) -> tuple:
        """``(args, kwargs, error)``: the arguments of a call or creation of ``actor`` whose
        refs are ready, each ref replaced by its value (pulled here if it is kept on another
        node than the actor's; ``once``, a call's: a large value of the driver by a
        ``DriverArg``, driver_values.py) or, kept on the actor's node, by a :class:`StoredArg`;
        ``error`` that of a ref whose task failed (then no arguments), else ``None``.
        Called without the lock."""
        refs = [a for a in (*args, *kwargs.values()) if isinstance(a, ObjectRef)]
        if not refs:
            return args, kwargs, None
        c = self.c
        ids = c._check_refs(refs)
        c._wait_for(ids, None, len(ids))
        with c._lock:
            for t in ids:
                if c.results[t][0] == "error":  # nothing to send: no arguments
                    return (), {}, c.results[t][1]
            node = actor.node

        def sub(a: Any) -> Any:
            if not isinstance(a, ObjectRef):
                return a
            res = c.results[a._id]
            if res[0] == "stored" and res[1] == node:
                return StoredArg(a._id)
            return (once and c.dvals.arg(a._id, res)) or c._get_one(a._id, None)

        return tuple(sub(a) for a in args), {k: sub(v) for k, v in kwargs.items()}, None

    def prepare_create(self, actor: Any, args: tuple, kwargs: dict) -> _Call | None:
        """The creation of ``actor`` (``A.remote(*args, **kwargs)``) as a call to wait in
        its queue (see :meth:`queue_create`) if a ref among its arguments is not ready (or
        is kept on another node than ``actor.node``); else ``None``.  Called without the
        lock.

        Raises:
            RepartirError: a ref of another cluster connection, or one nested in the
                arguments (a constructor does not take them on a cluster).
            SerializationError: an argument cannot be pickled.
        """
        c = self.c
        refs = [a for a in (*args, *kwargs.values()) if isinstance(a, ObjectRef)]
        if not refs:
            return None
        c._check_refs(refs)
        with c._lock:
            if all(self._top_ready(r._id, actor.node) for r in refs):
                return None

        def sub(a: Any) -> Any:
            return _Pending(a._id) if isinstance(a, ObjectRef) else a

        with naming_arguments(f"{actor.class_name}.__init__", args, kwargs):  # values.py
            frames = encode(((actor.spec, *(sub(a) for a in args)),
                             {k: sub(v) for k, v in kwargs.items()}))
        payload = [frames[0], *(pickle.PickleBuffer(f) for f in frames[1:])]
        return _Call(b"", ActorTask(_CREATE, payload, 0, actor), refs, len(refs), None)

    def queue_create(self, call: _Call | None) -> None:
        """Put the creation ``call`` (from :meth:`prepare_create`; ``None``: nothing) at the
        head of its actor's queue: the calls made on the actor wait behind it.  Holds the
        lock."""
        if call is not None:
            actor = call.task.actor
            self.creating[actor.id] = call
            self.queues.setdefault(actor.id, collections.deque()).appendleft(call)
            self.c._wake.signal()

    def defer(self, handle: Any, how: Any, method: str, args: tuple, kwargs: dict,
              nret: int = 1, nested: list | None = None) -> tuple | None:
        """``handle.method.remote(*args, **kwargs)`` (``how``: what the node's
        ``NodeActors.call`` takes for the method) when a ref among the arguments (top-level,
        or ``nested`` in them once pickled) is not ready, or an earlier call of this actor
        waits: a 1-tuple of what ``.remote()`` returns (a ref; for ``nret`` other than 1
        what returns.py makes) for a call that waits here; else ``None``, and the caller
        sends the call as usual.  A ref kept on another node than the actor's counts as
        not ready (see the module's docstring).  Called without the lock.

        Raises:
            RepartirError: a ref of another cluster connection.
            SerializationError: an argument cannot be pickled.
            NodeDiedError: the cluster is gone.
        """
        c, actor = self.c, handle._actor
        refs = [a for a in (*args, *kwargs.values()) if isinstance(a, ObjectRef)]
        if not refs and not nested and actor.id not in self.queues:
            return None
        c._check_refs([*refs, *(nested or ())])  # RepartirError: another connection's
        with c._lock:
            if actor.id not in self.queues and \
                    all(self._top_ready(r._id, actor.node) for r in refs) and \
                    all(self._nested_ready(r._id, actor.node) for r in nested or ()):
                return None

        def sub(a: Any) -> Any:
            return _Pending(a._id) if isinstance(a, ObjectRef) else a

        with naming_arguments(f"{actor.class_name}.{method}", args, kwargs):  # values.py
            payload, inner = pickled_capturing(((actor.id, how, *(sub(a) for a in args)),
                                                {k: sub(v) for k, v in kwargs.items()}))
        c._check_refs(inner)
        r = actor.max_task_retries
        task = ActorTask(_CALL, payload, (1 << 30) if r == -1 else r, actor)
        tid = os.urandom(16)
        with c._lock:
            if c._failed is not None:
                raise NodeDiedError(c._failed)
            c.inflight[tid] = task  # on no node yet: task.node == ""
            call = self.calls[tid] = _Call(tid, task, refs + inner, len(refs), handle._life)
            self.queues.setdefault(actor.id, collections.deque()).append(call)
            c._wake.signal()  # the loop looks at it at once (its refs may be ready)
            if nret != 1:
                return (c.returns.refs_locked(tid, nret, f"{actor.class_name}.{method}"),)
        return (self.ref_type(tid, c),)

    # ------------------------------------------------------------------ readiness

    def _ready(self, oid: bytes) -> bool:
        """Whether object ``oid`` is ready: its result came, and is not kept on a node
        that died since (it is being rebuilt, or is about to fail)."""
        c = self.c
        res = c.results.get(oid)
        if res is None:
            return False
        return res[0] != "stored" or (res[1] in c._eps
                                      and c.nodes_seen.get(res[1], {}).get("Alive", False))

    def _top_ready(self, oid: bytes, node: str) -> bool:
        """Whether argument ``oid`` of a call to an actor on ``node`` can go: ready, and
        kept in the driver or on ``node`` (``node`` need not pull it: a pull there would
        let the calls after it run first)."""
        res = self.c.results.get(oid)
        return self._ready(oid) and (res[0] != "stored" or res[1] == node)

    def _nested_ready(self, oid: bytes, node: str) -> bool:
        """Whether a nested argument ``oid`` of a call to an actor on ``node`` can go as
        ``nested.resolve_nested`` sends it (a RemoteArg for an object kept on a node, so
        kept on ``node`` only; else the value kept in the driver, or the error)."""
        if not self._ready(oid):
            return False
        res = self.c.results[oid]
        kept = self.c._kept_on(res)
        return kept is None or kept[0] == node

    # ------------------------------------------------------------------ the loop's hook

    def step(self) -> None:
        """Send (or fail) the waiting calls at the heads of the actors' queues whose
        arguments are ready, each actor's in order."""
        moved = False
        for aid in list(self.queues):
            queue = self.queues[aid]
            while queue and self._go(queue[0]):
                self.calls.pop(queue.popleft().tid, None)
                moved = True
            if not queue:
                del self.queues[aid]
        if moved:
            self.c._cv.notify_all()

    def _go(self, call: _Call) -> bool:
        """Send or fail ``call`` if its arguments are ready (``True``), else start pulling
        those kept on other nodes than its actor's and leave it (``False``)."""
        c = self.c
        task = call.task
        actor = task.actor
        if task.key == _CREATE:
            if actor.dead is not None:  # killed, or ended, while it waited
                del self.creating[actor.id]
                return True
        elif c.inflight.get(call.tid) is not task:  # failed meanwhile (the client broke)
            return True
        ready = True
        for i, r in enumerate(call.refs):
            if not self._ready(r._id):
                ready = False
            elif not self._top_ready(r._id, actor.node):
                ready = False
                if r._id not in c._fetches and r._id not in c._fetch_start:
                    c._fetch_start.append(r._id)  # pulled here (client_loop._flush)
        if not ready:
            return False
        if task.key == _CREATE:
            self._create(call)
            return True
        for r in call.refs[:call.top]:
            res = c.results[r._id]
            if res[0] == "error":
                self._fail(call, res[1])
                return True
        why = c.actors.dead_why(actor)
        if c._failed is not None:
            self._fail(call, NodeDiedError(c._failed))
        elif why is not None:
            self._fail(call, ActorDiedError(
                f"actor {actor.class_name} ({actor.id.hex()[:12]}) is dead: {why}"))
        elif actor.node not in c._eps:
            self._fail(call, ActorDiedError(
                f"node {actor.node[:12]} died before it got a call to actor "
                f"{actor.class_name}"))
        else:
            self._send(call)
        return True

    def _send(self, call: _Call) -> None:
        c = self.c
        task, nid = call.task, call.task.actor.node
        subst: dict[bytes, Any] = {}
        extra: dict[str, Any] = {}
        borrowed = []
        for i, r in enumerate(call.refs):
            oid = r._id
            res = c.results[oid]
            if i < call.top:  # a large value of the driver: once per node (driver_values.py)
                subst[oid] = StoredArg(oid) if res[0] == "stored" else \
                    c.dvals.arg(oid, res) or res[1]
            elif res[0] == "error":  # a nested ref that raises it (nested.py)
                extra[PREFIX + oid.hex()] = FailedArg(res[1])
            elif res[0] in ("stored", "fetched") and c._kept_on(res)[0] == nid:
                rec, size = c.nodes_seen[nid], c._kept_on(res)[1]  # kept there: not pulled
                extra[PREFIX + oid.hex()] = RemoteArg(oid, nid, rec["NodeManagerAddress"],
                                                      size, rec.get("CurveKey"))
                borrowed.append((oid, nid))
            else:
                extra[PREFIX + oid.hex()] = res[1]  # a value in the driver (pulled here)
        task.payload = _substituted(task.payload, subst, extra)
        task.dvals = c.dvals.frames_of(subst.values())
        task.node = nid
        c._count[nid] = c._count.get(nid, 0) + 1
        c._outbox.setdefault(nid, []).append(call.tid)
        if borrowed:
            c.borrows.borrow(call.tid, borrowed)
        call.refs, call.life = [], None  # sent: it holds neither its arguments' refs nor
        self.released += 1              # its actor (an end comes after it)

    def _create(self, call: _Call) -> None:
        """Send the creation ``call`` whose arguments are ready to its actor's node (or
        leave the actor dead: an argument failed, or the cluster is gone)."""
        c = self.c
        actor = call.task.actor
        del self.creating[actor.id]
        results = {r._id: c.results[r._id] for r in call.refs}
        call.refs = []  # it no longer holds its arguments' refs
        errors = [res[1] for res in results.values() if res[0] == "error"]
        if errors or c._failed is not None:
            actor.dead = (f"an argument of its constructor failed: {errors[0]}" if errors
                          else f"it was not created: {c._failed}")
            c.actors._per_node[actor.node] = c.actors._per_node.get(actor.node, 1) - 1
            return
        actor.args = _substituted(call.task.payload, {  # a restart sends them again
            oid: StoredArg(oid) if res[0] == "stored" else res[1]
            for oid, res in results.items()}, {})
        tid = c.actors._enqueue_locked(actor.node, _CREATE, (), None, actor,
                                       payload=actor.args)
        actor.creation = self.ref_type(tid, c)
        self.released += 1

    def _fail(self, call: _Call, error: BaseException) -> None:
        """``call`` cannot run: its ref raises ``error``."""
        c, tid = self.c, call.tid
        call.refs, call.life = [], None
        c.inflight.pop(tid, None)
        settle_error(c, tid, error)

    def cancel(self, tid: bytes, error: BaseException) -> None:
        """``repartir.cancel`` of waiting call ``tid``: it fails with ``error`` and is never
        sent (it leaves its queue at the loop's next step)."""
        self._fail(self.calls[tid], error)
        self.c._cv.notify_all()

