"""repartir: parallel and distributed computing for Python.

Ray's programming model -- ``@repartir.remote`` tasks, ``ObjectRef`` futures,
``repartir.get`` -- on a shared-memory object store and a work-stealing scheduler::

    import repartir

    @repartir.remote
    def square(x):
        return x * x

    print(repartir.get([square.remote(i) for i in range(4)]))   # [0, 1, 4, 9]
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from . import errors
from .config import resource_names
from .errors import (ActorDiedError, ActorExit, DeviceError, GetTimeoutError, InfeasibleTaskError,
                     ObjectLostError, ObjectStoreFullError, RepartirError, RepartirSystemError,
                     SerializationError, TaskCancelledError, TaskError, TaskInterrupted,
                     TaskTimeoutError, WorkerCrashedError)
from .runtime import context as _context
from .runtime import driver as _driver
from .cluster import client as _cluster
from .cluster import inner as _inner
from .runtime.objectref import ObjectRef
from .runtime.actor import ActorClass, ActorHandle, method
from .runtime.actor import get_actor as _get_actor, kill_actor as _kill_actor
from .runtime.remote_function import RemoteFunction
from .runtime.streaming import DynamicObjectRefGenerator, ObjectRefGenerator
from .runtime.context import RuntimeContext
from . import actor  # repartir.actor.exit_actor, as Ray's ray.actor

__version__ = "0.1.0"

__all__ = [
    "init",
    "shutdown",
    "is_initialized",
    "remote",
    "get",
    "wait",
    "put",
    "cancel",
    "kill",
    "get_actor",
    "method",
    "ObjectRef",
    "ObjectRefGenerator",
    "DynamicObjectRefGenerator",
    "actor",
    "ActorClass",
    "ActorHandle",
    "RemoteFunction",
    "nodes",
    "get_runtime_context",
    "RuntimeContext",
    "cluster_resources",
    "available_resources",
    "errors",
    "RepartirError",
    "TaskError",
    "SerializationError",
    "GetTimeoutError",
    "WorkerCrashedError",
    "ObjectStoreFullError",
    "ObjectLostError",
    "TaskCancelledError",
    "TaskInterrupted",
    "TaskTimeoutError",
    "InfeasibleTaskError",
    "ActorDiedError",
    "ActorExit",
    "RepartirSystemError",
    "DeviceError",
]


def init(address: str | None = None, *, num_cpus: int | None = None,
         num_gpus: float | None = None, resources: dict | None = None,
         object_store_memory: int | None = None, memory: int | None = None,
         ignore_reinit_error: bool = False) -> dict:
    """Start the embedded local node, or connect to a cluster.

    Args:
        address: ``None`` (and no ``REPARTIR_ADDRESS``): start an embedded local node, as
            described in :func:`repartir.runtime.driver.init` (no sockets).  ``"auto"``: the
            cluster of ``REPARTIR_ADDRESS``, else the head started on this machine by
            ``repartir start --head``; ``"HOST:PORT"``: that head.  A driver connected to a
            cluster starts no node of its own (docs/cluster.md); the cluster token comes
            from ``REPARTIR_TOKEN`` or the token file.
        num_cpus, num_gpus, resources, object_store_memory, memory: the local node's
            settings (see :func:`repartir.runtime.driver.init`); not allowed with an
            address (the nodes have theirs), as in Ray.
        ignore_reinit_error: return quietly when already initialised.

    Returns:
        a dict describing the node (``session``, ``session_dir``, ``num_cpus``,
        ``object_store_memory``), or for a cluster ``{"address": "HOST:PORT", "nodes": n}``.

    Raises:
        RepartirError: already initialised (``AlreadyInitializedError``, also for an
            ``init()`` without an address while connected to a cluster); no cluster found
            for ``"auto"``; nothing listens at the address (told within 5 s); the head
            does not answer.
        TokenError: the head refused this driver's token.
        ValueError: a setting out of range, a node setting given with an address, or an
            address that is not ``HOST:PORT`` (``http://...``, ``ray://...``).
    """
    if address is None and os.environ.get("REPARTIR_ADDRESS", "").strip():
        address = "auto"
    if address is None and _cluster.active() is None:  # (connected: refused below)
        return _driver.init(None, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                            object_store_memory=object_store_memory, memory=memory,
                            ignore_reinit_error=ignore_reinit_error)
    if is_initialized():
        if ignore_reinit_error:
            c = _cluster.active()
            return {"address": c.address, "nodes": len(c.nodes_seen)} if c else {}
        raise errors.AlreadyInitializedError(
            "repartir.init() was already called in this process; call repartir.shutdown() "
            "first, or pass ignore_reinit_error=True.")
    given = [n for n, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus),
                            ("resources", resources), ("memory", memory),
                            ("object_store_memory", object_store_memory)) if v is not None]
    if given:
        raise ValueError(f"init(address=...) connects to a cluster whose nodes have their own "
                         f"resources: leave out {', '.join(given)} (give them to `repartir "
                         f"start` on each node instead)")
    c = _cluster.connect(address)
    return {"address": c.address, "nodes": sum(r["Alive"] for r in c.nodes_seen.values())}


def is_initialized() -> bool:
    """Whether this process runs a local node or is connected to a cluster."""
    return _cluster.active() is not None or _driver.is_initialized()


def shutdown() -> None:
    """Disconnect from the cluster (what this driver kept on its nodes is released), or stop
    the local node: see :func:`repartir.runtime.driver.shutdown`.  Safe to call twice."""
    _cluster.disconnect()
    _driver.shutdown()


def remote(*args: Any, **options: Any):
    """Make a function remote: ``@remote`` or ``@remote(num_returns=2, max_retries=1)``.

    Options (Ray's names where Ray has them):

    * ``num_returns`` (default 1; for a generator function ``"streaming"``): objects the
      task returns.  A generator function streams its items (an ``ObjectRefGenerator``);
      with an int N it yields N items, one per ref; with ``"dynamic"`` the task returns one
      ref whose value is a ``DynamicObjectRefGenerator`` of its items' refs (as in Ray).
    * ``max_retries`` (default 3): re-runs when the worker process dies (-1: for ever).
    * ``retry_exceptions`` (default ``False``): also re-run on an exception -- ``True`` or a
      list of exception types.
    * ``num_cpus`` (default 1, fractions allowed), ``num_gpus`` (default 0), ``resources``
      (custom, e.g. ``{"licence": 1}``): what the task reserves while it runs.  A request
      no node can satisfy raises ``InfeasibleTaskError`` at ``.remote()``.
    * ``memory`` (bytes, default 0): reserved while the task runs, for scheduling only (as
      in Ray: nothing limits what the task uses).
    * ``max_calls`` (default 0: no limit): a worker process that has run this function this
      many times exits once the call is done, and the node replaces it (for functions that
      leak memory or hold native resources).  Only in ``@remote``, not ``.options()``, as
      in Ray.  Unlike Ray, the default is 0 for GPU tasks too.
    * ``num_returns=0``: ``.remote()`` returns ``None``; the task runs, and an error it
      ends with is logged (logger ``repartir``) instead of being lost.
    * ``priority`` (``"high"``, ``"normal"`` -- the default -- or ``"low"``): higher
      priority tasks are taken first on a node.
    * ``timeout`` (seconds, default none): a task running longer is stopped and ``get``
      raises ``TaskTimeoutError``.

    On a class, makes an actor class (options: ``num_cpus`` -- default 0 --, ``num_gpus``,
    ``memory``, ``resources``, ``name``, ``namespace``, ``lifetime``, ``get_if_exists``,
    ``max_restarts``, ``max_task_retries``, ``max_concurrency``): see
    :mod:`repartir.runtime.actor`.

    Raises:
        TypeError: applied to something that is neither a function nor a class, or written
            ``@remote()`` with empty parentheses (refused, as in Ray: write ``@remote``).
        ValueError: an unknown option or a value out of range; an ``async def`` function
            (tasks cannot run coroutines: use an actor, or ``asyncio.run`` inside a task).
    """
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("use @remote or @remote(option=value, ...)")
    if not options:
        raise TypeError(
            "@remote() with empty parentheses is not accepted (as in Ray): write @remote "
            "without parentheses, or give options, e.g. @remote(num_cpus=2) or "
            "@remote(num_returns=2)")
    return lambda fn: _make_remote(fn, options)


def _make_remote(obj: Any, options: dict):
    if isinstance(obj, type):
        return ActorClass(obj, options)
    if not callable(obj):
        raise TypeError(f"@remote needs a function, got {type(obj).__qualname__}")
    return RemoteFunction(obj, options)


def _refs(obj: Any, what: str) -> tuple[list[ObjectRef], bool]:
    if isinstance(obj, ObjectRef):
        return [obj], True
    if isinstance(obj, (list, tuple)):
        for r in obj:
            if not isinstance(r, ObjectRef):
                raise TypeError(f"{what} takes ObjectRefs, got an element of type "
                                f"{type(r).__qualname__}")
        return list(obj), False
    raise TypeError(f"{what} takes an ObjectRef or a list of them, got {type(obj).__qualname__}")


def get(object_refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """Wait for the values of ``object_refs`` (one ref, or a list: order kept).

    numpy arrays (and Arrow buffers) come back as zero-copy read-only views of the object
    store; they stay valid as long as they are referenced, even after the ref is gone.

    Raises:
        ValueError: ``timeout`` is negative.
        GetTimeoutError: ``timeout`` seconds passed first (also a ``TimeoutError``).
        TaskError: the task raised; the error is also an instance of the task's exception
            type, with the remote traceback attached.
        WorkerCrashedError: the task's worker died more often than ``max_retries``.
    """
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout}")
    if type(object_refs) is ObjectRef:
        client = object_refs._client
        if client is not None and client is _context._client:
            return client.get_one(object_refs, timeout)
    refs, single = _refs(object_refs, "get()")
    cluster = _context.cluster
    if cluster is not None:
        values = cluster.get(refs, timeout)
        return values[0] if single else values
    if _context.inner is not None:  # a task on a cluster's node: cluster refs among them?
        values = _inner.get(refs, timeout)
        if values is not None:
            return values[0] if single else values
    values = _driver.client().get(refs, timeout)
    return values[0] if single else values


def wait(object_refs: Sequence[ObjectRef], *, num_returns: int = 1,
         timeout: float | None = None, fetch_local: bool = True
         ) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Wait until ``num_returns`` of ``object_refs`` are ready or ``timeout`` seconds pass.

    Returns:
        ``(ready, not_ready)``, each in the order of ``object_refs``; ``ready`` holds at
        most ``num_returns`` refs.

    Raises:
        ValueError: ``num_returns`` is not between 1 and ``len(object_refs)``, or a ref is
            given twice.
    """
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout}")
    refs, single = _refs(object_refs, "wait()")
    if single:
        raise TypeError("wait() takes a list of ObjectRefs")
    if len(set(refs)) != len(refs):
        raise ValueError("wait() got the same ObjectRef twice")
    if not refs:
        return [], []
    if not 1 <= num_returns <= len(refs):
        raise ValueError(f"num_returns must be between 1 and {len(refs)}, got {num_returns}")
    cluster = _context.cluster
    client = cluster if cluster is not None else _driver.client()
    ready_mask = _inner.wait(refs, num_returns, timeout) if _context.inner is not None \
        else None
    if ready_mask is None:
        ready_mask = client.wait(refs, num_returns, timeout)
    ready, not_ready = [], []
    for r, ok in zip(refs, ready_mask):
        (ready if ok and len(ready) < num_returns else not_ready).append(r)
    return ready, not_ready


def put(value: Any) -> ObjectRef:
    """Store ``value`` once in the object store; returns its ``ObjectRef``.  When the store
    is full, older objects of this process that nobody uses, or else ``value`` itself, spill
    to disk (``docs/architecture.md``, "Spilling").

    Raises:
        TypeError: ``value`` is an ObjectRef.
        SerializationError: ``value`` cannot be pickled.
        ObjectStoreFullError: neither the store nor the spill directory can hold it.
    """
    cluster = _context.cluster
    return (cluster if cluster is not None else _driver.client()).put(value)


def cancel(object_ref: ObjectRef | ObjectRefGenerator, *, force: bool = False,
           recursive: bool = True) -> None:
    """Cancel the task that computes ``object_ref`` (or the streaming task of an
    ``ObjectRefGenerator``); ``get`` on it then raises ``TaskCancelledError``.

    A queued task never runs (copies stolen by other workers included).  A running task
    gets :class:`TaskInterrupted` (a ``KeyboardInterrupt``, as in Ray, so ``except
    Exception`` does not swallow it) raised inside it; with ``force=True`` its worker
    process is killed instead (and replaced), also after a plain cancel it ignored.  A
    finished task is left alone.  With ``recursive``
    (the default, as in Ray) the tasks a running task submitted and that have not finished
    are cancelled too -- also one its worker runs on the waiting task's stack; with
    ``recursive=False`` only the task itself.  A running call of a threaded or async actor
    cannot be interrupted: it ends normally.  In a driver connected to a cluster, the
    task's node cancels it (or its thief, if another node stole it; docs/cluster.md).

    Raises:
        TypeError: ``object_ref`` is not an ObjectRef or ObjectRefGenerator.
    """
    if _context.cluster is not None:  # a connected driver (docs/cluster.md)
        _context.cluster.returns.cancel(object_ref, force, recursive)
        return
    if isinstance(object_ref, ObjectRefGenerator):
        if object_ref._task_id is not None and not object_ref.completed():
            object_ref._client.cancel_task(object_ref._task_id, force, recursive)
        return
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() takes an ObjectRef or ObjectRefGenerator, got "
                        f"{type(object_ref).__qualname__}")
    _driver.client().cancel(object_ref, force, recursive)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill an actor's process at once; its pending and later calls raise
    ``ActorDiedError``.  With ``no_restart=False`` it is restarted if ``max_restarts``
    allows.  Works in the driver, in tasks and in actor methods; with ``no_restart`` it
    returns once the actor is dead (its name is free then).  Killing a dead actor does
    nothing.  In a driver connected to a cluster, the actor's node kills it
    (docs/cluster.md, "Actors on a cluster").

    Raises:
        TypeError: ``actor`` is not an ActorHandle.
        RepartirError: outside the driver, the node did not answer; on a cluster, the
            actor's node (or the head, for its name) did not answer within
            ``CLUSTER_START_TIMEOUT_S`` (60 s), or the handle is of another cluster.
    """
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an ActorHandle, got {type(actor).__qualname__}")
    _kill_actor(actor, no_restart)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the live actor created with ``name=`` (in ``namespace``, by default
    ``"default"``), from the driver, a task or an actor method.  In a driver connected to
    a cluster, the head's registry answers: any driver finds the actors named by others.

    Raises:
        ValueError: no live actor has that name (or its last handle is gone: it is ending).
        RepartirError: outside the driver, the node did not answer; on a cluster, the head
            is not alive or did not answer within ``CLUSTER_START_TIMEOUT_S`` (60 s).
    """
    return _get_actor(name, namespace)


def nodes() -> list[dict]:
    """The nodes of the cluster (this version: the local node), as dicts in Ray's shape.
    ``Resources`` holds ``CPU``, ``GPU`` (each only when the node has some, as in Ray),
    ``memory`` and ``object_store_memory`` (bytes) and the custom resources.  Connected to a
    cluster, or in a task or actor on one of its nodes: every node the head knows, dead ones
    with ``"Alive": False``, as the head answers now (one round trip).

    Raises:
        NodeDiedError: connected to a cluster whose head has not answered for
            ``REPARTIR_NODE_TIMEOUT`` seconds (as ``.remote()`` then): ``shutdown()`` and
            ``init()`` again."""
    if _context.cluster is not None:
        return _context.cluster.nodes()
    if _context.inner is not None:  # a task on a cluster's node: the whole cluster
        return _context.inner.client().nodes()
    c = _driver.client()
    cfg = c.config
    resources = {}
    if cfg.num_cpus:
        resources["CPU"] = float(cfg.num_cpus)
    if cfg.num_gpus:
        resources["GPU"] = float(cfg.num_gpus)
    resources["memory"] = float(cfg.memory)
    resources.update(dict(cfg.resources))
    resources["object_store_memory"] = float(cfg.object_store_memory)
    return [{"NodeID": _context.RuntimeContext().get_node_id(), "Alive": True,
             "NodeManagerAddress": "127.0.0.1", "Resources": resources}]


def get_runtime_context() -> RuntimeContext:
    """What runs where (Ray's ``ray.get_runtime_context()``): the returned object's
    ``get_node_id()``, ``get_job_id()`` (hex strings), ``get_task_id()`` (hex, ``None`` in
    the driver), ``get_actor_id()`` (hex, ``None`` outside an actor) and
    ``was_current_actor_reconstructed`` answer for the calling process, thread and asyncio
    task at the time they are called.  Usable before ``init()``; ``get_node_id()`` and
    ``get_job_id()`` then raise ``RepartirError`` (call ``init()`` first)."""
    return RuntimeContext()


def cluster_resources() -> dict:
    """Total resources, in Ray's units: ``{"CPU": n, "GPU": n, "memory": bytes,
    "object_store_memory": bytes, <custom>: n}`` (``CPU`` and ``GPU`` only when the node has
    some).  Connected to a cluster (or in a task or actor on one of its nodes): the sum over
    its live nodes.

    Raises:
        NodeDiedError: as :func:`nodes`."""
    if _context.cluster is not None:
        return _context.cluster.resources(available=False)
    if _context.inner is not None:
        return _context.inner.client().resources(available=False)
    return dict(nodes()[0]["Resources"])


def available_resources() -> dict:
    """Resources not reserved by running tasks and live actors now, in Ray's units (CPU, GPU,
    ``memory`` in bytes, custom), and free arena bytes as ``object_store_memory``.  Connected
    to a cluster (or in a task or actor on one of its nodes): the sum over its live nodes, as
    of their last heartbeat (about 1 s old).

    Raises:
        NodeDiedError: as :func:`nodes`."""
    if _context.cluster is not None:
        return _context.cluster.resources(available=True)
    if _context.inner is not None:
        return _context.inner.client().resources(available=True)
    c = _driver.client()
    names = resource_names(c.config)
    avail = list(c.segment.available())
    avail[0] += 1000 * c.segment.free_tokens()  # idle workers hold their CPU, unused
    out = {name: max(avail[i], 0) / 1000 for i, name in enumerate(names)
           if (name != "GPU" or c.config.num_gpus) and (name != "CPU" or c.config.num_cpus)}
    stats = c.arena.statistics()
    out["object_store_memory"] = float(stats.capacity - stats.used_bytes)
    return out
