"""Objects moving node to node (docs/cluster.md, "Objects between nodes"): the half of a
node daemon that serves the objects it keeps to other nodes, and the half that pulls, for a
task sent here, an argument kept on another node.

::

    node B (keeps the result)                       node C (runs the task)
    ┌──────────────────────────┐                    ┌──────────────────────────────────┐
    │ BlobServer               │ <── bmeta oid ───  │ Puller                           │
    │  the object's blob in    │ ── size ─────────> │  allocates the blob's arena block│
    │  B's arena (a pinned     │ <── bchunk off n ─ │  asks CLUSTER_CHUNKS_IN_FLIGHT   │
    │  read-only view)         │ ── bytes ────────> │  chunks at once, each written    │
    └──────────────────────────┘   (zero-copy       │  where it belongs in the block;  │
                                    frames, signed) │  the whole block becomes a local │
                                                    │  ref, cached while tasks use it  │
                                                    └──────────────────────────────────┘

What travels is the object's *blob*: the bytes repartir's object store keeps
(:class:`repartir.serialization.Serialized`: a small header, the pickle, the out-of-band
buffers), sent straight from B's arena (a read-only view, pinned while a frame refers to it:
no re-pickling, no copy on B) and received into C's arena block: ZeroMQ receives each
chunk's frame, which is copied into its place in the block a piece at a time while the copy
is hashed, and the chunk's MAC is checked over the bytes in the block (:meth:`Puller._place`,
``Endpoint.recv(place=)``).  The block then becomes an object of C's local node, owned by
the daemon, exactly as if ``put`` had stored it, so the tasks that take it read it from C's
arena without another copy.

**Who holds what.**  A driver that sends node C a task whose argument is a result kept on
B passes a :class:`RemoteArg` (the object's id, B's node id and address, its size).  C pulls
it once and keeps the copy in its cache (:attr:`Puller.cache`) while tasks of C that took it
have not finished: the last one to finish drops the cache's ref, and C's local node frees
the block.  A second task that takes it while the copy is cached uses it without pulling;
tasks that take it while it is being pulled wait for that pull.  B keeps the object until the
driver releases it, and the driver releases it only when its own ref is gone *and* every task
that borrowed it has finished (:class:`repartir.cluster.borrows.Borrows`), so an object is
never freed on B while a node still pulls it, and none outlives its last reference.

Errors: a pull whose peer is unknown, gone, or no longer keeps the object fails the tasks
waiting for it with :class:`~repartir.errors.ObjectLostError`; a full arena makes the copy
land through ``put`` (which spills) instead of straight into the arena.
"""

from __future__ import annotations

import pickle
import sys
import time
from typing import Any, Callable

from ..config import (CLUSTER_CHUNK_BYTES, CLUSTER_CHUNKS_IN_FLIGHT, CLUSTER_PULL_TIMEOUT_S)
from ..errors import ObjectLostError, ObjectStoreFullError, RepartirError, WireTimeoutError
from ..ids import new_object_id
from ..runtime import driver as local_driver
from ..runtime.protocol import ARENA, INLINE, in_arena, inline
from ..serialization import deserialize, serialize
from .borrows import RemoteArg
from .sockets import Endpoint
from .state import tcp

__all__ = ["BlobServer", "Puller", "BLOB_KINDS"]

#: Message kinds of the node-to-node pull (``("bmeta", oid)`` answered with ``("bmeta",
#: oid, size | None)``; ``("bchunk", oid, offset, length)`` answered with ``("bchunk", oid,
#: offset, bytes | None)``).
BLOB_KINDS = ("bmeta", "bchunk")


class BlobServer:
    """Serves the blobs of the objects a node keeps (its ``stored`` results) to peers.

    Args:
        stored: the daemon's table ``{object id: [local ref, frames]}`` (read only here).
        send: ``send(value, peer)`` on the daemon's ROUTER.

    Attributes:
        served_bytes: payload bytes sent in chunks so far (a counter for the registry).
    """

    def __init__(self, stored: dict, send: Callable[[Any, bytes], None]) -> None:
        self._stored = stored
        self._send = send
        self._blobs: dict[bytes, memoryview] = {}  # object id -> its blob (pinned view)
        self.served_bytes = 0

    def _blob(self, oid: bytes) -> memoryview | None:
        view = self._blobs.get(oid)
        if view is not None:
            return view
        entry = self._stored.get(oid)
        if entry is None or entry[0] is None:
            return None
        ref = entry[0]
        client = local_driver.client()
        loc = client.location_for_export(ref._id)
        if loc is not None and loc[0] == ARENA and not client.arena.spilled(loc[1]) \
                and client.arena.hold_if_generation(loc[1], loc[3]):
            view = client.arena.view(loc[1], loc[2])  # holds the block while it lives
            client.arena.let_go(loc[1])  # the view's hold is enough now
        elif loc is not None and loc[0] == INLINE:
            view = memoryview(loc[1])
        else:  # spilled: the value (from the daemon's frames), serialized again
            frames = entry[1]
            value = pickle.loads(frames[0], buffers=frames[1:])
            view = memoryview(serialize(value).to_bytes())
        self._blobs[oid] = view
        return view

    def forget(self, oid: bytes) -> None:
        """The object was released: drop its view (frames still queued keep their pin)."""
        self._blobs.pop(oid, None)

    def on_message(self, peer: bytes, value: tuple) -> None:
        kind, oid = value[0], value[1]
        try:
            view = self._blob(oid)
        except Exception as exc:  # the object failed or vanished meanwhile
            print(f"cannot serve object {oid.hex()}: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
            view = None
        if kind == "bmeta":
            self._send(("bmeta", oid, None if view is None else view.nbytes), peer)
            return
        offset, length = value[2], value[3]
        if view is None:
            self._send(("bchunk", oid, offset, None), peer)
            return
        piece = view[offset:offset + length]
        self.served_bytes += piece.nbytes
        self._send(("bchunk", oid, offset, pickle.PickleBuffer(piece)), peer)


class _Pull:
    """One object being pulled: where from, where to, what is left, who waits."""

    __slots__ = ("oid", "node", "size", "dst", "off", "buf", "todo", "left", "waiting",
                 "heard", "asked")

    def __init__(self, oid: bytes, node: str) -> None:
        self.oid, self.node = oid, node
        self.size = -1
        self.dst: memoryview | None = None
        self.off = -1  # the arena block's payload offset (-1: a bytearray, see buf)
        self.buf: bytearray | None = None
        self.todo: list[tuple[int, int]] = []  # (offset, length) of chunks to ask for
        self.asked: dict[int, int] = {}  # offset -> length of the chunks asked for
        self.left = 0
        self.waiting: list[tuple] = []  # (peer, tid, rf, args, kwargs)
        self.heard = time.monotonic()  # when the peer last answered


class Puller:
    """Pulls the :class:`RemoteArg` arguments of this node's tasks from the nodes that keep
    them, and caches the copies while tasks use them (see the module's docstring).

    Args:
        node_id: this node's id (an argument kept here is taken from ``stored``).
        stored: the daemon's table of objects kept here.
        token: the cluster token for the endpoints to peers.
        on_endpoint: called with each new peer endpoint (to register it in a poller).
        start: ``start(peer, tid, rf, args, kwargs)`` submits a task whose arguments are
            now all here; it raises what ``.remote()`` raises.
        fail: ``fail(peer, tid, exc)`` reports a task that cannot run.
        peer_keywords: ``peer_keywords(arg)`` gives the extra ``Endpoint.connect``
            keywords for the node that keeps the :class:`RemoteArg` ``arg`` (its CurveZMQ
            server key in an encrypted cluster); default none.

    Attributes:
        cache: ``{object id: [local ref, tasks using it]}``.
        pulled_bytes: blob bytes received from peers so far (a counter for the registry).
    """

    def __init__(self, node_id: str, stored: dict, token: Any,
                 on_endpoint: Callable[[Endpoint], None], start: Callable, fail: Callable,
                 peer_keywords: Callable[[RemoteArg], dict] = lambda arg: {}) -> None:
        self.node_id = node_id
        self._stored = stored
        self._token = token
        self._peer_keywords = peer_keywords
        self._on_endpoint = on_endpoint
        self._start = start
        self._fail = fail
        self.peers: dict[str, Endpoint] = {}  # node id -> DEALER to it
        self.peer_of: dict[Any, str] = {}  # socket -> node id
        self.cache: dict[bytes, list] = {}
        self.pulls: dict[bytes, _Pull] = {}
        self.uses: dict[bytes, list[bytes]] = {}  # task id -> cached objects it uses
        self.pulled_bytes = 0
        # node id -> the chunks asked of it, in the order asked (its answers come in that
        # order: one connection, served in turn), {(object id, offset): None}
        self._expected: dict[str, dict[tuple[bytes, int], None]] = {}
        self._placed: tuple[bytes, int] | None = None  # the chunk received in place

    # ------------------------------------------------------------------ tasks

    def submit(self, peer: bytes, tid: bytes, rf: Any, args: list, kwargs: dict) -> None:
        """Run the task now if every :class:`RemoteArg` of it is here, else when the pulls
        it needs end.  Raises what ``start`` raises."""
        missing = [a for a in (*args, *kwargs.values()) if type(a) is RemoteArg
                   and a.node != self.node_id and a.object_id not in self.cache]
        if not missing:
            self._run(peer, tid, rf, args, kwargs)
            return
        task = (peer, tid, rf, args, kwargs)
        first = missing[0]
        pull = self.pulls.get(first.object_id)
        if pull is None:
            pull = self._begin(first)
        pull.waiting.append(task)

    def _run(self, peer: bytes, tid: bytes, rf: Any, args: list, kwargs: dict) -> None:
        used: list[bytes] = []

        def local(a: Any) -> Any:
            if type(a) is not RemoteArg:
                return a
            if a.node == self.node_id:  # kept here after all (a retry placed it here)
                entry = self._stored.get(a.object_id)
                if entry is None or entry[0] is None:
                    raise ObjectLostError(f"object {a.object_id.hex()} is no longer on node "
                                          f"{self.node_id[:12]} (released)")
                return entry[0]
            entry = self.cache[a.object_id]
            entry[1] += 1
            used.append(a.object_id)
            return entry[0]

        try:
            args = [local(a) for a in args]
            kwargs = {k: local(v) for k, v in kwargs.items()}
            self._start(peer, tid, rf, args, kwargs)
        except BaseException:
            for oid in used:
                self._unuse(oid)
            raise
        if used:
            self.uses[tid] = used

    def task_done(self, tid: bytes) -> None:
        """The task ``tid`` of this node finished: its uses of cached copies end (the last
        use of a copy drops it from the cache, and this node's store frees it)."""
        for oid in self.uses.pop(tid, ()):
            self._unuse(oid)

    def _unuse(self, oid: bytes) -> None:
        entry = self.cache.get(oid)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self.cache[oid]

    # ------------------------------------------------------------------ pulling

    def _peer(self, arg: RemoteArg) -> Endpoint:
        ep = self.peers.get(arg.node)
        if ep is None:
            ep = Endpoint.connect(tcp(arg.address), token=self._token,
                                  **self._peer_keywords(arg))
            self.peers[arg.node] = ep
            self.peer_of[ep.socket] = arg.node
            self._on_endpoint(ep)
        return ep

    def _begin(self, arg: RemoteArg) -> _Pull:
        pull = self.pulls[arg.object_id] = _Pull(arg.object_id, arg.node)
        self._peer(arg).send(("bmeta", arg.object_id))
        return pull

    def on_message(self, node: str, value: tuple) -> None:
        """A message from peer ``node`` (its DEALER endpoint reported it)."""
        placed, self._placed = self._placed, None
        kind, oid = value[0], value[1]
        pull = self.pulls.get(oid)
        if pull is None or pull.node != node:
            return
        pull.heard = time.monotonic()
        if kind == "bmeta":
            if value[2] is None:
                self._lost(pull, "it no longer keeps it (released, or lost)")
                return
            self._allocate(pull, value[2])
            for _ in range(min(CLUSTER_CHUNKS_IN_FLIGHT, len(pull.todo))):
                self._ask(pull)
            if pull.left == 0:
                self._landed(pull)
        elif kind == "bchunk":
            offset, data = value[2], value[3]
            if data is None:
                self._lost(pull, "it no longer keeps it (released, or lost)")
                return
            view = memoryview(data).cast("B")
            self._expected.get(node, {}).pop((oid, offset), None)
            if pull.asked.pop(offset, -1) != view.nbytes:  # not asked, or not what was asked
                self._lost(pull, f"it sent {view.nbytes} bytes at offset {offset}, which "
                                 f"this node did not ask for")
                return
            if pull.todo:  # keep the peer busy (while this chunk is copied, if it must be)
                self._ask(pull)
            if placed != (oid, offset):  # else received and verified in its place
                pull.dst[offset:offset + view.nbytes] = view  # type: ignore[index]
            self.pulled_bytes += view.nbytes
            pull.left -= 1
            if pull.left == 0:
                self._landed(pull)

    def _ask(self, pull: _Pull) -> None:
        offset, length = pull.todo.pop()
        pull.asked[offset] = length
        self._expected.setdefault(pull.node, {})[(pull.oid, offset)] = None
        self.peers[pull.node].send(("bchunk", pull.oid, offset, length))

    def _place(self, node: str, sizes: list[int]) -> dict[int, memoryview] | None:
        """Where the message now received from ``node`` should land (see
        :meth:`Endpoint.recv`'s ``place``): a chunk answer (a pickle and one frame) of the
        size of the oldest chunk asked of that node goes straight into its place in the
        pull's block, where it is copied as it is verified, saving a pass over its bytes.
        Nothing uses that place before the chunk is accepted: the block becomes an object
        only when every chunk has been.  A message that is something else after all (its
        pickle says which, once verified) is copied where it belongs, as without this."""
        self._placed = None
        expected = self._expected.get(node)
        while expected:
            oid, offset = key = next(iter(expected))
            pull = self.pulls.get(oid)
            if pull is None or pull.node != node or offset not in pull.asked:
                del expected[key]  # its pull ended (landed or lost)
                continue
            if len(sizes) != 2 or sizes[1] != pull.asked[offset] or pull.dst is None:
                return None
            self._placed = key
            return {1: pull.dst[offset:offset + sizes[1]]}
        return None

    def _allocate(self, pull: _Pull, size: int) -> None:
        pull.size = size
        client = local_driver.client()
        if size >= client.config.inline_threshold:
            try:
                pull.off = client.arena.allocate(size, client.slot)
                pull.dst = client.arena.writable(pull.off, size)
            except ObjectStoreFullError:
                pull.off = -1
        if pull.dst is None:
            pull.buf = bytearray(size)
            pull.dst = memoryview(pull.buf)
        pull.todo = [(off, min(CLUSTER_CHUNK_BYTES, size - off))
                     for off in range(0, size, CLUSTER_CHUNK_BYTES)]
        pull.todo.reverse()
        pull.left = len(pull.todo)

    def _landed(self, pull: _Pull) -> None:
        """The whole blob is here: it becomes a local object; the waiting tasks go."""
        del self.pulls[pull.oid]
        client = local_driver.client()
        try:
            if pull.off >= 0:
                loc = in_arena(pull.off, pull.size, client.arena.generation(pull.off))
            elif pull.size < client.config.inline_threshold:
                loc = inline(bytes(pull.buf))  # type: ignore[arg-type]
            else:  # the arena was full: put() spills
                loc = None
                ref = client.put(deserialize(memoryview(pull.buf)))  # type: ignore[arg-type]
            if loc is not None:
                oid = new_object_id()
                with client._lock:
                    client.objects.own(oid, loc, 0, None)
                    ref = client.make_ref(oid)
        except Exception as exc:
            self._lost(pull, f"storing the copy failed: {type(exc).__name__}: {exc}",
                       forget=False)
            return
        pull.dst = pull.buf = None
        self.cache[pull.oid] = [ref, 0]
        self._resume(pull.waiting)

    def _resume(self, tasks: list) -> None:
        for peer, tid, rf, args, kwargs in tasks:
            try:
                self.submit(peer, tid, rf, args, kwargs)
            except BaseException as exc:
                self._fail(peer, tid, exc)

    def _lost(self, pull: _Pull, why: str, forget: bool = True) -> None:
        if forget:
            self.pulls.pop(pull.oid, None)
        if pull.off >= 0:
            local_driver.client().arena.release(pull.off)
        pull.dst = pull.buf = None
        err = ObjectLostError(f"object {pull.oid.hex()} could not be pulled from node "
                              f"{pull.node[:12]}: {why}")
        for peer, tid, *_ in pull.waiting:
            self._fail(peer, tid, err)

    def check(self) -> None:
        """Fail the pulls that made no progress for ``CLUSTER_PULL_TIMEOUT_S`` (their peer
        is gone or cut off); called now and then by the daemon's loop."""
        now = time.monotonic()
        for pull in list(self.pulls.values()):
            if now - pull.heard > CLUSTER_PULL_TIMEOUT_S:
                self._lost(pull, f"no answer within {CLUSTER_PULL_TIMEOUT_S:g} s "
                                 f"(CLUSTER_PULL_TIMEOUT_S): is it alive and reachable?")

    def drain(self, sock: Any, limit: int = 1000) -> None:
        """Receive what the peer endpoint of ``sock`` has (verified messages only)."""
        node = self.peer_of.get(sock)
        ep = self.peers.get(node) if node is not None else None
        if ep is None:
            return
        for _ in range(limit):
            if not ep.poll(0):
                return
            try:
                msg = ep.recv(timeout=1.0, place=lambda sizes: self._place(node, sizes))
            except (WireTimeoutError, RepartirError):
                return
            try:
                self.on_message(node, msg.value)  # type: ignore[arg-type]
            except Exception as exc:  # a malformed answer from a token holder: its pull fails
                print(f"dropped a message from node {node[:12]}: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)
                pull = self.pulls.get(msg.value[1]) if isinstance(msg.value, tuple) \
                    and len(msg.value) > 1 and isinstance(msg.value[1], bytes) else None
                if pull is not None:
                    self._lost(pull, f"its answer could not be used ({exc})")

    def close(self) -> None:
        for ep in self.peers.values():
            ep.close()
        self.peers.clear()
        self.cache.clear()

    def nodes_dead(self, dead: set[str]) -> None:
        """Fail at once the pulls from the nodes the head declared dead (``dead``: their
        ids), rather than after ``CLUSTER_PULL_TIMEOUT_S``."""
        for pull in [p for p in self.pulls.values() if p.node in dead]:
            self._lost(pull, "the head declared it dead (no heartbeat for "
                             "REPARTIR_NODE_TIMEOUT)")
