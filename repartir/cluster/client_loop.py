"""The background thread of a driver connected to a cluster (a part of
:class:`~.client.ClusterClient`, whose state it shares; docs/cluster.md, "Drivers"): it
owns the sockets, sends the batches of tasks, receives completions and chunks of results,
and asks the head for the registry every ``CLUSTER_HEARTBEAT_S``."""

from __future__ import annotations

import pickle
import sys
import time
from typing import Any

import zmq

from ..config import (CLUSTER_BATCH_TASKS, CLUSTER_CHUNK_BYTES, CLUSTER_CHUNKS_IN_FLIGHT,
                      CLUSTER_HEARTBEAT_S)
from ..errors import (InfeasibleTaskError, NodeDiedError, ObjectLostError, RepartirError,
                      WireTimeoutError)
from ..runtime import context
from .liveness import answered, ask_registry, forgot, turned
from .membership import requeue, restarted, writable
from .node_faults import node_message_failed
from .sockets import Endpoint

__all__ = ["ClientLoop"]


def print_output(items: list) -> None:
    """Write the lines a node's workers printed to this driver's stdout or stderr; a
    worker or actor process connected to the cluster drops them (its own output goes to
    its node, which would send them round again)."""
    if context.inner is not None:
        return
    for to_stderr, text in items:
        console = sys.stderr if to_stderr else sys.stdout
        try:
            console.write(text)
            console.flush()
        except Exception:  # noqa: BLE001 -- a closed console: drop the lines
            pass


class ClientLoop:
    def _loop(self) -> None:
        next_registry = last_turn = time.monotonic() + CLUSTER_HEARTBEAT_S
        last_turn -= CLUSTER_HEARTBEAT_S
        while not self._closed:
            try:
                if self._lineage.waiting:
                    with self._lock:
                        self._lineage.step()
                if self._deps.by_object:  # tasks whose arguments are ready now (deps.py)
                    with self._lock:
                        self._deps.step()
                if self._actor_deps.queues:  # actor calls, likewise (actor_deps.py)
                    with self._lock:
                        self._actor_deps.step()
                self._flush()
                busy = self.inflight or self._fetches or self._fetch_start
                events = dict(self._poller.poll(1 if busy else 20))
                if self._wake.fd in events:
                    self._wake.drain()
                for sock in events:
                    self._drain(sock)
                now = time.monotonic()
                turned(self, now - last_turn, now)  # a pause of this process (liveness.py)
                last_turn = now
                if now >= next_registry or self._registry_asked:
                    next_registry = now + CLUSTER_HEARTBEAT_S
                    ask_registry(self)
                    if now - self._last_head > self.timeout:
                        self._head_lost()
            except zmq.ZMQError:
                if self._closed:
                    return
                raise
            except Exception as exc:  # never let the thread die: report it on every ref
                self._broken(exc)

    def _broken(self, exc: Exception) -> None:
        with self._lock:
            for tid in list(self.inflight):
                del self.inflight[tid]
                self.results[tid] = ("error", RepartirError(
                    f"the cluster client failed: {type(exc).__name__}: {exc}"))
            self._cv.notify_all()

    def _head_lost(self) -> None:
        with self._lock:
            if self._failed is not None:
                return
            self._failed = (f"the head at {self.address} has not answered for "
                            f"{self.timeout:g} s (REPARTIR_NODE_TIMEOUT): the cluster is "
                            f"gone or cut off; call repartir.shutdown() and init() again")
            for nid in list(self._eps):
                self._node_died(nid, "became unreachable (the head stopped answering)")

    def _flush(self) -> None:
        with self._lock:
            dead, self.dead[:] = list(self.dead), []
            releases: dict[str, list] = {}
            self.returns.flush_locked(dead, releases)  # returns, streams (returns.py)
            for tid in dead:
                res = self.results.pop(tid, None)
                if res is None and tid in self.inflight:
                    self._dropped.add(tid)
                elif res is not None and res[0] in ("stored", "fetched"):
                    nid = res[2 if res[0] == "fetched" else 1]
                    if self.borrows.dropped(tid, nid):  # else when its borrowers end
                        releases.setdefault(nid, []).append(tid)
                elif res is not None and res[0] == "value":  # its copies on nodes go
                    self.dvals.dropped(tid, self.borrows, releases)  # (driver_values.py)
                if self._lineage.specs:
                    self._lineage.ref_dropped(tid)
            cancels, self.returns.cancel_out[:] = list(self.returns.cancel_out), []
            due, self._due[:] = list(self._due), []
            for nid, tid in due:
                releases.setdefault(nid, []).append(tid)
            self.dvals.expand(releases)  # a driver value: to each node holding it
            self.actors.flush_locked()  # actors whose last handle went end (actors.py)
            batches = []
            for nid, tids in self._outbox.items():
                if not tids:
                    continue
                ep = self._eps.get(nid)
                sent = self._fn_sent[nid]
                keep = self.dvals.keeps(nid, ((t, self.inflight.get(t)) for t in tids),
                                        self.borrows)  # values first (driver_values.py)
                if keep is not None:
                    batches.append((ep, None, keep))
                for i in range(0, len(tids), CLUSTER_BATCH_TASKS):
                    fns, items = {}, []
                    for tid in tids[i:i + CLUSTER_BATCH_TASKS]:
                        t = self.inflight.get(tid)
                        if t is None:
                            continue
                        if t.key not in sent:
                            fns[t.key] = t.blob
                            sent.add(t.key)
                        items.append((tid, t.key, t.payload))
                    batches.append((ep, fns, items))
            self._outbox.clear()
            starts, self._fetch_start[:] = list(self._fetch_start), []
            for tid in starts:
                res = self.results.get(tid)
                if res is not None and res[0] == "stored" and res[1] in self._eps:
                    self._fetches[tid] = {"node": res[1], "sizes": None}
                    batches.append((self._eps[res[1]], None, ("meta", tid)))
        blocked = set()
        for ep, fns, items in batches:
            if ep in blocked or not writable(ep):  # its node takes nothing: a send would
                blocked.add(ep)                    # block this thread; later, in order
                if fns is not None or items[0] != "keep":  # values go again with their
                    requeue(self, ep, fns, items)          # tasks (driver_values.py)
            else:
                ep.send(items if fns is None else ("tasks", fns, items))
                self.dvals.sent(self._ep_node.get(ep.socket), fns, items)
        for nid, tids in releases.items():
            ep = self._eps.get(nid)
            if ep is not None and writable(ep):
                ep.send(("release", tids))
        for nid, msg in cancels:  # after the batches: a node has the tasks it cancels
            ep = self._eps.get(nid)
            if ep is not None and writable(ep):
                ep.send(msg)

    def _drain(self, sock: Any) -> None:
        ep = self._head if sock is self._head.socket else self._eps.get(self._ep_node.get(sock))
        if ep is None:
            return
        for _ in range(10000):
            if not ep.poll(0):
                return
            try:
                msg = ep.recv(timeout=1.0)
            except WireTimeoutError:
                return
            except RepartirError as exc:  # a node refused a message: its tasks fail
                if ep is self._head:
                    raise
                node_message_failed(self, self._ep_node[sock], exc)  # (node_faults.py)
                continue
            if ep is self._head:
                self._on_registry(msg.value)
            elif restarted(self, self._ep_node[sock], msg.sender):
                return  # that ep is closed now
            else:
                try:
                    self._on_node(ep, self._ep_node[sock], msg.value)
                except Exception as exc:  # one bad message fails that node's tasks only
                    node_message_failed(self, self._ep_node[sock], exc)

    def _on_registry(self, value: tuple) -> None:
        if value[0] != "nodes":
            return
        with self._lock:
            self._last_head = time.monotonic()
            answered(self, value)
            for nid in self._update_nodes(value[1]):
                self._node_died(nid, "was declared dead (no heartbeat reached the head for "
                                     f"{self.timeout:g} s, or the head lists it no more)")
                rec = self.nodes_seen[nid]
                if rec["Alive"] and nid not in self._eps:  # came back: a new incarnation
                    self._connect_node(nid, rec["NodeManagerAddress"])
            self._registry_seq += 1
            self._cv.notify_all()

    def _on_node(self, ep: Endpoint, nid: str, value: tuple) -> None:
        kind = value[0]
        sends = []
        with self._lock:
            if kind == "done":
                releases = []
                for tid, what, payload in value[1]:
                    if tid in self.returns.tasks:  # num_returns != 1, streams (returns.py)
                        self.returns.done_locked(nid, tid, what, payload, releases)
                        continue
                    task = self.inflight.pop(tid, None)
                    self._due.extend(self.borrows.task_ended(tid))
                    if task is not None:  # nid ran it; task.node is where we last knew it
                        self._used[task.node] -= task.demand.get("CPU", 0.0)
                        self._count[task.node] -= 1
                        if what == "stored" or self._lineage.deps:
                            self._lineage.done(tid, what, task, tid not in self._dropped)
                    if tid in self._dropped:
                        self._dropped.discard(tid)
                        if what == "stored":
                            releases.append(tid)
                        continue
                    if what == "value":
                        self.results[tid] = ("value", payload)
                    elif what == "stored":
                        self.results[tid] = ("stored", nid, payload)
                    else:
                        self.results[tid] = ("error", payload)
                if releases:
                    sends.append(("release", releases))
            elif kind == "output":  # what the node's workers printed (node.py)
                print_output(value[1])
            elif kind == "forgot":  # dropped while the head did not hear us (liveness.py)
                forgot(self, nid, value[1], value[2])
            elif kind == "moved":  # stolen by another node (stealing.py)
                self._moved(value[1], value[2])
                self.returns.moved_locked(value[1], value[2])
            elif kind == "items":  # a generator's items (returns.py)
                releases = []
                self.returns.items_locked(nid, value[1], releases)
                if releases:
                    sends.append(("release", releases))
            elif kind == "meta":
                _, tid, sizes = value
                f = self._fetches.get(tid)
                if f is not None:
                    if sizes is None:
                        del self._fetches[tid]
                        self.results[tid] = ("error", ObjectLostError(
                            f"object {tid.hex()} is no longer on node {nid[:12]}"))
                    else:
                        f["sizes"] = sizes
                        f["bufs"] = [bytearray(s) for s in sizes]
                        f["todo"] = [(i, off, min(CLUSTER_CHUNK_BYTES, s - off))
                                     for i, s in enumerate(sizes)
                                     for off in range(0, s, CLUSTER_CHUNK_BYTES)]
                        f["todo"].reverse()
                        f["left"] = len(f["todo"])
                        for _ in range(min(CLUSTER_CHUNKS_IN_FLIGHT, len(f["todo"]))):
                            sends.append(("chunk", tid, *f["todo"].pop()))
                        if f["left"] == 0:
                            self._fetched(tid, nid, f)
            elif kind == "chunk":
                _, tid, frame, offset, data = value
                f = self._fetches.get(tid)
                if f is not None:
                    if data is None:
                        del self._fetches[tid]
                        self.results[tid] = ("error", ObjectLostError(
                            f"object {tid.hex()} is no longer on node {nid[:12]}"))
                    else:
                        view = memoryview(data).cast("B")
                        f["bufs"][frame][offset:offset + view.nbytes] = view
                        f["left"] -= 1
                        if f["todo"]:
                            sends.append(("chunk", tid, *f["todo"].pop()))
                        if f["left"] == 0:
                            self._fetched(tid, nid, f)
            self._cv.notify_all()
        for s in sends:
            ep.send(s)

    def _moved(self, thief: str, tids: list) -> None:
        """Tasks now on ``thief``: a thief's death resubmits them.  A thief this driver
        holds for dead (or has no connection to) cannot send their results here: they run
        again elsewhere at once (the victim no longer has them), without using a retry.
        Holds the lock."""
        if thief not in self._eps:
            for tid in tids:
                task = self.inflight.get(tid)
                if task is None:
                    continue
                self._used[task.node] -= task.demand.get("CPU", 0.0)
                self._count[task.node] -= 1
                try:
                    self._enqueue(tid, task, None)
                except InfeasibleTaskError:
                    del self.inflight[tid]
                    self.results[tid] = ("error", NodeDiedError(
                        f"task {tid.hex()} was taken by node {thief[:12]}, which this driver "
                        f"holds for dead, and no other node fits it"))
            self._cv.notify_all()
            return
        for tid in tids:
            task = self.inflight.get(tid)
            if task is None or task.node == thief:
                continue
            cpu = task.demand.get("CPU", 0.0)
            self._used[task.node] -= cpu
            self._count[task.node] -= 1
            self._used[thief] += cpu
            self._count[thief] += 1
            task.node = thief

    def _fetched(self, tid: bytes, nid: str, f: dict) -> None:
        del self._fetches[tid]
        bufs = f["bufs"]
        try:
            value = pickle.loads(bufs[0], buffers=bufs[1:])
        except Exception as exc:
            self.results[tid] = ("error", RepartirError(
                f"object {tid.hex()} pulled from node {nid[:12]} could not be unpickled: "
                f"{type(exc).__name__}: {exc}"))
            return
        self.pulled_bytes += sum(f["sizes"])
        if tid in self.results:
            self.results[tid] = ("fetched", value, nid, sum(f["sizes"]))

    # ------------------------------------------------------------------ the end

