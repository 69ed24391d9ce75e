"""The actors of a node daemon, and the head's registry of named actors (docs/cluster.md,
"Actors on a cluster").

A driver connected to a cluster keeps its actors on the nodes.  Everything it asks of a
node about them travels as a task of the ordinary ``tasks`` message whose function key is
an :class:`ActorKey`: the node daemon does not unpickle a function for such a key but runs
one of the operations below, in the order the tasks arrive (so a creation, the calls made
after it and an end arrive, and are submitted to the local node, in the driver's order).
Their completions come back like those of tasks: small values inline, larger ones kept on
the node until pulled.

    driver ── tasks [(tid, ActorKey("create"), (spec, *args)), ──▶ NodeDaemon ──▶ local node
                     (tid, ActorKey("call"), (actor id, method, *args)), ...]     (an actor
           ◀─ done [(tid, "value" | "stored" | "error", ...)] ──                   process)

=========== ====================================== ============================================
op          arguments                              does
=========== ====================================== ============================================
``create``  spec (``id``, ``class``: pickled       ``ActorClass(cls, options).remote(...)`` on
            ``(cls, options)``), constructor args  the local node; the daemon holds the handle
``call``    actor id, method name, the call's args ``handle.method.remote(...)``; the result is
                                                   the call's
``end``     actor id, ``force``                    the owner's hold ends (its last handle is
                                                   gone; ``force``: it shut down, the actor ends
                                                   whoever else holds it); once no hold is left
                                                   the daemon drops its handle: the local node
                                                   ends the actor after the calls made before
``hold``    actor id, hold id, ``claim``           a handle was passed to another process
                                                   (``handoff.py``): it keeps the actor alive;
                                                   sent by the lender, then ``claim``-ed by
                                                   the process that received it
``unhold``  actor id, hold id                      that process dropped its last handle
``kill``    actor id, ``no_restart``               ``repartir.kill`` of the local actor
``name``    ``"add"``/``"get"``/``"del"``/         (the head only) the registry of named
            ``"move"``, namespace, name, ...       actors: ``(namespace, name) -> record``
=========== ====================================== ============================================

Each hold (the owner's, and those of handles passed on) belongs to the process that sent
it: when the head no longer lists a driver (``leases.py``: a driver or a node's worker
killed without closing its connection), :meth:`NodeActors.driver_gone` drops its holds,
ends the actors it owned (not detached) and, on the head, frees the names it registered.

The local actor is an ordinary, non-detached actor of the node: its process, restarts after
a crash of that process (``max_restarts``), threads and event loop are the local node's.  Its
name, namespace and lifetime are the cluster's business, kept by the driver and the head.
"""

from __future__ import annotations

import collections
import concurrent.futures
import pickle
import time
from typing import Any, Callable, NamedTuple

from ..errors import ActorDiedError, RepartirError
from ..runtime.actor import ActorClass, kill_actor

__all__ = ["ActorKey", "NodeActors", "Ready"]

#: How many ended actors a node remembers, to say why a late call finds none; also how many
#: hold ids released before their ``hold`` arrived it remembers (``handoff.py``).
_GONE_KEPT = 1024
#: The hold of the actor's owner (the process that created it).
OWNER_HOLD = b"owner"


class ActorKey(NamedTuple):
    """The function key of a task that is an actor operation (see the module's table)."""

    op: str


class Ready:
    """What an operation that is done at once returns in place of a local ``ObjectRef``:
    the daemon reads its ``future()`` like a task's."""

    __slots__ = ("_future",)

    def __init__(self, value: Any) -> None:
        self._future: concurrent.futures.Future = concurrent.futures.Future()
        self._future.set_result(value)

    def future(self) -> concurrent.futures.Future:
        return self._future


class _Op:
    """An operation in the place of a ``RemoteFunction``: ``remote(*args, **kwargs)``."""

    __slots__ = ("remote",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.remote = fn


class NodeActors:
    """The actors a node daemon holds for drivers, and (on the head) the named actors of
    the cluster.

    Args:
        node_id: this node's id (hex), for error messages.
        registry: the head's registry of nodes (node id -> record with ``LastHeard``), or
            ``None`` on a node that is not the head.
        timeout: seconds without a heartbeat after which the head takes a node for dead
            (``REPARTIR_NODE_TIMEOUT``): a name whose actor is on such a node is free.
    """

    def __init__(self, node_id: str, registry: dict | None, timeout: float) -> None:
        self.node_id = node_id
        self.is_head = registry is not None
        self._registry = registry
        self._timeout = timeout
        self.handles: dict[bytes, Any] = {}  #: cluster actor id -> the local ActorHandle
        self._gone: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        #: cluster actor id -> {hold id: the driver (routing id) holding it}: the owner's
        #: hold, and one per handle passed to another process; detached actors: none
        self.holds: dict[bytes, dict[bytes, bytes | None]] = {}
        self._released: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.names: dict[tuple[str, str], dict] = {}  #: (namespace, name) -> record (head)
        self._name_peers: dict[tuple[str, str], bytes | None] = {}  # who registered each
        self._owners: dict[bytes, bytes] = {}  # actor id -> its owner, until created
        self.peer: bytes | None = None  # the driver whose operation runs now
        self._ops = {"create": _Op(self.create), "call": _Op(self.call),
                     "end": _Op(self.end), "kill": _Op(self.kill), "name": _Op(self.name),
                     "hold": _Op(self.hold), "unhold": _Op(self.unhold)}

    def target(self, key: ActorKey) -> _Op:
        """The operation of ``key``.

        Raises:
            RepartirError: an operation this version does not know.
        """
        op = self._ops.get(key.op)
        if op is None:
            raise RepartirError(f"unknown actor operation {key.op!r}: the driver runs "
                                f"another version of repartir than node {self.node_id[:12]}")
        return op

    def _alive(self, node_id: str) -> bool:
        rec = (self._registry or {}).get(node_id)
        return (rec is not None and rec["Alive"]
                and time.monotonic() - rec["LastHeard"] <= self._timeout)

    def received(self, peer: bytes, op: str, args: Any) -> None:
        """The daemon got operation ``op`` from driver ``peer`` (before it runs it)."""
        self.peer = peer
        if op == "create" and args and not args[0].get("detached"):
            self._owners[args[0]["id"]] = peer

    def driver_gone(self, peer: bytes) -> int:
        """Driver ``peer`` is gone without closing (``leases.py``): its holds go, the
        actors it owned end (not detached ones), the names it registered are free (head).
        Returns how many actors ended."""
        ended = 0
        for aid, holds in list(self.holds.items()):
            if holds.get(OWNER_HOLD, b"") == peer:
                holds.clear()  # its owner is gone: as an owner's exit, whoever holds it
            for hid in [h for h, p in holds.items() if p == peer]:
                del holds[hid]
            if not holds:
                self._forget(aid, "its owner, or the last process that held a handle, "
                                  "is gone (killed)")
                ended += 1
        for key, who in list(self._name_peers.items()):
            rec = self.names.get(key)
            if who == peer and rec is not None and not rec.get("detached"):
                del self.names[key]
                del self._name_peers[key]
        return ended

    def ids(self) -> list[bytes]:
        """The cluster ids of the actors this node holds."""
        return list(self.handles)

    def _forget(self, actor_id: bytes, why: str) -> Any:
        self._gone[actor_id] = why
        while len(self._gone) > _GONE_KEPT:
            self._gone.popitem(last=False)
        self.holds.pop(actor_id, None)
        return self.handles.pop(actor_id, None)

    # ------------------------------------------------------------------ operations

    def create(self, spec: dict, *args: Any, **kwargs: Any) -> Ready:
        aid = spec["id"]
        try:
            cls, options = pickle.loads(spec["class"])
            self.handles[aid] = ActorClass(cls, options).remote(*args, **kwargs)
        except BaseException as exc:
            self._forget(aid, f"its creation on this node failed: {type(exc).__name__}: {exc}")
            raise
        self._gone.pop(aid, None)
        if not spec.get("detached"):
            self.holds.setdefault(aid, {})[OWNER_HOLD] = self._owners.get(aid)
        self._owners.pop(aid, None)
        return Ready(None)

    def call(self, actor_id: bytes, method: Any, /, *args: Any, **kwargs: Any) -> Any:
        h = self.handles.get(actor_id)
        if h is None:
            why = self._gone.get(actor_id, "it was never created here")
            raise ActorDiedError(f"actor {actor_id.hex()[:12]} is not on node "
                                 f"{self.node_id[:12]}: {why}")
        if type(method) is tuple:  # (name, num_returns) other than 1: node_returns.py
            name, nret = method  # (0: one here, the driver drops it; -1: streaming)
            return getattr(h, name).options(
                num_returns="streaming" if nret < 0 else max(nret, 1)).remote(*args, **kwargs)
        return getattr(h, method).remote(*args, **kwargs)

    def end(self, actor_id: bytes, force: bool = False) -> Ready:
        """The owner's hold ends: the actor ends once no other process holds a handle
        passed to it, or at once with ``force`` (its owner shut down, as in Ray)."""
        holds = self.holds.get(actor_id)
        if holds is not None and not force:
            holds.pop(OWNER_HOLD, None)
            if holds:
                return Ready(None)
        self._forget(actor_id, "it ended (its owner dropped its last handle, or exited, "
                               "and no other process holds a handle)")
        return Ready(None)

    def hold(self, actor_id: bytes, hold_id: bytes, claim: bool = False) -> Ready:
        """A handle of ``actor_id`` was passed to another process under ``hold_id``: sent
        by the lender, then with ``claim`` by the process that received it (the hold is
        then that process's: it goes if that process is killed)."""
        holds = self.holds.get(actor_id)
        if holds is None:
            return Ready(None)
        if claim:
            holds[hold_id] = self.peer
        elif self._released.pop(hold_id, 0) is None:
            pass  # its process let go before this arrived
        else:
            holds.setdefault(hold_id, self.peer)
        return Ready(None)

    def unhold(self, actor_id: bytes, hold_id: bytes) -> Ready:
        """The process holding ``hold_id`` dropped its last handle of ``actor_id``; the
        actor ends when that was the last hold (non-detached actors only)."""
        holds = self.holds.get(actor_id)
        if holds is None:  # detached, or ended
            return Ready(None)
        self._released[hold_id] = None  # the lender's hold may still be on its way
        while len(self._released) > _GONE_KEPT:
            self._released.popitem(last=False)
        if hold_id in holds:
            del holds[hold_id]
            if not holds:
                self._forget(actor_id, "it ended: no process holds a handle any more")
        return Ready(None)

    def kill(self, actor_id: bytes, no_restart: bool) -> Ready:
        h = self.handles.get(actor_id)
        if h is not None:
            kill_actor(h, no_restart)
            if no_restart:
                self._forget(actor_id, "it was killed (repartir.kill)")
        return Ready(None)

    # ------------------------------------------------------------------ named actors

    def name(self, what: str, namespace: str, name: str, *rest: Any) -> Ready:
        """The head's registry of named actors: ``add`` (record, get_if_exists: returns
        ``None`` once added, or the live record of that name), ``get`` (the live record or
        ``None``), ``del`` (actor id: removes the name if it is still that actor's), ``move``
        (actor id, node id: the actor was restarted on that node).

        Raises:
            RepartirError: this daemon is not the head.
            ValueError: ``add`` of a name a live actor has, without ``get_if_exists``.
        """
        if not self.is_head:
            raise RepartirError(f"node {self.node_id[:12]} is not the head: it keeps no "
                                f"names of actors")
        key = (namespace, name)
        rec = self.names.get(key)
        live = rec is not None and self._alive(rec["node"])
        if what == "add":
            record, get_if_exists = rest
            if live:
                if get_if_exists:
                    return Ready(rec)
                raise ValueError(f"an actor named {name!r} already exists in namespace "
                                 f"{namespace!r}: pick another name, kill it first, or pass "
                                 f"get_if_exists=True")
            self.names[key] = dict(record, time=time.time())
            self._name_peers[key] = self.peer
            return Ready(None)
        if what == "get":
            return Ready(rec if live else None)
        if what == "del":
            if rec is not None and rec["id"] == rest[0]:
                del self.names[key]
                self._name_peers.pop(key, None)
            return Ready(None)
        if what == "move":
            if rec is not None and rec["id"] == rest[0]:
                rec["node"] = rest[1]
            return Ready(None)
        raise RepartirError(f"unknown name operation {what!r}")
