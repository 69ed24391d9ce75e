"""The driver's runtime: ``init``, ``shutdown`` and the process-wide client.

``init()`` starts a :class:`~repartir.runtime.node.Node` (shared memory + workers) and binds
a :class:`~repartir.runtime.core.CoreClient` to slot 0 of it.  A background *pump* thread
polls the driver's inbox every few milliseconds, so completions, dropped refs and the
backlog are handled even while the user's code does not call ``get``; the thread that calls
``get`` polls on its own (and spins), so a round trip does not wait for the pump.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import threading

from ..config import resolve
from ..errors import AlreadyInitializedError, RepartirError
from ..store.arena import ArenaStatistics
from . import context
from .core import CoreClient
from .node import Node

__all__ = ["init", "shutdown", "is_initialized", "client", "store_statistics",
           "StoreStatistics", "worker_pids"]

_lock = threading.RLock()
_node: Node | None = None
_client: CoreClient | None = None
_pump: threading.Thread | None = None
_pump_stop = threading.Event()
_pump_wake = threading.Event()  # wake_pump(): poll now, not after the idle back-off
_owner_pid = 0


@dataclasses.dataclass(frozen=True)
class StoreStatistics:
    """A snapshot of the node's object store, as seen by this process.

    Attributes:
        capacity: arena bytes for objects.
        used_bytes: arena bytes held by live blocks (objects, task specs, functions).
        num_blocks: live arena blocks.
        num_objects: objects in this process's object table (inline and in the arena).
        tasks_in_flight: tasks this process submitted that have not completed.
    """

    capacity: int
    used_bytes: int
    num_blocks: int
    num_objects: int
    tasks_in_flight: int
    arena: ArenaStatistics


def is_initialized() -> bool:
    """Whether this process is connected to a node (``init`` ran and ``shutdown`` did not)."""
    return _client is not None and _owner_pid == os.getpid()


def init(address: str | None = None, *, num_cpus: int | None = None,
         num_gpus: float | None = None, resources: dict | None = None,
         object_store_memory: int | None = None, memory: int | None = None,
         ignore_reinit_error: bool = False) -> dict:
    """Start the local node: ``num_cpus`` worker processes and a shared-memory object store.

    Args:
        address: ``None`` (default) starts an embedded local node.  Joining a cluster
            (``"auto"`` or ``"HOST:PORT"``) is not available yet and raises.
        num_cpus: the node's CPUs, one worker process each; default ``os.cpu_count()``
            (``REPARTIR_NUM_CPUS``).  ``0``: a driver that only submits, as in Ray: tasks
            and actors asking for CPU raise ``InfeasibleTaskError`` at ``.remote()`` (a
            cluster, not available yet, would run them on other nodes); those of
            ``num_cpus=0`` run on workers started on demand (at most ``max_workers``, 2).
        num_gpus: GPUs offered to tasks asking ``num_gpus=``; default 0.
        memory: bytes of the ``memory`` resource that tasks and actors reserve with
            ``memory=`` (for scheduling only, as in Ray: nothing limits what a process
            uses); default the memory available now less ``object_store_memory``
            (``REPARTIR_MEMORY``).  Ray's ``ray.init`` takes it as ``_memory``.
        resources: custom resources, e.g. ``{"licence": 2}`` (at most 6 names).
        object_store_memory: arena bytes; default 30 % of RAM, at most 80 % of the free
            space of ``/dev/shm`` (``REPARTIR_OBJECT_STORE_MEMORY``).
        ignore_reinit_error: return quietly when already initialised.

    Returns:
        a dict describing the node (``session``, ``session_dir``, ``num_cpus``,
        ``object_store_memory``).

    Raises:
        RepartirError: already initialised (and ``ignore_reinit_error`` is false).
        ObjectStoreFullError: ``/dev/shm`` has less room than the store asks for.
        ValueError: a setting is out of range (``num_cpus < 0``, ``memory < 0``, ...), or
            ``REPARTIR_SPILL_DIR`` is not a writable directory.
    """
    global _node, _client, _pump, _owner_pid
    with _lock:
        if is_initialized():
            if ignore_reinit_error:
                return _info()
            raise AlreadyInitializedError(
                "repartir.init() was already called in this process; call "
                "repartir.shutdown() first, or pass ignore_reinit_error=True.")
        if address is not None:
            raise RepartirError(
                f"init(address={address!r}): joining a cluster is not available in this "
                f"version; call init() without address= to start a local node.")
        config = resolve(num_cpus, object_store_memory, num_gpus, resources, memory)
        node = Node(config)
        try:
            node.start()
        except BaseException:
            node.stop(timeout=0.5)  # nothing of a failed start stays behind
            raise
        client = CoreClient(node.segment, node.arena, 0, config, node.session)
        client.node = node
        client.actor_ends = node.actor_ends  # the node queues, the client's poll ends them
        client.batch_submits = True
        _node, _client, _owner_pid = node, client, os.getpid()
        context.set_client(client)
        context.set_node_id(node.node_id)
        _pump_stop.clear()
        _pump_wake.clear()
        _pump = threading.Thread(target=_pump_loop, args=(client,), daemon=True,
                                 name="repartir-pump")
        _pump.start()
        return _info()


def _info() -> dict:
    assert _node is not None
    return {"session": _node.session, "session_dir": _node.session_dir,
            "num_cpus": _node.config.num_cpus,
            "object_store_memory": _node.config.object_store_memory}


def _pump_loop(client: CoreClient) -> None:
    idle = 0.002
    while True:
        _pump_wake.wait(idle)
        if _pump_stop.is_set():
            return
        _pump_wake.clear()
        try:
            n = client.poll()
        except Exception:  # never let the pump die; the next get() reports real problems
            n = 0
        busy = n or client.tasks or client.backlog
        idle = 0.002 if busy else min(idle * 2, 0.05)


def wake_pump() -> None:
    """Make the pump thread poll the node now.  It polls every 2 ms while work is in flight
    and backs off to 50 ms when idle, so the completion of a task submitted after a quiet
    spell would reach its ``ref.future()`` callbacks up to 50 ms late; a caller that waits
    on such callbacks (a cluster node daemon) wakes it after submitting."""
    _pump_wake.set()


def client() -> CoreClient:
    """This process's client, starting a local node first if needed (implicit ``init``)."""
    c = context._client
    if c is not None:
        return c
    if context.cluster is not None:
        raise RepartirError(
            "this driver is connected to a cluster (init(address=...)), where this version "
            "runs tasks, actors, get, wait and put only: cancel() and the like need a local "
            "node (init() without address=); see docs/cluster.md")
    with _lock:
        if not is_initialized():
            init()
        return _client  # type: ignore[return-value]


context.set_starter(client)


def shutdown() -> None:
    """Stop the workers, free the object store and remove the session.  Refs and views made
    before stay valid Python objects, but ``get`` on the refs raises.  Safe to call twice."""
    global _node, _client, _pump
    with _lock:
        if _node is None or _owner_pid != os.getpid():
            _node = _client = None
            return
        _pump_stop.set()
        _pump_wake.set()
        if _pump is not None:
            _pump.join(1.0)
        pump_left = _pump is not None and _pump.is_alive()
        node, c = _node, _client
        _node = _client = _pump = None
        context.set_client(None)
        context.set_node_id(None)
        if c is not None:
            c.closed = True
        node.stop(unmap=not pump_left)


def store_statistics() -> StoreStatistics:
    """Statistics of the object store (for monitoring and tests)."""
    c = client()
    c.poll()
    a = c.arena.statistics()
    return StoreStatistics(a.capacity, a.used_bytes, a.num_blocks, c.num_objects(),
                           c.tasks_in_flight(), a)


def worker_pids() -> list[int]:
    """Process ids of the node's live workers."""
    return _node.worker_pids() if _node is not None else []


def arena_bytes_by_owner() -> dict[int, int]:
    """Arena bytes of live objects per owner: ``"driver"``, ``"workers"`` (live worker and
    actor processes: the function blobs they exported, results not yet claimed) and
    ``"other"`` (slots of no live process: a leak).  For leak checks."""
    c = client()
    c.poll()
    live = set(_node.process_slots()) if _node is not None else set()
    out = {"driver": 0, "workers": 0, "other": 0}
    for slot, n in c.arena.bytes_by_owner().items():
        out["driver" if slot == c.slot else "workers" if slot in live else "other"] += n
    return out


def _after_fork_in_child() -> None:
    """A forked child shares nothing of the parent's node: it must call init() itself.  It
    closes its copy of the pipe the workers watch, or they would outlive the driver as long
    as the child lives."""
    global _node, _client, _pump
    if _node is not None and _node.life_w >= 0:
        try:
            os.close(_node.life_w)
        except OSError:
            pass
    _node = _client = _pump = None
    context.set_client(None)
    context.set_node_id(None)


atexit.register(shutdown)
os.register_at_fork(after_in_child=_after_fork_in_child)
