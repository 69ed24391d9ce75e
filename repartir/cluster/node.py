"""A node daemon: ``python -m repartir.cluster.node`` (started by ``repartir start``;
docs/cluster.md).

The daemon is the driver of an ordinary local node: it calls :func:`repartir.init` in its own
process (workers, arena) and serves a ROUTER :class:`~repartir.cluster.sockets.Endpoint`.
Drivers send it batches of tasks (the function once per node, then ``(task id, function key,
args, kwargs)`` with the argument values resolved); it submits them to its local node with
the ordinary API, up to its capacity, and queues the rest for idle peers to steal
(:mod:`.stealing`), and sends the completions back in batches: small results inline, larger
ones kept here (the local ``ObjectRef`` holds them in the arena) and served in chunks until
the driver releases them.  A task's argument kept on another node comes as a ``RemoteArg``:
the daemon's :class:`~repartir.cluster.pull.Puller` pulls it from that node first (and
caches it while tasks here use it); its :class:`~repartir.cluster.pull.BlobServer` serves
this node's objects to the others.

The head's daemon also keeps the registry: every node (the head's own included) registers,
then sends a heartbeat every ``CLUSTER_HEARTBEAT_S`` with its free resources and its tasks;
a node silent for ``REPARTIR_NODE_TIMEOUT`` seconds is declared dead (a node that comes
back, and nodes rejoining a restarted head: ``membership.py``).  Drivers and
``repartir status`` ask the head for the registry (``("nodes",)``).

Messages (each value a tuple, the kind first):

=============== ======================= ==================================================
from            kind                    payload
=============== ======================= ==================================================
driver -> node  ``tasks``               ``functions`` {key: pickled (fn, options)}, ``tasks``:
                                        ``(task id, key, pickled (args, kwargs))``
node -> driver  ``done``                list of ``(task id, "value" | "stored" | "error",
                                        value | size | exception)``
driver -> node  ``meta``, ``chunk``     pull a stored object: its frame sizes, then
                                        ``(id, frame, offset, length)`` pieces
driver -> node  ``keep``                ``(id, frames)`` values of the driver its tasks
                                        take, kept here once (driver_values.py)
driver -> node  ``release``             ids of stored objects the driver no longer needs
driver -> node  ``cancel``              ``(task id, force, recursive)`` (node_returns.py)
node -> driver  ``items``               a generator's new items, ``(task id, index, what,
                                        payload)``; its ``done`` is ``stream_end``, that of
                                        ``num_returns=k`` ``returns`` (node_returns.py)
node -> node    ``bmeta``, ``bchunk``   pull a stored object's blob for a task's
                                        ``RemoteArg``: its size, then ``(id, offset,
                                        length)`` pieces (:mod:`~repartir.cluster.pull`)
node -> head    ``register``,           the node's record (id, address, resources total
                ``heartbeat``           and available, tasks queued and running, its
                                        incarnation)
head -> node    ``welcome``,            registered; "register again" (a restarted head);
                ``unknown``, ``dead``   "you were declared dead" (membership.py)
any -> head     ``nodes``               the registry, answered with ``("nodes", list,
                                        live driver ids, head's uptime)``; a driver adds
                                        its id (its lease: leases.py) and a number, echoed
driver -> any   ``bye``                 the driver ends: drop what is held for it (to the
                                        head: with its id; leases.py)
node -> driver  ``forgot``              ``(task ids, object ids)`` dropped for a driver
                                        taken for gone (leases.py)
driver -> node  ``driver``              hello: the node reaches this driver by its id
node -> node    ``steal``, ``stolen``   a batch of queued tasks asked for and handed over
node -> driver  ``moved``               ``(thief id, task ids)``: stolen (stealing.py)
=============== ======================= ==================================================

A task whose key is an :class:`~.node_actors.ActorKey` is an operation on the actors this node
holds for drivers (create, call, end, kill; on the head, the names of actors): see
``node_actors.py``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import re
import signal
import socket
import sys
import time
from typing import Any

import zmq

import repartir

from ..config import (CLUSTER_HEARTBEAT_S, CLUSTER_INLINE_RESULT_BYTES, CLUSTER_PORT,
                      CLUSTER_START_TIMEOUT_S, cluster_node_timeout)
from ..errors import RepartirError, TokenError, WireTimeoutError
from ..runtime import driver as local_driver
from ..runtime.remote_function import RemoteFunction
from . import handoff, membership
from .driver_values import DriverArg, keep_values
from .leases import DriverLeases, Holdings, drop_driver
from .encryption import ClusterKeys
from .node_actors import ActorKey, NodeActors
from .node_faults import unpickling_failed
from .nested import remote_with_nested
from .node_returns import NodeReturns, several
from .result_refs import WithRefs, export_refs
from .pull import BLOB_KINDS, BlobServer, Puller
from .stealing import NodeStealing
from .sockets import Endpoint
from .state import StoredArg, host_port
from .wire import encode

__all__ = ["NodeDaemon", "main"]


def _reachable_host(bind: str, head: str | None) -> str:
    """The host other machines reach this node at: the bind address, or for a wildcard
    bind, the local address of the route to the head (else this host name's address)."""
    if bind not in ("0.0.0.0", "*", "", "::"):
        return bind
    if head is not None:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((host_port(head)[0], 9))
                return s.getsockname()[0]
        except OSError:
            pass
    return socket.gethostbyname(socket.gethostname())


_PID_PREFIX = re.compile(r"^(\([^()\n]* pid=\d+)\) ", re.MULTILINE)


def _picklable_error(exc: BaseException) -> BaseException:
    try:
        pickle.loads(encode(exc)[0])
        return exc
    except Exception:
        return RepartirError(f"{type(exc).__name__}: {exc}")


class NodeDaemon(NodeStealing, NodeReturns):
    """One node of a cluster (see the module's docstring).

    Args:
        head: ``None`` for the head, else the head's ``HOST:PORT``.
        bind: the address to listen on (``127.0.0.1`` by default; any other needs a token).
        port: the port (the head's default ``CLUSTER_PORT``; 0: one chosen by the OS).
        init_kwargs: the local node's settings (``num_cpus``, ``num_gpus``, ``resources``,
            ``object_store_memory``), as for :func:`repartir.init`.
        token: the cluster token (default: ``REPARTIR_TOKEN``, then the token file).
        keys: the CurveZMQ keys (:class:`~.encryption.ClusterKeys`; default: none, the
            cluster is not encrypted).

    Raises:
        TokenError: a non-loopback bind without a token, or (joining) the head refused our
            token.
        WireTimeoutError: (joining) the head did not answer within
            ``CLUSTER_START_TIMEOUT_S``.
    """

    def __init__(self, head: str | None, bind: str, port: int, init_kwargs: dict,
                 token: str | None = None, keys: ClusterKeys | None = None) -> None:
        self.is_head = head is None
        self.timeout = cluster_node_timeout()
        self._stop = False
        self.keys = keys or ClusterKeys()
        self._token = token
        self.router = Endpoint.listen(f"tcp://{bind}:{port or '*'}", token=token,
                                      **self.keys.listen())
        self.head_ep: Endpoint | None = None
        try:
            real_port = int(self.router.address.rsplit(":", 1)[1])
            self.address = f"{_reachable_host(bind, head)}:{real_port}"
            if head is not None:
                self.head_ep = Endpoint.connect(f"tcp://{head}", token=token,
                                                **self.keys.to_head())
            # its workers and actors reach the cluster through the head (inner.py)
            handoff.prepare_workers(head or self.address, self.keys.head, token)
            repartir.init(**init_kwargs)
        except BaseException:
            self.close()
            raise
        self.node_id = repartir.get_runtime_context().get_node_id()
        self.total = repartir.cluster_resources()
        self.functions: dict[Any, RemoteFunction] = {}
        self.pending: dict[bytes, tuple[bytes, Any]] = {}  # task id -> (peer, local ref)
        self.done: collections.deque = collections.deque()  # (peer, task id, future)
        self.stored: dict[bytes, list] = {}  # object id -> [local ref, frames or None]
        self.registry: dict[str, dict] = {}  # the head's: node id -> record
        self.actors = NodeActors(self.node_id, self.registry if self.is_head else None,
                                 self.timeout)  # actors held for drivers; named actors
        self.poller = zmq.Poller()
        self.blobs = BlobServer(self.stored, lambda v, peer: self.router.send(v, to=peer))
        self.puller = Puller(self.node_id, self.stored, token,
                             lambda ep: self.poller.register(ep.socket, zmq.POLLIN),
                             self._start, self._failed, self._peer_keywords)
        self.started = time.time()
        self.incarnation = 0  # times declared dead and back (membership.py)
        self.leases = DriverLeases(self.timeout)  # the head's: drivers heard (leases.py)
        self.holdings = Holdings(self.timeout)  # who each kept result is for (leases.py)
        self._init_stealing()
        self.output: collections.deque = collections.deque()  # worker lines for the drivers
        forwarder = getattr(local_driver.client().node, "output", None)
        if forwarder is not None:
            forwarder.sink = lambda err, text: self.output.append((err, text))
        self._init_returns()  # num_returns != 1, generators, cancels (node_returns.py)
        if head is not None:
            self._join()
        else:
            self._heard(self._record())

    # ------------------------------------------------------------------ registry

    def _record(self) -> dict:
        avail = repartir.available_resources()
        cpus = self.total.get("CPU", 0.0)
        running = min(len(self.pending), int(round(cpus - avail.get("CPU", cpus))))
        return {"NodeID": self.node_id, "NodeManagerAddress": self.address,
                "Resources": self.total, "Available": avail, "Running": running,
                "Queued": len(self.pending) - running + len(self.queue),
                "Waiting": len(self.queue), "Capacity": self.capacity,
                "Stored": len(self.stored), "Actors": len(self.actors.handles),
                "Cached": len(self.puller.cache), "PulledBytes": self.puller.pulled_bytes,
                "ServedBytes": self.blobs.served_bytes, "StoreUsedBytes": self._store_used(),
                "Pid": os.getpid(), "Hostname": socket.gethostname(), "Head": self.is_head,
                "Started": self.started, "CurveKey": self.keys.public(),
                "Incarnation": self.incarnation}

    @staticmethod
    def _store_used() -> int:
        """Bytes of this node's object store in use (blocks and their headers)."""
        return local_driver.client().arena.statistics().used_bytes

    def _heard(self, record: dict) -> None:
        record = dict(record, Alive=True, LastHeard=time.monotonic())
        self.registry[record["NodeID"]] = record

    def _nodes(self) -> list[dict]:
        now = time.monotonic()
        out = []
        for rec in self.registry.values():
            if rec["Alive"] and now - rec["LastHeard"] > self.timeout:
                rec["Alive"] = False
                print(f"node {rec['NodeID'][:12]} at {rec['NodeManagerAddress']} declared "
                      f"dead: no heartbeat for {self.timeout:g} s", file=sys.stderr, flush=True)
            out.append({**{k: v for k, v in rec.items() if k != "LastHeard"},
                        "HeardAgoS": round(now - rec["LastHeard"], 1)})
        return out

    def _join(self) -> None:
        assert self.head_ep is not None
        self.head_ep.send(("register", self._record()))
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
        while True:
            msg = self.head_ep.recv(timeout=max(deadline - time.monotonic(), 0.001))
            if msg.value[0] == "welcome":
                return

    # ------------------------------------------------------------------ messages

    def _on_router(self, peer: bytes, value: tuple) -> None:
        kind = value[0]
        if kind == "tasks":
            self.drivers.add(peer)
            self._run_tasks(peer, value[1], value[2])
        elif kind == "keep":  # values a driver's tasks take, kept here (driver_values.py)
            keep_values(self, peer, value[1])
        elif kind == "driver":  # a driver's hello: this node can send it completions
            self.drivers.add(peer)
        elif kind == "steal":
            self._on_steal(peer, *value[1:])
        elif kind == "meta":
            self._send_meta(peer, value[1])
        elif kind == "chunk":
            self._send_chunk(peer, *value[1:])
        elif kind in BLOB_KINDS:
            self.blobs.on_message(peer, value)
        elif kind == "cancel":
            self._on_cancel(peer, *value[1:])
        elif kind == "release":
            for oid in value[1]:
                self.stored.pop(oid, None)
                self.blobs.forget(oid)
                self.holdings.released(oid)
        elif kind in ("register", "heartbeat") and self.is_head:
            membership.on_node_message(self, peer, kind, value[1])
        elif kind == "nodes" and self.is_head:
            if len(value) > 1:  # a driver's request, with its id (leases.py)
                self.leases.heard(value[1])
            self.router.send(("nodes", self._nodes(), self.leases.live(),
                              self.leases.uptime(), *value[2:3]), to=peer)
        elif kind == "bye":  # a driver that ends (leases.py)
            if len(value) > 1:
                self.leases.left(value[1])
            else:
                drop_driver(self, peer, said_bye=True)
        else:
            print(f"ignored a message of kind {kind!r}", file=sys.stderr, flush=True)

    def _function(self, key: Any, functions: dict) -> RemoteFunction:
        if type(key) is ActorKey:  # an actor operation (node_actors.py)
            return self.actors.target(key)  # type: ignore[return-value]
        rf = self.functions.get(key)
        if rf is None:
            fn, options = pickle.loads(functions[key])
            rf = self.functions[key] = RemoteFunction(fn, options)
            self.fn_blobs[key] = functions[key]  # for a thief (stealing.py)
        return rf

    def _run_tasks(self, peer: bytes, functions: dict, tasks: list) -> None:
        """Run the tasks, or queue them beyond ``capacity`` (see :mod:`.stealing`)."""
        self._refresh_capacity(time.monotonic())
        out = []
        for tid, key, payload in tasks:
            rf = None
            try:
                rf = self._function(key, functions)
                args, kwargs = pickle.loads(payload[0], buffers=payload[1:])
            except BaseException as exc:  # unpicklable here: a TaskError, as in a worker
                out.append((tid, "error", _picklable_error(unpickling_failed(rf, exc))))
                continue
            task = type(key) is not ActorKey  # actor operations are neither queued nor stolen
            if not task:
                self.actors.received(peer, key.op, args)  # who owns, holds (node_actors.py)
            if task and (self.queue or len(self._admitted) >= self.capacity):
                self._enqueue(peer, tid, key, payload, rf, args, kwargs)
                continue
            self._submit(peer, tid, rf, args, kwargs, counted=task)
        if out:
            self.router.send(("done", out), to=peer)

    def _submit(self, peer: bytes, tid: bytes, rf: RemoteFunction, args: Any,
                kwargs: dict, counted: bool = True) -> None:
        """Hand one task to the local runtime (``counted``: against its capacity), now, or
        once the arguments it takes from other nodes are pulled (:mod:`.pull`); a task that
        cannot start gets its error sent back."""
        if counted:
            self._started(tid)
        try:
            self.puller.submit(peer, tid, rf, args, kwargs)
        except BaseException as exc:  # bad arguments, infeasible here
            self._failed(peer, tid, exc)

    def _start(self, peer: bytes, tid: bytes, rf: RemoteFunction, args: list,
               kwargs: dict) -> None:
        """Submit a task whose arguments are all on this node (raises what ``.remote()``
        raises)."""
        self._check_cancelled(tid)
        args = [self._arg(a) for a in args]
        kwargs = {k: self._arg(v) for k, v in kwargs.items()}
        ref = remote_with_nested(rf, args, kwargs)  # rf.remote, with nested refs (nested.py)
        if several(ref):  # num_returns != 1, a generator (node_returns.py)
            self._start_returns(peer, tid, ref)
            return
        self.pending[tid] = (peer, ref)
        done = self.done
        ref.future().add_done_callback(
            lambda f, tid=tid, peer=peer: done.append((peer, tid, f)))
        local_driver.wake_pump()  # its completion is seen at once, not after the back-off

    def _peer_keywords(self, arg: Any) -> dict:
        """``Endpoint.connect`` keywords for a connection to the node that keeps the
        ``RemoteArg`` ``arg``: its CurveZMQ key in an encrypted cluster, from this node's
        copy of the registry, else from the driver's (which came with ``arg``)."""
        record = self.peers.get(arg.node) or {"NodeID": arg.node, "CurveKey": arg.key,
                                               "NodeManagerAddress": arg.address}
        return self.keys.to_node(record)

    def _failed(self, peer: bytes, tid: bytes, exc: BaseException) -> None:
        """A task that could not start: no longer counted, its error sent to its driver."""
        self._admitted.pop(tid, None)
        self.router.send(("done", [(tid, "error", _picklable_error(exc))]), to=peer)

    def _arg(self, value: Any) -> Any:
        if type(value) is StoredArg or type(value) is DriverArg:
            entry = self.stored.get(value.object_id)
            if entry is None:
                raise RepartirError(f"object {value.object_id.hex()} is no longer on node "
                                    f"{self.node_id[:12]} (released)")
            return entry[0]
        return value

    def _completions(self) -> None:
        by_peer: dict[bytes, list] = {}
        now = time.monotonic()
        while self.done:
            peer, tid, fut = self.done.popleft()
            entry = self.pending.pop(tid, None)
            self.puller.task_done(tid)
            self._finished(tid, now)
            if entry is None:
                continue  # dropped when this node was declared dead (membership.py)
            if several(entry[1]):  # several returns, a stream: node_returns.py
                by_peer.setdefault(peer, []).append(self._returns_item(peer, tid, entry[1]))
                continue
            exc = fut.exception()
            if exc is not None:
                item = (tid, "error", _picklable_error(exc))
            else:
                value = export_refs(self, peer, fut.result())  # refs inside: result_refs.py
                frames = encode(value)
                size = sum(memoryview(f).nbytes for f in frames)
                if size <= CLUSTER_INLINE_RESULT_BYTES or type(value) is WithRefs:
                    item = (tid, "value", value)
                else:
                    self.stored[tid] = [entry[1], frames]
                    self.holdings.kept(tid, peer)
                    item = (tid, "stored", size)
            by_peer.setdefault(peer, []).append(item)
        for peer, items in by_peer.items():
            self.router.send(("done", items), to=peer)
        self._admit()

    def _send_meta(self, peer: bytes, oid: bytes) -> None:
        entry = self.stored.get(oid)
        sizes = None if entry is None else [memoryview(f).nbytes for f in entry[1]]
        self.router.send(("meta", oid, sizes), to=peer)

    def _send_chunk(self, peer: bytes, oid: bytes, frame: int, offset: int,
                    length: int) -> None:
        entry = self.stored.get(oid)
        if entry is None:
            self.router.send(("chunk", oid, frame, offset, None), to=peer)
            return
        view = memoryview(entry[1][frame]).cast("B")[offset:offset + length]
        self.router.send(("chunk", oid, frame, offset, pickle.PickleBuffer(view)), to=peer)

    def _relay_output(self) -> None:
        """Send what the workers printed to every driver this node serves (as Ray's
        ``log_to_driver``), each line's prefix naming this node: ``(worker pid=N,
        ip=HOST) ``."""
        items = []
        host = self.address.rsplit(":", 1)[0]
        while self.output:
            err, text = self.output.popleft()
            items.append((err, _PID_PREFIX.sub(rf"\1, ip={host}) ", text)))
        for peer in list(self.drivers):
            self.router.send(("output", items), to=peer)

    def _drivers_listed(self, live: Any = None, uptime: Any = None) -> None:
        """The head's list of live drivers (and its uptime): drop what is held for those
        gone (leases.py)."""
        for driver_id in self.holdings.gone(self.drivers, live, uptime):
            drop_driver(self, driver_id)
            self.actors.driver_gone(driver_id)  # its actors and holds (node_actors.py)

    # ------------------------------------------------------------------ the loop

    def stop(self, *_: Any) -> None:
        self._stop = True

    def serve(self) -> None:
        """Serve until :meth:`stop` (SIGTERM, SIGINT)."""
        poller = self.poller
        poller.register(self.router.socket, zmq.POLLIN)
        if self.head_ep is not None:
            poller.register(self.head_ep.socket, zmq.POLLIN)
        next_beat = time.monotonic() + CLUSTER_HEARTBEAT_S
        while not self._stop:
            busy = self.pending or self.done or self.queue or self._steal_out or \
                self.puller.pulls
            events = dict(poller.poll(1 if busy else 50))
            if self.router.socket in events:
                for _ in range(1000):
                    if not self.router.poll(0):
                        break
                    try:
                        msg = self.router.recv(timeout=1.0)
                    except WireTimeoutError:
                        break  # dropped (bad token, ...): logged by the endpoint
                    self._on_router(msg.peer, msg.value)
            for sock in events:
                if sock in self.puller.peer_of:
                    self.puller.drain(sock)
            if self.head_ep is not None and self.head_ep.socket in events:
                while self.head_ep.poll(0):  # a burst after a link came back: all of it
                    try:
                        msg = self.head_ep.recv(timeout=1.0)  # the registry, or membership
                        if msg.value[0] == "nodes":
                            self._on_registry(msg.value[1])
                            self._drivers_listed(*msg.value[2:4])
                        else:
                            membership.on_head_message(self, msg.value)
                    except (WireTimeoutError, TokenError) as exc:
                        if not isinstance(exc, WireTimeoutError):
                            print(f"the head refused this node: {exc}", file=sys.stderr,
                                  flush=True)
                        break
            if self.streams:
                self._stream_tick()
            if self.done:
                self._completions()
            elif self.queue and len(self._admitted) < self.capacity:
                self._admit()  # tasks that could not start (_failed) left room
            if self.output:
                self._relay_output()
            self._steal_tick()
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + CLUSTER_HEARTBEAT_S
                self.puller.check()
                self.router.check_handshakes()  # logs peers refused for their encryption
                if self.head_ep is not None:
                    self.head_ep.send(("heartbeat", self._record()))
                    self.head_ep.send(("nodes",))  # the peers to steal from
                else:
                    self._heard(self._record())
                    self._on_registry(self._nodes())
                    self._drivers_listed(self.leases.live(), self.leases.uptime())

    def close(self) -> None:
        """Close the sockets and shut the local node down.  Safe to call twice."""
        puller = getattr(self, "puller", None)
        if puller is not None:
            puller.close()
        if hasattr(self, "peer_eps"):
            self._close_peers()
        for ep in (self.router, self.head_ep):
            if ep is not None:
                ep.close()
        if repartir.is_initialized():
            repartir.shutdown()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m repartir.cluster.node",
                                description="a repartir node daemon (use `repartir start`)")
    p.add_argument("--head", action="store_true", help="run the head (the registry)")
    p.add_argument("--address", default=None, help="the head's HOST:PORT (to join)")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--num-gpus", type=float, default=None)
    p.add_argument("--resources", default=None, help="custom resources as JSON")
    p.add_argument("--object-store-memory", type=int, default=None)
    p.add_argument("--key-file", default=None,
                   help="the head's CurveZMQ .key_secret file: encrypt (with --head)")
    p.add_argument("--server-key", default=None,
                   help="the head's public key: encrypt (with --address)")
    p.add_argument("--ready-file", default=None,
                   help="write {address, node_id, pid} (or {error}) here once up")
    return p


def _ready(path: str | None, value: dict) -> None:
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(value, f)
        os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.head == (args.address is not None):
        print("give either --head or --address HOST:PORT", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else (CLUSTER_PORT if args.head else 0)
    init_kwargs = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus,
                   "object_store_memory": args.object_store_memory,
                   "resources": json.loads(args.resources) if args.resources else None}
    daemon = None
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop() if daemon else sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: daemon.stop() if daemon else sys.exit(0))
    try:
        keys = (ClusterKeys.for_head(args.key_file) if args.head
                else ClusterKeys.for_node(args.server_key))
        daemon = NodeDaemon(args.address, args.bind, port, init_kwargs, keys=keys)
    except (TokenError, WireTimeoutError, RepartirError, ValueError, OSError,
            zmq.ZMQError) as exc:
        text = str(exc)
        if isinstance(exc, WireTimeoutError):
            text = (f"the head at {args.address} did not answer within "
                    f"{CLUSTER_START_TIMEOUT_S:g} s: is it up, reachable, and does it use "
                    f"the same cluster token? ({exc})")
        print(f"repartir node: {text}", file=sys.stderr, flush=True)
        _ready(args.ready_file, {"error": text})
        return 1
    try:
        _ready(args.ready_file, {"address": daemon.address, "node_id": daemon.node_id,
                                 "pid": os.getpid()})
        print(f"node {daemon.node_id[:12]} serving on {daemon.address}"
              f"{' (head)' if daemon.is_head else ''}", file=sys.stderr, flush=True)
        daemon.serve()
    finally:
        daemon.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
