"""A driver connected to a cluster: ``repartir.init(address="auto" | "HOST:PORT")``
(docs/cluster.md, "Drivers").

Such a driver starts no local node.  :class:`ClusterClient` asks the head for the nodes,
connects a DEALER endpoint to each, places every task on a node whose total resources fit
(custom resources included; the node that holds the most bytes of the task's arguments
first, else the one with the most CPUs free of this driver's tasks), sends tasks to each node
in batches (an argument kept on another node as a ``RemoteArg``: that node pulls it
directly, and the object stays where it is kept until the tasks borrowing it end) and
returns :class:`ClusterRef` s.  Small results come back with their completion; larger ones
stay on their node until ``get`` pulls them, in chunks (``CLUSTER_CHUNK_BYTES``, several in
flight), and are released there when the ref is dropped.

One background thread owns the sockets: it sends the batches, receives completions and
chunks, and asks the head for the registry every ``CLUSTER_HEARTBEAT_S``.  Tasks of a node
the head declares dead are resubmitted elsewhere while their ``max_retries`` allow, else
their refs raise :class:`NodeDiedError`; objects kept on it are rebuilt by running their
tasks again (``lineage.py``), else raise :class:`ObjectLostError`.
If the head itself stops answering for ``REPARTIR_NODE_TIMEOUT`` seconds, every task in
flight fails the same way.  ``get`` never waits past its ``timeout``.
"""

from __future__ import annotations

import atexit
import copy
import os
import threading
import time
import weakref
from typing import Any, Sequence

import zmq

from ..config import (CLUSTER_START_TIMEOUT_S, cluster_node_timeout)
from ..errors import (GetTimeoutError, InfeasibleTaskError, NodeDiedError, RepartirError,
                      TokenError, WireTimeoutError)
from ..runtime import context
from ..runtime.objectref import ObjectRef
from ..runtime.signature import arg_check
from ..runtime.streaming import DYNAMIC, parse_num_returns
from ..serialization import dumps_code
from .actor_deps import ActorDeps
from .actors import ClusterActors
from .borrows import Borrows, RemoteArg, prefer_by_bytes
from .client_loop import ClientLoop
from .client_nodes import ClientNodes
from .deps import Deps
from .driver_values import DriverValues
from .lineage import Lineage
from .reach import recv_or_probe
from .nested import pickled_capturing, reduce_ref, resolve_nested
from .returns import Returns
from .unplaced import enqueue_or_wait
from .liveness import registry_nodes, say_goodbye, summed_resources
from .membership import writable
from .encryption import ClusterKeys
from .sockets import Endpoint
from .stealing import fits as fits_in
from .state import StoredArg, resolve_address, tcp
from .values import fresh, naming_arguments, owned, private_copy
from .wake import Wake

__all__ = ["ClusterClient", "ClusterRef", "connect", "active"]

class ClusterRef(ObjectRef):
    """An ``ObjectRef`` of a cluster driver: the result of a task run on some node, or a
    value ``put`` in the driver.  Passed as a task's argument (top level, or as a keyword
    argument), its value goes along, or stays where it is when the task runs on the node
    that holds it.  Nested in an argument (a list of refs, say), the task gets a ref that
    it can ``get`` (nested.py)."""

    __slots__ = ("_cluster",)

    def __init__(self, object_id: bytes, cluster: "ClusterClient") -> None:
        super().__init__(object_id, -1, None, False)
        self._cluster = cluster

    def __del__(self) -> None:
        try:
            self._cluster.dead.append(self._id)
        except AttributeError:
            pass

    def __reduce__(self):
        reduced = reduce_ref(self)  # inside a task's arguments (nested.py)
        if reduced is not None:
            return reduced
        raise RepartirError(
            "an ObjectRef of a cluster driver can be pickled only as a part of the "
            "arguments of a task or an actor call: pass it to one, or get() it first")

    def future(self):
        """A ``concurrent.futures.Future`` for the value (or the error); ``await ref``
        waits on it (returns.py)."""
        return self._cluster.returns.future(self)


class _Task:
    """A task in flight: its function's key and pickled blob, its arguments pickled at
    ``.remote()`` (frame 0 the pickle, then large buffers out of band), what it asks for."""

    __slots__ = ("key", "blob", "payload", "demand", "node", "retries", "dvals")

    def __init__(self, key, blob, payload, demand, retries) -> None:
        self.key, self.blob, self.payload = key, blob, owned(payload)  # values.py
        self.demand, self.retries = demand, retries
        self.node = ""
        self.dvals: dict | None = None  # values of the driver it takes (driver_values.py)


def _fresh(exc: BaseException) -> BaseException:
    """A copy of a stored error to raise: raising the stored one would tie the traceback,
    and with it the frames holding the caller's refs, to the driver's table for ever."""
    try:
        new = copy.copy(exc)
    except Exception:
        return exc
    new.__cause__ = exc.__cause__
    return new


class ClusterClient(ClientNodes, ClientLoop):
    """The connection of a driver to a cluster (see the module's docstring).  Made by
    :func:`connect`; use the ordinary API (``remote``, ``get``, ``wait``, ``put``,
    ``nodes``, ``cluster_resources``, ``available_resources``), not this class.

    Raises:
        TokenError: the head refused our token.
        RepartirError: nothing listens at ``address`` (reach.py), or the head did not
            answer within ``CLUSTER_START_TIMEOUT_S``.
        ValueError: ``address`` is not ``HOST:PORT`` (another scheme than ``tcp://``).
    """

    def __init__(self, address: str, token: str | None = None) -> None:
        self.address = address
        self.timeout = cluster_node_timeout()
        self._token = token
        self._lock = threading.RLock()  # re-entrant: unpickling a result under it may
        # adopt an actor handle (handoff.py), which takes it again
        self._cv = threading.Condition(self._lock)
        self.results: dict[bytes, tuple] = {}
        self.inflight: dict[bytes, _Task] = {}
        self.dead: list[bytes] = []  # dropped refs, appended by ClusterRef.__del__
        self._dropped: set[bytes] = set()
        self.nodes_seen: dict[str, dict] = {}
        self._eps: dict[str, Endpoint] = {}
        self._ep_node: dict[Any, str] = {}
        self._outbox: dict[str, list] = {}
        self._fn_sent: dict[str, set] = {}
        self._used: dict[str, float] = {}
        self._count: dict[str, int] = {}
        self._fetch_start: list[bytes] = []
        self._fetches: dict[bytes, dict] = {}
        self._keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.borrows = Borrows()  # results kept on nodes that tasks elsewhere borrow
        self.dvals = DriverValues()  # values of this driver sent once per node
        self._due: list[tuple[str, bytes]] = []  # (node id, object id) releases now due
        self.pulled_bytes = 0  # bytes this driver pulled from nodes (get)
        self._closed = False
        self._failed: str | None = None
        self._registry_seq = 0
        self._registry_asked, self._registry_sent, self._registry_answered = False, 0, 0
        self._lineage = Lineage(self)  # to rebuild results lost with their node
        self._deps = Deps(self, ClusterRef, _Task)  # tasks waiting for their arguments
        self._actor_deps = ActorDeps(self, ClusterRef)  # actor calls waiting for theirs
        self._unlisted: dict[str, float] = {}  # node id -> since when the head omits it
        self._senders: dict[str, bytes] = {}  # node id -> the sender id of its daemon
        self._superseded: set[str] = set()  # nodes whose address another node took
        self._curve = ClusterKeys.for_driver(address)
        self._driver_id = os.urandom(16)  # the routing id of every connection to a node
        self._head = Endpoint.connect(tcp(address), token=token, **self._curve.to_head())
        try:
            self._head.send(("nodes", self._driver_id))  # also its lease (leases.py)
            msg = recv_or_probe(self._head, address, CLUSTER_START_TIMEOUT_S)  # reach.py
        except WireTimeoutError:
            self._head.close()
            raise RepartirError(
                f"the head at {address} did not answer within {CLUSTER_START_TIMEOUT_S:g} s: "
                f"is `repartir start --head` running there, and reachable from here?") from None
        except TokenError as exc:
            self._head.close()
            raise type(exc)(f"the head at {address} refused this driver: {exc}") from None
        self._last_head = time.monotonic()
        self.actors = ClusterActors(self, ClusterRef)  # actors on the nodes (actors.py)
        self.returns = Returns(self, ClusterRef)  # num_returns != 1, streams, cancel, futures
        self._poller = zmq.Poller()
        self._poller.register(self._head.socket, zmq.POLLIN)
        self._wake = Wake()  # a task queued goes at once, not at the loop's next poll
        self._poller.register(self._wake.fd, zmq.POLLIN)
        self._update_nodes(msg.value[1])
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="repartir-cluster")
        self._thread.start()

    # ------------------------------------------------------------------ placing

    def _fitting(self, demand: dict, what: str = "run a task") -> list[str]:
        """The live, connected nodes whose total resources fit ``demand``.

        Raises:
            InfeasibleTaskError: none; the message names the live nodes' resources.
        """
        fits = [nid for nid, rec in self.nodes_seen.items()
                if rec["Alive"] and nid in self._eps and fits_in(demand, rec["Resources"])]
        if not fits:
            alive = {n[:12]: r["Resources"] for n, r in self.nodes_seen.items() if r["Alive"]}
            raise InfeasibleTaskError(
                f"no node of the cluster at {self.address} can {what} that asks for "
                f"{demand}; the live nodes have {alive}. Start a node with those resources "
                f"(repartir start --address {self.address} --resources '{{...}}'), or ask "
                f"for less")
        return fits

    def _place(self, demand: dict, prefer: str | None) -> str:
        fits = self._fitting(demand)
        if prefer in fits:
            return prefer  # type: ignore[return-value]
        return max(fits, key=lambda n: (self.nodes_seen[n]["Resources"].get("CPU", 0.0)
                                        - self._used[n], -self._count[n]))

    def _enqueue(self, tid: bytes, task: _Task, prefer: str | None) -> None:
        """Holds the lock."""
        nid = self._place(task.demand, prefer)
        task.node = nid
        self.inflight[tid] = task
        self._used[nid] += task.demand.get("CPU", 0.0)
        self._count[nid] += 1
        self._outbox.setdefault(nid, []).append(tid)
        self._wake.signal()

    def submit(self, rf: Any, args: tuple, kwargs: dict) -> ClusterRef:
        """``rf.remote(*args, **kwargs)`` on the cluster (called by ``RemoteFunction``)."""
        cached = self._keys.get(rf)
        if cached is None:
            o = rf._options
            nret = parse_num_returns(o.get("num_returns"), rf._generator)
            if nret == DYNAMIC:
                raise RepartirError(
                    f"{rf._name}: num_returns='dynamic' is not available on a cluster in this "
                    f"version: use num_returns='streaming' (the default of a generator)")
            demand = {"CPU": float(o.get("num_cpus", 1)), "GPU": float(o.get("num_gpus", 0)),
                      "memory": float(o.get("memory") or 0)}
            demand.update({k: float(v) for k, v in (o.get("resources") or {}).items()})
            mr = o.get("max_retries", 3)
            cached = ((rf._key, repr(sorted(o.items(), key=lambda kv: kv[0]))), demand,
                      (1 << 30) if mr == -1 else mr, arg_check(rf._function, rf._name),
                      dumps_code((rf._function, o if nret else dict(o, num_returns=1)),
                                 f"remote function {rf._name}"), nret)
            self._keys[rf] = cached
        key, demand, retries, check, blob, nret = cached
        if kwargs or not check.min_pos <= len(args) <= check.max_pos:
            check.check(args, kwargs)
        prefer, borrowed, given, dvals = None, None, (args, kwargs), None
        if any(isinstance(a, ObjectRef) for a in args) or \
                any(isinstance(v, ObjectRef) for v in kwargs.values()):
            with naming_arguments(rf._name, args, kwargs):  # (values.py)
                waits = self._deps.defer(key, blob, demand, retries, args, kwargs, nret, rf._name)
            if waits is not None:  # an argument is not ready: the task waits (deps.py)
                return waits[0]
            args, kwargs, prefer, error = self._resolve_args(args, kwargs, demand)
            # kept on the task's node (StoredArg) too: the node keeps it until the task
            # ends, though the driver's ref may go first (the task may wait in its queue)
            borrowed = [(a.object_id, a.node if type(a) is RemoteArg else prefer)
                        for a in (*args, *kwargs.values()) if type(a) in (RemoteArg, StoredArg)]
            dvals = self.dvals.frames_of(args, kwargs)  # sent once per node
            if error is not None:
                tid = os.urandom(16)
                with self._lock:
                    self.results[tid] = ("error", error)
                    if nret != 1:
                        return self.returns.refs_locked(tid, nret, rf._name)
                return ClusterRef(tid, self)
        tid = os.urandom(16)
        with naming_arguments(rf._name, args, kwargs):  # as locally (values.py)
            payload, nested = pickled_capturing((args, kwargs))
        if nested:  # refs inside the arguments: the task's node gets them (nested.py)
            waits = self._deps.defer(key, blob, demand, retries, *given, nret, rf._name,
                                     nested)
            if waits is not None:  # one is not ready: the task waits (deps.py)
                return waits[0]
            kwargs, payload, more = resolve_nested(self, args, kwargs, nested)
            borrowed = (borrowed or []) + more
        task = _Task(key, blob, payload, demand, retries)
        task.dvals = dvals
        with self._lock:
            if self._failed is not None:
                raise NodeDiedError(self._failed)
            if prefer is not None or borrowed:
                self._lineage.submitted(tid, args, kwargs)
                if prefer is not None and prefer not in self._eps:  # died since: its
                    # arguments are being rebuilt
                    self._lineage.wait(tid, task)
                    return ClusterRef(tid, self) if nret == 1 else \
                        self.returns.refs_locked(tid, nret, rf._name)
            enqueue_or_wait(self, tid, task, prefer, rf._name)  # (unplaced.py)
            if borrowed:
                self.borrows.borrow(tid, borrowed)
            if nret != 1:  # several returns, none, a generator (returns.py)
                return self.returns.refs_locked(tid, nret, rf._name)
        return ClusterRef(tid, self)

    def _resolve_args(self, args: tuple, kwargs: dict, demand: dict):
        """Values for the refs among the arguments (waiting for pending ones).  The task
        prefers the node that keeps the most bytes of its arguments, if it fits there; a ref
        kept on the node the task goes to becomes a :class:`StoredArg`, one kept on another
        node a :class:`RemoteArg` (that node pulls it from there), a value the driver
        holds travels with the task, or alone to each node once, before it
        (:class:`~.driver_values.DriverArg`, driver_values.py)."""
        refs = [a for a in (*args, *kwargs.values()) if isinstance(a, ObjectRef)]
        for r in refs:
            if not isinstance(r, ClusterRef) or r._cluster is not self:
                raise RepartirError("this ObjectRef does not belong to the cluster this "
                                    "driver is connected to")
        self._wait_for([r._id for r in refs], None, len(refs))
        holdings: dict[str, int] = {}
        with self._lock:
            for r in refs:
                res = self.results[r._id]
                if res[0] == "error":
                    return args, kwargs, None, res[1]
                kept = self._kept_on(res)
                if kept is not None:
                    holdings[kept[0]] = holdings.get(kept[0], 0) + kept[1]
            prefer = prefer_by_bytes(holdings, lambda n: self._fits_on(demand, n))

        def sub(a: Any) -> Any:
            if not isinstance(a, ObjectRef):
                return a
            with self._lock:
                res = self.results[a._id]
                kept = self._kept_on(res)
                if kept is not None and kept[0] == prefer:
                    return StoredArg(a._id)
                rec = self.nodes_seen.get(kept[0]) if kept is not None else None
                if rec is not None and rec["Alive"]:
                    return RemoteArg(a._id, kept[0], rec["NodeManagerAddress"], kept[1],
                                     rec.get("CurveKey"))
            return self.dvals.arg(a._id, res) or self._get_one(a._id, None)

        return tuple(sub(a) for a in args), {k: sub(v) for k, v in kwargs.items()}, prefer, None

    @staticmethod
    def _kept_on(res: tuple) -> tuple[str, int] | None:
        """``(node id, bytes)`` of a result kept on a node (pulled here or not), else
        ``None``."""
        if res[0] == "stored":
            return res[1], res[2]
        if res[0] == "fetched":
            return res[2], res[3] if len(res) > 3 else 0
        return None

    def _fits_on(self, demand: dict, nid: str) -> str | None:
        try:
            return self._place(demand, nid)
        except InfeasibleTaskError:
            return None

    # ------------------------------------------------------------------ values

    def put(self, value: Any) -> ClusterRef:
        """Keep ``value`` in the driver; a task that takes its ref gets a copy."""
        if isinstance(value, ObjectRef):
            raise TypeError("put() takes a value, not an ObjectRef")
        value = private_copy(value)  # pickled now, as locally (values.py)
        tid = os.urandom(16)
        with self._lock:
            self.results[tid] = ("value", value)
        return ClusterRef(tid, self)

    def _check_refs(self, refs: Sequence[ObjectRef]) -> list[bytes]:
        for r in refs:
            if not isinstance(r, ClusterRef) or r._cluster is not self:
                raise RepartirError(f"{r!r} does not belong to the cluster at {self.address} "
                                    f"this driver is connected to (made before init?)")
        return [r._id for r in refs]

    def _wait_for(self, tids: list[bytes], deadline: float | None, num: int) -> int:
        with self._cv:
            while True:
                ready = sum(1 for t in tids if t in self.results)
                if ready >= num:
                    return ready
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return ready
                self._cv.wait(0.05 if left is None else min(left, 0.05))

    def _get_one(self, tid: bytes, deadline: float | None) -> Any:
        with self._cv:
            while True:
                res = self.results.get(tid)
                if res is None or res[0] == "stored":
                    if res is not None and tid not in self._fetches \
                            and tid not in self._fetch_start:
                        self._fetch_start.append(tid)
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise GetTimeoutError(
                            f"get() timed out: object {tid.hex()} was not ready (or not yet "
                            f"pulled from its node) in time")
                    self._cv.wait(0.05 if left is None else min(left, 0.05))
                    continue
                if res[0] == "error":
                    raise _fresh(res[1])
                return fresh(res[1])  # a copy per get, as locally (values.py)

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list:
        tids = self._check_refs(refs)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._wait_for(tids, deadline, len(tids)) < len(tids):
            n = sum(1 for t in tids if t not in self.results)
            raise GetTimeoutError(f"get() timed out after {timeout} s: {n} of {len(tids)} "
                                  f"object(s) not ready")
        with self._lock:  # start every pull at once
            for t in tids:
                if self.results[t][0] == "stored" and t not in self._fetches \
                        and t not in self._fetch_start:
                    self._fetch_start.append(t)
        return [self._get_one(t, deadline) for t in tids]

    def wait(self, refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> list[bool]:
        tids = self._check_refs(refs)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait_for(tids, deadline, num_returns)
        with self._lock:
            return [t in self.results for t in tids]

    # ------------------------------------------------------------------ the registry, public

    def nodes(self) -> list[dict]:
        """The head's registry, asked for now, in Ray's shape (liveness.py).  Raises
        ``NodeDiedError`` once the head has not answered for ``REPARTIR_NODE_TIMEOUT``."""
        return registry_nodes(self)

    def resources(self, available: bool) -> dict:
        """The live nodes' resources (``available``: free ones), summed (liveness.py)."""
        return summed_resources(self, available)

    def close(self) -> None:
        """Release what this driver kept on the nodes, close every socket."""
        if self._closed:
            return
        with self._lock:
            self._fetch_start.clear()
        self._closed = True
        self._thread.join(2.0)
        with self._lock:
            self.actors.closing_locked()  # its actors that are not detached end
        self._flush()
        releases: dict[str, list] = {}
        with self._lock:
            for tid, res in self.results.items():
                if res[0] in ("stored", "fetched"):
                    releases.setdefault(res[2 if res[0] == "fetched" else 1], []).append(tid)
            for tid, nid in self.borrows.deferred.items():
                releases.setdefault(nid, []).append(tid)
        for nid, tids in releases.items():
            ep = self._eps.get(nid)
            if ep is not None and writable(ep):
                try:
                    ep.send(("release", tids))
                except zmq.ZMQError:
                    pass
        say_goodbye(self)  # the nodes drop at once what they hold for us (liveness.py)
        time.sleep(0.05)  # let the releases and goodbyes leave (linger is 0)
        for ep in [self._head, *self._eps.values()]:
            ep.close()
        if not self._thread.is_alive():  # else its poller may still watch the pipe
            self._wake.close()


def connect(address: str | None, token: str | None = None) -> ClusterClient:
    """Connect this process as a driver to the cluster whose head is at ``address``
    (``"auto"``/``None``: ``REPARTIR_ADDRESS``, then the head started on this machine) and
    make it the active cluster (``repartir.get`` and ``.remote()`` go there).

    Raises:
        RepartirError: no head known for ``"auto"``; nothing listens at the address (a
            TCP connect after 2 s without an answer, reach.py); the head does not answer.
        TokenError: the head refused our token.
        ValueError: an address not of the form ``HOST:PORT`` (or ``tcp://HOST:PORT``).
    """
    client = ClusterClient(resolve_address(address), token)
    context.set_cluster(client)
    return client


def active() -> ClusterClient | None:
    """The cluster this process is connected to, or ``None``."""
    return context.cluster


def disconnect() -> None:
    """Close the active cluster connection, if any."""
    client = context.cluster
    if client is not None:
        context.set_cluster(None)
        client.close()


def _disconnect_at_exit() -> None:
    """:func:`disconnect` at the interpreter's exit.  A second Ctrl-C while it says goodbye
    ends it quietly (no traceback): the nodes then drop this driver's work when its lease
    lapses instead (docs/cluster.md, "Failures")."""
    try:
        disconnect()
    except KeyboardInterrupt:
        pass


atexit.register(_disconnect_at_exit)  # what this driver kept on the nodes is released at exit
