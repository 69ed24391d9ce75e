"""Which runtime client this process uses (the driver's, or the worker's own), and how to
start one when there is none yet (the driver registers its implicit ``init``: this module
sits below it, so that refs can reach a client without importing the driver).

Also what :func:`repartir.get_runtime_context` reports: the node's id (set by the driver's
``init`` and by a worker's or actor's start-up), the task running in this thread or asyncio
task (set by the executor around each call), and, in an actor's process, the actor's id and
whether this process is a restart of it."""

from __future__ import annotations

import contextvars
from typing import Any

from ..errors import RepartirError

__all__ = ["current_client", "set_client", "set_cluster", "set_inner", "set_starter",
           "client_or_start", "set_node_id", "set_actor", "running_task", "RuntimeContext",
           "JOB_ID"]

_client: Any = None
#: The cluster this process is connected to as a driver (``init(address=...)``:
#: ``repartir.cluster.client.ClusterClient``), or ``None``: tasks, ``get`` and the rest go
#: there instead of to a local node.
cluster: Any = None
#: In a worker or actor process of a cluster's node: its way to the rest of the cluster
#: (``repartir.cluster.inner.InnerCluster``), or ``None``: a task's ``.remote()`` that does
#: not fit this node, actors, ``get_actor`` and cluster refs go there.
inner: Any = None
_starter: Any = None  # () -> client: the driver's client(), which may call init()
_node_id: str | None = None  # hex, 28 bytes: the node this process belongs to
_actor_id: bytes | None = None  # in an actor's process: the actor it runs
_actor_restarted = False  # in an actor's process: a restart (not its first process)

#: The task whose function runs in this thread or asyncio task (``None``: none does).  A
#: context variable, so that threaded and async actors, and tasks nested on a worker's stack
#: while the task below waits in ``get``, each see their own.
running_task: contextvars.ContextVar[bytes | None] = contextvars.ContextVar(
    "repartir_running_task", default=None)

#: The job of a session: its driver, the only one in this version.  Ray's ``JobID`` of the
#: first driver of a cluster (4 bytes, little-endian 1: ``"01000000"``).
JOB_ID = (1).to_bytes(4, "little")


def current_client() -> Any:
    return _client


def set_client(client: Any) -> None:
    global _client
    _client = client


def set_cluster(client: Any) -> None:
    global cluster
    cluster = client


def set_inner(inner_cluster: Any) -> None:
    global inner
    inner = inner_cluster


def set_starter(starter: Any) -> None:
    global _starter
    _starter = starter


def client_or_start() -> Any:
    """This process's client; without one, the driver's implicit ``init`` starts a node."""
    if _client is not None:
        return _client
    if _starter is None:
        raise RuntimeError("repartir is not initialized: call repartir.init()")
    return _starter()


def set_node_id(node_id: str | None) -> None:
    """The hex id of the node this process runs on (``None`` once the session is shut
    down)."""
    global _node_id
    _node_id = node_id


def set_actor(actor_id: bytes, restarted: bool) -> None:
    """In an actor's process, before its constructor runs: the actor it runs, and whether
    the process is a restart of the actor (``max_restarts``)."""
    global _actor_id, _actor_restarted
    _actor_id = actor_id
    _actor_restarted = restarted


class RuntimeContext:
    """What runs where, as Ray's ``ray.runtime_context.RuntimeContext`` reports it: ids as
    hex strings, ``None`` where there is no such thing (no task runs in the driver, no actor
    outside one).  Returned by :func:`repartir.get_runtime_context`; each method reads the
    state at the time it is called (in the calling thread or asyncio task)."""

    def get_node_id(self) -> str:
        """The id of this node: 56 hex digits (28 bytes, as Ray's ``NodeID``), drawn at
        random by ``init()``; the same in the driver, its workers and actors, and
        ``repartir.nodes()[0]["NodeID"]``; a new one for every session.

        Raises:
            RepartirError: repartir is not initialized in this process (call
                ``repartir.init()`` first).
        """
        if _node_id is None or _client is None:
            raise RepartirError("repartir is not initialized: call repartir.init() before "
                                "get_runtime_context().get_node_id()")
        return _node_id

    def get_job_id(self) -> str:
        """The id of the job: 8 hex digits (4 bytes, as Ray's ``JobID``).  A session has one
        job, its driver, so this is always ``"01000000"`` in this version (Ray's id of the
        first driver of a cluster).

        Raises:
            RepartirError: repartir is not initialized in this process.
        """
        if _client is None:
            raise RepartirError("repartir is not initialized: call repartir.init() before "
                                "get_runtime_context().get_job_id()")
        return JOB_ID.hex()

    def get_task_id(self) -> str | None:
        """The id of the task or actor method call running in this thread (or asyncio
        task): 32 hex digits (16 bytes; Ray's are 24); ``None`` in the driver, in a worker
        between tasks and in an actor's constructor (Ray gives the actor creation task's
        id there).  A task and its caller see the same id:
        ``repartir.ids.task_of(ref.binary()).hex()``."""
        task_id = running_task.get()
        return task_id.hex() if task_id is not None else None

    def get_actor_id(self) -> str | None:
        """The id of the actor whose process this is: 32 hex digits (16 bytes, as Ray's
        ``ActorID``), also in its constructor; ``None`` outside an actor (driver, tasks)."""
        return _actor_id.hex() if _actor_id is not None else None

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor's process is a restart (after its process died, under
        ``max_restarts``): ``False`` in the actor's first process and outside actors."""
        return _actor_restarted

    def __repr__(self) -> str:
        return (f"RuntimeContext(task_id={self.get_task_id()}, "
                f"actor_id={self.get_actor_id()})")
