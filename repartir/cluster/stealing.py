"""Work stealing between nodes: a part of :class:`~.node.NodeDaemon` (docs/cluster.md,
"Work stealing").

A node hands a driver's tasks to its local runtime only up to its **capacity**: enough
tasks for ``CLUSTER_QUEUE_TARGET_S`` (50 ms) of work per CPU (:func:`capacity_for`), between
2 and 512 tasks per CPU, by the service time of its tasks: by Little's law, a task admitted
with ``k`` tasks in flight and completed ``latency`` seconds later took ``latency * cpus / k``
of a CPU, or less (the daemon's own delays and stalls of the machine only add to it), so
the node takes the shortest such figure of the last ``CLUSTER_QUEUE_WINDOW_S`` (a sliding
window minimum).  The others wait in its **queue** (oldest first).  A node with a CPU free and
nothing queued is **idle**: it asks one peer, a **victim** drawn at random among those whose
last heartbeat showed tasks in their queue (:func:`~repartir.scheduler.policy.victim_order`, the
policy of the processes of one node), for a batch.  The victim takes the batch from the top
of its queue, the oldest tasks (FIFO, as a worker steals from a deque's top), up to half of
it and an even share among the nodes (:func:`~repartir.scheduler.policy.steal_batch`),
skipping the tasks that do not fit the thief's resources, those whose arguments stay on the
victim (``StoredArg``) or are to be pulled by it from another node (``RemoteArg``) and those
of drivers the thief is not connected to::

    driver ──tasks──▶ victim (queue: t1 t2 t3 t4 ...)          thief (idle)
                        │ ◀───────────── ("steal", thief id, its resources, want, drivers)
    driver ◀──moved──── │ (t1, t2 now on the thief)
                        │ ─────────────▶ ("stolen", functions, [(driver, t1, ...), ...])
    driver ◀───────────────────────────── done t1, t2 (the thief's ROUTER, by the driver's id)

Every driver connects to every node with the same ZeroMQ routing id (its driver id), so the
thief's ROUTER reaches the driver of a stolen task, and says hello (``("driver",)``) so that
nodes know which drivers they reach.  The victim tells each driver where its tasks went
(``moved``) before it hands them over: a driver resubmits the tasks of a node that dies, the
stolen ones included.  If the victim dies between the two messages the driver resubmits them
too, and such a task may run twice (the retry rules of a node's death apply).

Nodes learn their peers (address, CurveZMQ key, queued tasks) from the head's registry, which
they ask for with every heartbeat; a node connects to a victim when it first steals from it.
"""

from __future__ import annotations

import collections
import pickle
import random
import time
from typing import Any, NamedTuple

from ..config import (CLUSTER_QUEUE_MAX_PER_CPU, CLUSTER_QUEUE_MIN_PER_CPU,
                      CLUSTER_QUEUE_TARGET_S, CLUSTER_QUEUE_WINDOW_S, CLUSTER_STEAL_BACKOFF_S,
                      CLUSTER_STEAL_CAP, CLUSTER_STEAL_TIMEOUT_S)
from ..scheduler.policy import steal_batch, victim_order
from .borrows import RemoteArg
from .driver_values import DriverArg
from .sockets import Endpoint
from .state import StoredArg, tcp

#: Arguments that keep a task on the node it was sent to: one kept there, and one the driver
#: told it to pull from a given node (its borrow is counted for this node).
_STAYS = (StoredArg, RemoteArg, DriverArg)  # kept here (driver_values.py)

__all__ = ["NodeStealing", "QueuedTask", "demand_of", "fits", "capacity_for"]


class QueuedTask(NamedTuple):
    """A task waiting in a node's queue."""

    owner: bytes  #: the routing id of its driver (on every node's ROUTER)
    tid: bytes  #: its task id
    key: Any  #: its function's key (``functions`` of the ``tasks`` message)
    payload: list  #: its arguments as received: the pickle, then out-of-band buffers
    args: list  #: its arguments, unpickled
    kwargs: dict  #: its keyword arguments, unpickled
    demand: dict  #: the resources it asks for (``{"CPU": 1.0, ...}``)
    stealable: bool  #: no ``StoredArg`` or ``RemoteArg`` among its arguments


def demand_of(options: dict) -> dict:
    """The resources a task of these ``@remote`` options asks for, as the driver counts
    them (``CPU``, ``GPU``, ``memory`` and custom resources)."""
    demand = {"CPU": float(options.get("num_cpus", 1)), "GPU": float(options.get("num_gpus", 0)),
              "memory": float(options.get("memory") or 0)}
    demand.update({k: float(v) for k, v in (options.get("resources") or {}).items()})
    return demand


def fits(demand: dict, total: dict) -> bool:
    """Whether a node of resources ``total`` can ever run a task asking ``demand``."""
    return all(total.get(k, 0.0) >= v for k, v in demand.items() if v > 0)


def capacity_for(cpus: float, service_s: float | None) -> int:
    """Tasks a node of ``cpus`` CPUs keeps in its local runtime when a task takes
    ``service_s`` seconds of a CPU (``None``: not known yet, the minimum): enough for
    ``CLUSTER_QUEUE_TARGET_S`` of work per CPU, between ``CLUSTER_QUEUE_MIN_PER_CPU`` and
    ``CLUSTER_QUEUE_MAX_PER_CPU`` per CPU, and at least one."""
    per_cpu = CLUSTER_QUEUE_MIN_PER_CPU
    if service_s is not None:
        per_cpu = min(max(CLUSTER_QUEUE_TARGET_S / max(service_s, 1e-6), per_cpu),
                      CLUSTER_QUEUE_MAX_PER_CPU)
    return max(1, int(per_cpu * cpus))


def _forwardable(payload: list) -> list:
    """A received payload made sendable again (its buffers out of band, without a copy)."""
    return [payload[0], *(pickle.PickleBuffer(b) for b in payload[1:])]


class NodeStealing:
    """The queue and the stealing of a node daemon (see the module's docstring); mixed into
    :class:`~.node.NodeDaemon`, whose ``router``, ``keys``, ``node_id``, ``total``,
    ``pending``, ``functions`` and ``_submit`` it uses.  The capacity counts the tasks of
    :attr:`_admitted`, not actor operations (``node_actors.py``), which never wait here."""

    def _init_stealing(self) -> None:
        cpus = self.total.get("CPU", 0.0)
        self.cpus = cpus
        self.capacity = capacity_for(cpus, None)
        self.service_s: float | None = None  # a task's CPU time: the window's minimum
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self._admitted: dict[bytes, tuple[float, int]] = {}  # tid -> (when, in flight)
        self.queue: collections.deque[QueuedTask] = collections.deque()
        self.fn_blobs: dict[Any, bytes] = {}  # function key -> pickled (fn, options)
        self._demands: dict[Any, dict] = {}  # function key -> demand_of its options
        self.drivers: set[bytes] = set()  # routing ids of the drivers connected here
        self.peers: dict[str, dict] = {}  # node id -> registry record (others, alive)
        self.peer_eps: dict[str, Endpoint] = {}
        self._steal_out: tuple[str, float] | None = None  # (victim, deadline)
        self._next_steal = 0.0
        self._rng = random.Random()
        self.stolen = 0  # tasks this node took from others
        self.given = 0  # tasks others took from this node

    # ------------------------------------------------------------------ the queue

    def _enqueue(self, owner: bytes, tid: bytes, key: Any, payload: list, rf: Any,
                 args: list, kwargs: dict) -> None:
        stealable = not any(type(a) in _STAYS for a in args) and \
            not any(type(a) in _STAYS for a in kwargs.values())
        demand = self._demands.get(key)
        if demand is None:
            demand = self._demands[key] = demand_of(rf._options)
        self.queue.append(QueuedTask(owner, tid, key, payload, args, kwargs, demand,
                                     stealable))

    def _started(self, tid: bytes) -> None:
        """A task went to the local runtime (called by ``_submit``; actor operations are
        not counted)."""
        self._admitted[tid] = (time.monotonic(), len(self._admitted) + 1)

    def _finished(self, tid: bytes, now: float) -> None:
        """A task of the local runtime completed: its service time by Little's law, and the
        minimum of the window (a deque of increasing samples: amortized O(1))."""
        start = self._admitted.pop(tid, None)
        if start is None or self.cpus <= 0:
            return
        sample = (now - start[0]) * self.cpus / max(start[1], 1)
        window = self._samples
        while window and window[-1][1] >= sample:
            window.pop()
        window.append((now, sample))
        while window[0][0] < now - CLUSTER_QUEUE_WINDOW_S:
            window.popleft()
        self.service_s = window[0][1]
        self.capacity = capacity_for(self.cpus, self.service_s)

    def _refresh_capacity(self, now: float) -> None:
        """Forget the service times older than the window when no task finished since (the
        window is otherwise pruned at completions only): a node that ran tiny tasks a while
        ago must not keep handing its runtime hundreds of long ones that no idle node could
        steal then."""
        window = self._samples
        while window and window[0][0] < now - CLUSTER_QUEUE_WINDOW_S:
            window.popleft()
        service = window[0][1] if window else None
        if service != self.service_s:
            self.service_s = service
            self.capacity = capacity_for(self.cpus, service)

    def _admit(self) -> None:
        """Hand queued tasks to the local runtime while it has room."""
        while self.queue and len(self._admitted) < self.capacity:
            t = self.queue.popleft()
            self._submit(t.owner, t.tid, self.functions[t.key], t.args, t.kwargs)

    def _take(self, thief_total: dict, want: int, drivers: set, nodes: int) -> list:
        """Up to half of the queue (an even share, at most ``want``), oldest first, of the
        tasks the thief can run."""
        n = min(want, steal_batch(len(self.queue), nodes, CLUSTER_STEAL_CAP))
        taken, kept = [], collections.deque()
        while self.queue and len(taken) < n:
            t = self.queue.popleft()
            if t.stealable and t.owner in drivers and fits(t.demand, thief_total):
                taken.append(t)
            else:
                kept.append(t)
        kept.extend(self.queue)
        self.queue = kept
        return taken

    # ------------------------------------------------------------------ the victim

    def _on_steal(self, peer: bytes, thief: str, thief_total: dict, want: int,
                  drivers: list) -> None:
        nodes = 1 + sum(1 for r in self.peers.values() if r.get("Alive"))
        taken = self._take(thief_total, want, set(drivers), nodes)
        by_owner: dict[bytes, list] = {}
        for t in taken:
            by_owner.setdefault(t.owner, []).append(t.tid)
        for owner, tids in by_owner.items():  # before the thief can finish any of them
            self.router.send(("moved", thief, tids), to=owner)
        fns = {t.key: self.fn_blobs[t.key] for t in taken}
        self.router.send(("stolen", fns, [(t.owner, t.tid, t.key, _forwardable(t.payload))
                                          for t in taken]), to=peer)
        self.given += len(taken)

    # ------------------------------------------------------------------ the thief

    def _on_registry(self, records: list) -> None:
        self.peers = {r["NodeID"]: r for r in records if r["NodeID"] != self.node_id}
        self.puller.nodes_dead({n for n, r in self.peers.items() if not r.get("Alive")})
        for nid in [n for n in self.peer_eps if not self.peers.get(n, {}).get("Alive")]:
            self.peer_eps.pop(nid).close()
            if self._steal_out is not None and self._steal_out[0] == nid:
                self._steal_out = None

    def _peer_ep(self, nid: str) -> Endpoint:
        ep = self.peer_eps.get(nid)
        if ep is None:
            rec = self.peers[nid]
            ep = self.peer_eps[nid] = Endpoint.connect(
                tcp(rec["NodeManagerAddress"]), token=self._token,
                **self.keys.to_node(rec))
        return ep

    def _idle(self) -> bool:
        return not self.queue and len(self.pending) < self.cpus

    def _steal_tick(self) -> None:
        """Receive the victims' answers; ask one for a batch when this node is idle."""
        for nid, ep in list(self.peer_eps.items()):
            while ep.poll(0):
                try:
                    msg = ep.recv(timeout=0.5)
                except Exception:  # dropped (logged by the endpoint) or refused
                    break
                if msg.value[0] == "stolen":
                    self._on_stolen(nid, msg.value[1], msg.value[2])
        now = time.monotonic()
        if self._steal_out is not None:
            if now < self._steal_out[1]:
                return
            self._steal_out = None  # the victim did not answer: try another
        if now < self._next_steal or not self.drivers or not self._idle():
            return
        ids = [n for n, r in self.peers.items() if r.get("Alive")]
        sizes = [int(self.peers[n].get("Waiting", 0)) for n in ids]
        order = victim_order(sizes, -1, self._rng)
        if not order:
            return
        victim = ids[order[0]]
        want = max(self.capacity - len(self._admitted), 1)
        self._peer_ep(victim).send(("steal", self.node_id, self.total, want,
                                    sorted(self.drivers)))
        self._steal_out = (victim, now + CLUSTER_STEAL_TIMEOUT_S)

    def _on_stolen(self, victim: str, functions: dict, items: list) -> None:
        if self._steal_out is not None and self._steal_out[0] == victim:
            self._steal_out = None
        if not items:
            self._next_steal = time.monotonic() + CLUSTER_STEAL_BACKOFF_S
            return
        self.stolen += len(items)
        by_owner: dict[bytes, list] = {}
        for owner, tid, key, payload in items:
            by_owner.setdefault(owner, []).append((tid, key, payload))
        for owner, tasks in by_owner.items():
            self._run_tasks(owner, functions, tasks)

    def _close_peers(self) -> None:
        for ep in self.peer_eps.values():
            ep.close()
        self.peer_eps.clear()
