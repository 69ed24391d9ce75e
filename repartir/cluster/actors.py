"""Actors of a driver connected to a cluster (docs/cluster.md, "Actors on a cluster").

``A.remote(...)`` in a connected driver places the actor on a node whose total resources fit
(custom resources attract it; among those, the node with the fewest of this driver's
actors, then the most CPUs free of its tasks) and asks that node to create it as an ordinary
local actor (``node_actors.py``).  ``handle.m.remote(...)`` sends the call to that node as a
task of the ordinary batches, so the calls of one driver reach the actor in submission
order (a call or creation whose ref arguments are not ready waits in the driver, and the
later calls to that actor behind it: ``actor_deps.py``), and their results come back like
task results (a :class:`~.client.ClusterRef`).

Named actors: the head keeps ``(namespace, name) -> actor`` (``node_actors.NodeActors.name``);
a named creation registers there first (a live duplicate raises ``ValueError``, or with
``get_if_exists`` returns that actor), :func:`get_actor` asks there.

Lifetime.  The driver that creates an actor is its **owner**: it counts its own handles
(one :class:`_Life` shared by them), and when the last one is dropped, or the driver shuts
down or exits, it asks the node to end the actor (after the calls made before) unless the
actor is ``lifetime="detached"``.  A handle passed to a task or an actor, or returned by
one, keeps the actor alive while the process that received it holds it (``handoff.py``:
holds counted by the actor's node); the owner's shutdown or exit ends it all the same.
Handles another driver got from :func:`get_actor` do not keep an actor alive.
``repartir.kill`` kills it at once.

Failures.  When the head declares an actor's node dead, its owner restarts it on another
node that fits, while ``max_restarts`` allows (-1: for ever): the constructor runs again
(the state is lost), the calls that were in flight are sent again while their
``max_task_retries`` allow, else they raise :class:`~repartir.errors.ActorDiedError` naming
the node, as do all calls once no restart is left.  A crash of the actor's process on a
live node is the node's business: it restarts the actor there under the same
``max_restarts`` (counted by the node).
"""

from __future__ import annotations

import io
import os
from collections import ChainMap
import pickle
import threading
import types
import weakref
from typing import Any

import cloudpickle

from ..config import CLUSTER_START_TIMEOUT_S
from ..errors import (ActorDiedError, GetTimeoutError, InfeasibleTaskError, NodeDiedError,
                      RepartirError)
from ..runtime.actor import ActorHandle, ActorMethod
from ..runtime.streaming import DYNAMIC, parse_num_returns
from ..serialization import reduce_code
from .handoff import rebuild_handle
from .nested import pickled_capturing, resolve_nested
from .node_actors import ActorKey
from .values import naming_arguments, owned
from .wire import encode

__all__ = ["ClusterActors", "ClusterActorHandle", "ActorTask"]

_CREATE, _CALL, _END, _KILL, _NAME, _HOLD, _UNHOLD = (
    ActorKey(op) for op in ("create", "call", "end", "kill", "name", "hold", "unhold"))
#: The options a node's local actor is created with (the others are the cluster's).
_LOCAL_OPTIONS = ("num_cpus", "num_gpus", "memory", "resources", "max_restarts",
                  "max_task_retries", "max_concurrency")


def _pickled(value: Any) -> list:
    frames = encode(value)
    return [frames[0], *(pickle.PickleBuffer(f) for f in frames[1:])]


class _ClassPickler(cloudpickle.CloudPickler):
    """Pickles an actor class with its methods by value.  cloudpickle sends a class made
    remote by value (its module's name holds the ``ActorClass``, not the class), but finds
    its methods through that wrapper and would send them by reference, which a node that
    cannot import the driver's module (a script, a test) could not load."""

    dispatch_table = ChainMap({types.CodeType: reduce_code},
                              cloudpickle.CloudPickler.dispatch_table)  # keeps file names

    def __init__(self, f: io.BytesIO, cls: type) -> None:
        super().__init__(f, protocol=5)
        self._cls = cls

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.FunctionType and obj.__module__ == self._cls.__module__ \
                and obj.__qualname__.startswith(self._cls.__qualname__ + "."):
            return self._dynamic_function_reduce(obj)
        return super().reducer_override(obj)


def _class_blob(cls: type, options: dict) -> bytes:
    f = io.BytesIO()
    _ClassPickler(f, cls).dump((cls, options))
    return f.getvalue()


class ActorTask:
    """An actor operation in flight: the fields of a task (``client._Task``) that the
    client's loop reads, and the actor it is about (``None`` for names)."""

    __slots__ = ("key", "blob", "payload", "demand", "node", "retries", "actor", "dvals")

    def __init__(self, key: ActorKey, payload: list, retries: int,
                 actor: "_Actor | None") -> None:
        self.key, self.blob, self.payload = key, b"", owned(payload)  # values.py
        self.demand: dict = {}
        self.retries, self.actor = retries, actor
        self.node = ""
        self.dvals: dict | None = None  # values of the driver it takes (driver_values.py)


class _Actor:
    """What a driver knows of one actor: where it is, how to create it again."""

    __slots__ = ("id", "class_name", "methods", "max_task_retries", "demand", "spec",
                 "args", "restarts_left", "node", "dead", "owner", "detached", "name",
                 "namespace", "creation", "held", "__weakref__")

    def __init__(self, record: dict, owner: bool) -> None:
        self.id: bytes = record["id"]
        self.class_name: str = record["class_name"]
        self.methods: dict = record["methods"]
        self.max_task_retries: int = record["max_task_retries"]
        self.node: str = record["node"]
        self.detached: bool = record.get("detached", False)
        self.name: str | None = record.get("name")
        self.namespace: str = record.get("namespace", "default")
        self.owner = owner
        self.demand: dict = {}
        self.spec: dict = {}
        self.args: list = []  # the constructor's arguments, pickled (owner: for restarts)
        self.restarts_left = 0
        self.dead: str | None = None  # why it is dead (calls raise ActorDiedError)
        self.creation: Any = None  # the ref of its (last) creation on a node
        self.held: set[bytes] = set()  # hold ids of the handles passed to this process

    def record(self) -> dict:
        """What the head keeps for a named actor."""
        return {"id": self.id, "class_name": self.class_name, "methods": self.methods,
                "max_task_retries": self.max_task_retries, "node": self.node,
                "detached": self.detached, "name": self.name, "namespace": self.namespace}


class _Life:
    """Shared by a driver's handles of one actor; when the last handle goes, it tells the
    driver (whose loop then ends the actor, if this driver owns it and it is not
    detached)."""

    __slots__ = ("actor_id", "dropped", "__weakref__")

    def __init__(self, actor_id: bytes, dropped: list) -> None:
        self.actor_id, self.dropped = actor_id, dropped

    def __del__(self) -> None:
        try:
            self.dropped.append(self.actor_id)
        except AttributeError:
            pass


class ClusterActorHandle(ActorHandle):
    """A handle, in a connected driver (or a task or actor running on a node), to an actor
    that lives on a node of the cluster.  ``handle.method.remote(...)`` returns a
    ``ClusterRef``.  Passed to a task or an actor (or returned by one), it becomes a handle
    of the receiving process, which calls the actor directly (``handoff.py``)."""

    def __init__(self, actors: "ClusterActors", actor: _Actor, life: _Life) -> None:
        super().__init__(actor.id, -1, actor.class_name, actor.methods,
                         actor.max_task_retries, "")
        self._actors = actors
        self._actor = actor
        self._life = life  # type: ignore[assignment]

    def __getattr__(self, name: str) -> ActorMethod:
        m = ActorHandle.__getattr__(self, name)
        return ClusterActorMethod(self, name, m._meta)

    @property
    def state(self) -> Any:
        """``"ALIVE"`` or ``"DEAD"`` as this driver knows (or the actor's own ``state``
        method, if its class has one)."""
        if "state" in self._methods:
            return ClusterActorMethod(self, "state", self._methods["state"])
        return "DEAD" if self._actors.dead_why(self._actor) else "ALIVE"

    def __reduce__(self):
        return (rebuild_handle, (self._actor.record(), self._actors.lend(self._actor)))


class ClusterActorMethod(ActorMethod):
    """``handle.method`` of a :class:`ClusterActorHandle`."""

    def options(self, *, num_returns: Any = None) -> "ClusterActorMethod":
        if num_returns is not None:
            parse_num_returns(num_returns, False)
        return ClusterActorMethod(self._handle, self._name, self._meta, num_returns)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Call the method on its node; returns at once a ref, a list of ``num_returns``
        refs, ``None`` (``num_returns=0``) or, for a generator method, an
        ``ObjectRefGenerator`` (returns.py).

        Raises:
            TypeError: the arguments do not fit the method's signature.
            RepartirError: ``num_returns="dynamic"`` (not on a cluster in this version); an
                argument that cannot be sent.
            NodeDiedError: the head stopped answering.
        """
        check = self._meta["check"]
        if kwargs or not check.min_pos <= len(args) <= check.max_pos:
            check.check(args, kwargs)
        nret = parse_num_returns(self._num_returns, False)
        if nret == DYNAMIC:
            raise RepartirError(
                f"{self._handle._class_name}.{self._name}: num_returns='dynamic' is not "
                f"available on a cluster in this version: use num_returns='streaming'")
        return self._handle._actors.call(self._handle, self._name, args, kwargs, nret)


class ClusterActors:
    """The actors of one :class:`~.client.ClusterClient` (its ``actors``; see the module's
    docstring).  Methods named ``*_locked`` run with the client's lock held (its loop)."""

    def __init__(self, client: Any, ref_type: type) -> None:
        self.client = client
        self._ref = ref_type
        self.actors: dict[bytes, _Actor] = {}  #: actor id -> what this driver knows
        self._lives: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.dropped: list[bytes] = []  # actors whose last handle here went (_Life)
        self._per_node: dict[str, int] = {}  # this driver's live actors on each node
        self._lock = threading.Lock()  # one creation or lookup of a name at a time

    # ------------------------------------------------------------------ helpers

    def _handle(self, actor: _Actor) -> ClusterActorHandle:
        life = self._lives.get(actor.id)
        if life is None:
            life = self._lives[actor.id] = _Life(actor.id, self.dropped)
        return ClusterActorHandle(self, actor, life)

    def _enqueue_locked(self, nid: str, key: ActorKey, args: tuple, kwargs: dict | None,
                        actor: _Actor | None, retries: int = 0,
                        payload: list | None = None, keep: bool = True) -> bytes:
        c = self.client
        tid = os.urandom(16)
        if nid not in c._eps:  # the node died since it was chosen (its tasks were failed)
            if keep:
                c.results[tid] = ("error", ActorDiedError(
                    f"node {nid[:12]} died before it got an operation on actor "
                    f"{actor.class_name if actor is not None else '(a name)'}"))
            return tid
        task = ActorTask(key, payload if payload is not None else
                         _pickled((args, kwargs or {})), retries, actor)
        task.node = nid
        c.inflight[tid] = task
        c._count[nid] = c._count.get(nid, 0) + 1
        c._outbox.setdefault(nid, []).append(tid)
        if not keep:  # nobody waits for its result
            c._dropped.add(tid)
        return tid

    def _ask(self, nid: str, key: ActorKey, args: tuple, what: str) -> Any:
        """Run an operation on node ``nid`` and wait for its value (or raise its error)."""
        with self.client._lock:
            self._check_up_locked()
            tid = self._enqueue_locked(nid, key, args, None, None)
        ref = self._ref(tid, self.client)
        try:
            return self.client.get([ref], CLUSTER_START_TIMEOUT_S)[0]
        except GetTimeoutError:
            raise RepartirError(f"{what}: node {nid[:12]} did not answer within "
                                f"{CLUSTER_START_TIMEOUT_S:g} s") from None

    def _check_up_locked(self) -> None:
        if self.client._failed is not None:
            raise NodeDiedError(self.client._failed)

    def _head(self) -> str:
        with self.client._lock:
            for nid, rec in self.client.nodes_seen.items():
                if rec.get("Head") and rec["Alive"] and nid in self.client._eps:
                    return nid
        raise RepartirError(f"the head of the cluster at {self.client.address} is not known "
                            f"to be alive: named actors need it")

    def _place_locked(self, demand: dict) -> str:
        c = self.client
        fits = c._fitting(demand, "hold an actor")
        return min(fits, key=lambda n: (self._per_node.get(n, 0),
                                        -(c.nodes_seen[n]["Resources"].get("CPU", 0.0)
                                          - c._used.get(n, 0.0))))

    def dead_why(self, actor: _Actor) -> str | None:
        """Why ``actor`` is dead, or ``None``: it is alive (as this driver knows)."""
        if actor.dead is None and actor.creation is not None:
            res = self.client.results.get(actor.creation._id)
            if res is not None and res[0] == "error":
                return f"its creation on node {actor.node[:12]} failed: {res[1]}"
        return actor.dead

    def lend(self, actor: _Actor) -> bytes | None:
        """A new hold id for a handle of ``actor`` leaving this process, its ``hold`` sent
        to the actor's node first (``handoff.py``); ``None`` for a detached or dead actor."""
        if actor.detached or actor.dead is not None:
            return None
        hold = os.urandom(12)
        with self.client._lock:
            self._enqueue_locked(actor.node, _HOLD, (actor.id, hold), None, None, keep=False)
        return hold

    def adopt(self, record: dict, hold: bytes | None) -> ClusterActorHandle:
        """The handle of an actor whose handle was passed to this process under ``hold``
        (released when this process drops its last handle, or shuts down)."""
        with self.client._lock:
            actor = self._known(record)
            handle = self._handle(actor)
            if hold is not None:
                actor.held.add(hold)
                if actor.dead is None:  # the hold is this process's now (leases.py)
                    self._enqueue_locked(actor.node, _HOLD, (actor.id, hold, True), None,
                                         None, keep=False)
        return handle

    def _release_locked(self, actor: _Actor) -> None:
        """Send the ``unhold`` of every hold this process adopted for ``actor``."""
        for hold in actor.held:
            self._enqueue_locked(actor.node, _UNHOLD, (actor.id, hold), None, None,
                                 keep=False)
        actor.held.clear()

    # ------------------------------------------------------------------ the API

    def create(self, ac: Any, args: tuple, kwargs: dict) -> ClusterActorHandle:
        """``ac.remote(*args, **kwargs)`` on the cluster (``ac``: an ``ActorClass``)."""
        opts = ac._options
        demand = {"CPU": float(opts.get("num_cpus", 0)), "GPU": float(opts.get("num_gpus", 0)),
                  "memory": float(opts.get("memory") or 0)}
        demand.update({k: float(v) for k, v in (opts.get("resources") or {}).items()})
        local = {k: opts[k] for k in _LOCAL_OPTIONS if k in opts}
        try:
            blob = _class_blob(ac._cls, local)
        except Exception as exc:
            raise RepartirError(f"actor class {ac._cls.__qualname__} cannot be sent to a "
                                f"node: {exc}") from None
        with self.client._lock:
            self._check_up_locked()
            nid = self._place_locked(demand)
        aid = os.urandom(16)
        actor = _Actor({"id": aid, "class_name": ac._cls.__qualname__, "methods": ac._methods,
                        "max_task_retries": opts.get("max_task_retries", 0), "node": nid,
                        "detached": opts.get("lifetime") == "detached",
                        "name": opts.get("name"),
                        "namespace": opts.get("namespace") or "default"}, owner=True)
        actor.demand, actor.spec = demand, {"id": aid, "class": blob,
                                            "detached": actor.detached}
        actor.restarts_left = opts.get("max_restarts", 0)
        waiting = self.client._actor_deps.prepare_create(actor, args, kwargs)  # actor_deps.py
        error = None
        if waiting is None:  # its arguments are ready
            args, kwargs, error = self.client._actor_deps.resolve(actor, args, kwargs)
            with naming_arguments(f"{actor.class_name}.__init__", args, kwargs):  # values.py
                payload = _pickled(((actor.spec, *args), kwargs))  # raises before sending
            actor.args = owned(payload)  # a restart sends the arguments as at .remote()
        with self._lock:
            if actor.name is not None:
                found = self._ask(self._head(), _NAME, (
                    "add", actor.namespace, actor.name, actor.record(),
                    bool(opts.get("get_if_exists"))), f"creating actor {actor.name!r}")
                if found is not None:  # get_if_exists: that one
                    return self._handle(self._known(found))
            with self.client._lock:
                self.actors[aid] = actor
                if error is not None:
                    actor.dead = f"an argument of its constructor failed: {error}"
                else:
                    self.client._actor_deps.queue_create(waiting)  # None: nothing waits
                    self._create_locked(actor)
        return self._handle(actor)

    def _create_locked(self, actor: _Actor) -> None:
        self._per_node[actor.node] = self._per_node.get(actor.node, 0) + 1
        if actor.id in self.client._actor_deps.creating:  # its arguments are not ready:
            return  # actor_deps.py sends the creation to actor.node once they are
        tid = self._enqueue_locked(actor.node, _CREATE, (), None, actor, payload=actor.args)
        actor.creation = self._ref(tid, self.client)

    def _known(self, record: dict) -> _Actor:
        """The actor of a record from the head: ours if we know it already."""
        with self.client._lock:
            actor = self.actors.get(record["id"])
            if actor is None:
                actor = self.actors[record["id"]] = _Actor(record, owner=False)
            elif not actor.owner:
                actor.node = record["node"]
                actor.dead = None
            return actor

    def call(self, handle: ClusterActorHandle, method: str, args: tuple,
             kwargs: dict, nret: int = 1) -> Any:
        actor = handle._actor
        if actor.dead is not None and not actor.owner and actor.name is not None:
            self._lookup_again(actor)
        how = method if nret == 1 else (method, nret)  # several returns: node_actors.call
        c = self.client
        given = (args, kwargs)
        waits = c._actor_deps.defer(handle, how, method, *given, nret)  # actor_deps.py
        if waits is not None:  # an argument is not ready, or an earlier call waits
            return waits[0]
        args, kwargs, error = c._actor_deps.resolve(actor, args, kwargs, once=True)
        payload, borrowed = None, []
        if error is None:
            with naming_arguments(f"{actor.class_name}.{method}", args, kwargs):
                payload, nested = pickled_capturing(((actor.id, how, *args), kwargs))
            if nested:  # refs inside the arguments: the actor gets refs (nested.py)
                waits = c._actor_deps.defer(handle, how, method, *given, nret, nested)
                if waits is not None:  # one of them is not ready: the call waits
                    return waits[0]
                _, payload, borrowed = resolve_nested(c, (actor.id, how, *args), kwargs,
                                                      nested)
        with c._lock:
            self._check_up_locked()
            why = self.dead_why(actor)
            if why is not None or error is not None:
                tid = os.urandom(16)
                c.results[tid] = ("error", error if error is not None else ActorDiedError(
                    f"actor {actor.class_name} ({actor.id.hex()[:12]}) is dead: {why}"))
            else:
                r = actor.max_task_retries
                tid = self._enqueue_locked(actor.node, _CALL, (), None, actor,
                                           retries=(1 << 30) if r == -1 else r,
                                           payload=payload)
                if tid in c.inflight:  # the values of the driver it takes (driver_values.py)
                    c.inflight[tid].dvals = c.dvals.frames_of(args, kwargs)
                if borrowed:
                    c.borrows.borrow(tid, borrowed)
            if nret != 1:  # a list of refs, None, a generator (returns.py)
                return c.returns.refs_locked(tid, nret, f"{actor.class_name}.{method}")
        return self._ref(tid, c)

    def _lookup_again(self, actor: _Actor) -> None:
        try:
            rec = self._ask(self._head(), _NAME, ("get", actor.namespace, actor.name),
                            f"looking actor {actor.name!r} up")
        except RepartirError:
            return
        if rec is not None and rec["id"] == actor.id:
            self._known(rec)

    def get_actor(self, name: str, namespace: str | None) -> ClusterActorHandle:
        namespace = namespace or "default"
        rec = self._ask(self._head(), _NAME, ("get", namespace, name),
                        f"looking actor {name!r} up")
        if rec is None:
            raise ValueError(f"no live actor named {name!r} in namespace {namespace!r} on the "
                             f"cluster at {self.client.address}: create it with "
                             f"options(name={name!r}) first (or check the namespace)")
        return self._handle(self._known(rec))

    def kill(self, handle: ActorHandle, no_restart: bool) -> None:
        if not isinstance(handle, ClusterActorHandle) or handle._actors is not self:
            raise RepartirError(f"{handle!r} is not an actor of the cluster at "
                                f"{self.client.address} this driver is connected to")
        actor = handle._actor
        if actor.dead is not None:
            return
        try:
            self._ask(actor.node, _KILL, (actor.id, no_restart), f"killing {handle!r}")
        except ActorDiedError:  # its node died meanwhile: so did the actor
            pass
        if no_restart:
            with self.client._lock:
                self._gone_locked(actor, "it was killed (repartir.kill)", tell_node=False)
            if actor.name is not None:
                try:
                    self._ask(self._head(), _NAME, ("del", actor.namespace, actor.name,
                                                    actor.id), f"freeing name {actor.name!r}")
                except RepartirError:
                    pass  # the head is gone: so is the name

    # ------------------------------------------------------------------ the loop's hooks

    def _gone_locked(self, actor: _Actor, why: str, tell_node: bool,
                     force: bool = False) -> None:
        """``actor`` is dead or ended: end it on its node (``tell_node``: the owner's hold
        ends; ``force``: the actor ends whoever holds it), free its name."""
        if actor.dead is not None:
            return
        actor.dead = why
        if actor.owner:
            self._per_node[actor.node] = self._per_node.get(actor.node, 1) - 1
            if tell_node and actor.node in self.client._eps:
                self._enqueue_locked(actor.node, _END, (actor.id, force), None, actor,
                                     keep=False)
            if tell_node and actor.name is not None:
                head = next((n for n, r in self.client.nodes_seen.items()
                             if r.get("Head") and r["Alive"] and n in self.client._eps), None)
                if head is not None:
                    self._enqueue_locked(head, _NAME, ("del", actor.namespace, actor.name,
                                                       actor.id), None, None, keep=False)

    def flush_locked(self) -> None:
        """End the actors whose last handle in this driver is gone (in the loop)."""
        while self.dropped:
            aid = self.dropped.pop()
            if aid in self._lives:  # a new handle appeared since
                continue
            actor = self.actors.pop(aid, None)
            if actor is not None and actor.held and actor.node in self.client._eps:
                self._release_locked(actor)
            if actor is not None and actor.owner and not actor.detached:
                self._gone_locked(actor, "it ended: its last handle was dropped",
                                  tell_node=True)

    def closing_locked(self) -> None:
        """The driver shuts down: end its actors that are not detached."""
        for actor in list(self.actors.values()):
            if actor.held and actor.node in self.client._eps:
                self._release_locked(actor)
            if actor.owner and not actor.detached:
                self._gone_locked(actor, "its driver shut down", tell_node=True, force=True)

    def node_died_locked(self, nid: str, where: str, why: str) -> None:
        """Node ``nid`` is dead: restart its actors elsewhere while ``max_restarts`` allow,
        resend or fail the calls that were in flight there."""
        c = self.client
        for actor in list(self.actors.values()):
            if actor.node != nid or actor.dead is not None:
                continue
            cause = f"its node {where} {why}"
            if not actor.owner:  # its owner restarts it; calls look it up again
                actor.dead = cause
                continue
            self._per_node[nid] = self._per_node.get(nid, 1) - 1
            new = None
            if c._failed is None and actor.restarts_left != 0:
                try:
                    new = self._place_locked(actor.demand)
                except InfeasibleTaskError:
                    cause += ", and no other live node fits it"
            elif c._failed is None:
                cause += ", and its max_restarts are used up"
            if new is None:
                actor.dead = cause
                continue
            if actor.restarts_left > 0:
                actor.restarts_left -= 1
            actor.node = new
            self._create_locked(actor)
            if actor.name is not None:
                head = next((n for n, r in c.nodes_seen.items()
                             if r.get("Head") and r["Alive"] and n in c._eps), None)
                if head is not None:
                    self._enqueue_locked(head, _NAME, ("move", actor.namespace, actor.name,
                                                       actor.id, new), None, None, keep=False)
        for tid, task in list(c.inflight.items()):
            if type(task) is not ActorTask or task.node != nid:
                continue
            del c.inflight[tid]
            if tid in c._dropped:
                c._dropped.discard(tid)
                continue
            actor = task.actor
            if task.key == _CALL:
                if actor is not None and actor.dead is None and actor.owner \
                        and task.retries > 0:
                    task.retries -= 1
                    c.inflight[tid] = task
                    task.node = actor.node
                    c._count[actor.node] = c._count.get(actor.node, 0) + 1
                    c._outbox.setdefault(actor.node, []).append(tid)
                    continue
                name = actor.class_name if actor is not None else "?"
                c.results[tid] = ("error", ActorDiedError(
                    f"actor {name} died with its node {where}, which {why}, while it ran a "
                    f"call (its max_task_retries are used up, or it was not restarted)"))
            else:
                c.results[tid] = ("error", ActorDiedError(
                    f"node {where} {why} before it answered an actor operation"))
