"""Tasks and actors running on a node that use the rest of the cluster (docs/cluster.md,
"Tasks and actors that submit work").

A node daemon tells the worker and actor processes of its local node where the head is
(``handoff.prepare_workers``).  In such a process, :class:`InnerCluster` is
``context.inner``: the first time a task or actor needs the cluster, it connects this
process to it as a driver would (a :class:`~.client.ClusterClient` of its own, the *owner*
of what it submits there, as Ray's worker owns the tasks and actors its task creates).

::

    worker of node A ── f.remote() fits node A (and no cluster ref among its arguments) ──▶
                        node A's local runtime, as on a single machine (the fast path)
                     ── f.remote() does not fit A, or takes a cluster ref ──▶ ClusterClient
                        ──▶ the node the cluster's placement picks (as a driver's task)
                     ── A.remote(), get_actor(), handle.m.remote() ──▶ ClusterClient
                        (actors are placed by the cluster; names are the head's)

``get`` and ``wait`` take local and cluster refs, mixed.  A ref of the local runtime given
to a task sent to the cluster travels as its value.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Any, Sequence

from ..errors import GetTimeoutError, InfeasibleTaskError
from ..runtime import context
from ..runtime import driver
from ..runtime.objectref import ObjectRef
from .actors import ClusterActorHandle
from .client import ClusterClient, ClusterRef
from .handoff import HEAD_ENV, node_head

__all__ = ["InnerCluster", "get", "wait", "install"]


class InnerCluster:
    """The cluster as a task or actor on one of its nodes reaches it (see the module's
    docstring).

    Args:
        head: the head's ``HOST:PORT``.
    """

    def __init__(self, head: str) -> None:
        self.head = head
        self._client: ClusterClient | None = None
        self._lock = threading.Lock()

    def client(self) -> ClusterClient:
        """This process's connection to the cluster, made on first use (closed at exit:
        the actors it owns end, what it kept on nodes is released).

        Raises:
            RepartirError, TokenError: as ``ClusterClient`` (the head does not answer, or
                refused the token).
        """
        if self._client is None:
            with self._lock:
                if self._client is None:
                    client = ClusterClient(self.head)
                    atexit.register(client.close)
                    self._client = client
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    @staticmethod
    def _here(rf: Any) -> bool:
        """Whether ``rf``'s tasks fit this node's total resources (kept on ``rf``: this is
        on the path of every nested task)."""
        o = rf._options
        try:
            driver.client().demand_vector(o.get("num_cpus", 1), o.get("num_gpus", 0),
                                          o.get("resources") or {}, o.get("memory") or 0)
            here = True
        except InfeasibleTaskError:
            here = False
        rf._fits_this_node = here
        return here

    def submit(self, rf: Any, args: tuple, kwargs: dict) -> Any:
        """``rf.remote(*args, **kwargs)`` sent to the cluster, or ``None``: it runs on this
        node's local runtime (it fits here, and takes no cluster ref).

        Raises:
            InfeasibleTaskError: no node of the cluster fits it.
        """
        here = rf.__dict__.get("_fits_this_node")
        if here is None:
            here = self._here(rf)
        if here:
            for a in args:
                if type(a) is ClusterRef:
                    break
            else:
                if not kwargs or ClusterRef not in map(type, kwargs.values()):
                    return None
        args, kwargs = _values_of_local_refs(args, kwargs)
        return self.client().submit(rf, args, kwargs)

    def create_actor(self, ac: Any, args: tuple, kwargs: dict) -> ClusterActorHandle:
        """``ac.remote(*args, **kwargs)``: the actor is placed by the cluster."""
        args, kwargs = _values_of_local_refs(args, kwargs)
        return self.client().actors.create(ac, args, kwargs)

    def get_actor(self, name: str, namespace: str | None) -> ClusterActorHandle:
        """The live actor of that name anywhere in the cluster (the head's registry).

        Raises:
            ValueError: no live actor has that name.
        """
        return self.client().actors.get_actor(name, namespace)

    def kill(self, handle: Any, no_restart: bool) -> bool:
        """``repartir.kill(handle)`` of a cluster actor; ``False``: not one."""
        if not isinstance(handle, ClusterActorHandle):
            return False
        handle._actors.kill(handle, no_restart)
        return True


def _values_of_local_refs(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Refs of this node's local runtime replaced by their values (a task sent to the
    cluster takes cluster refs and values only)."""
    def sub(a: Any) -> Any:
        if isinstance(a, ObjectRef) and type(a) is not ClusterRef:
            return driver.client().get([a], None)[0]
        return a
    if not any(isinstance(a, ObjectRef) for a in (*args, *kwargs.values())):
        return args, kwargs
    return tuple(sub(a) for a in args), {k: sub(v) for k, v in kwargs.items()}


def _split(refs: Sequence[ObjectRef]) -> tuple[list[int], list[int]] | None:
    cluster = [i for i, r in enumerate(refs) if type(r) is ClusterRef]
    if not cluster:
        return None
    return [i for i in range(len(refs)) if type(refs[i]) is not ClusterRef], cluster


#: How long a worker waiting for cluster refs blocks at a time before it looks for a local
#: task to run on its stack (and at local refs): shorter reacts sooner, longer costs less.
_NAP_S = 0.005


def _ready(refs: Sequence[ObjectRef], local: list[int], remote: list[int]) -> list[bool]:
    """Which of ``refs`` are ready now (a look, no wait)."""
    mask = [False] * len(refs)
    by_client: dict[Any, list[int]] = {}
    for i in remote:
        by_client.setdefault(refs[i]._cluster, []).append(i)
    for client, idx in by_client.items():
        for i, ok in zip(idx, client.wait([refs[i] for i in idx], len(idx), 0)):
            mask[i] = ok
    if local:
        core = driver.client()
        core.poll()  # completions of tasks this worker ran on its stack meanwhile
        for i, ok in zip(local, core.wait([refs[i] for i in local], len(local), 0)):
            mask[i] = ok
    return mask


def _wait(refs: Sequence[ObjectRef], local: list[int], remote: list[int], num: int,
          deadline: float | None) -> list[bool]:
    """Wait until ``num`` of ``refs`` are ready or ``deadline`` passes.  A worker lends its
    task's resources to its node meanwhile and runs the node's queued tasks on its stack,
    as a wait for local refs does (``runtime/waiting.py``): a task waiting for the cluster
    never holds the CPU a task it waits for needs (one sent back to this node, or a local
    one among ``refs``)."""
    core = driver.client()
    helper = core.helper  # None in an actor's process: it runs nothing else meanwhile
    first = refs[remote[0]]._cluster
    mine = [r for r in refs if type(r) is ClusterRef and r._cluster is first]
    while True:
        mask = _ready(refs, local, remote)
        now = time.monotonic()
        if sum(mask) >= num or (deadline is not None and now >= deadline):
            return mask
        nap = _NAP_S if deadline is None else min(_NAP_S, deadline - now)
        if helper is None:
            first.wait(mine, len(mine), nap)
            continue
        helper.lend()
        try:
            if helper.help():
                helper.raise_pending_stop()
                continue
            core.segment.set_blocked(core.slot, True)  # all blocked: the node adds a worker
            try:
                first.wait(mine, len(mine), nap)
            finally:
                core.segment.set_blocked(core.slot, False)
        finally:
            helper.unlend()


def get(refs: Sequence[ObjectRef], timeout: float | None) -> list | None:
    """``repartir.get`` of refs among which some are cluster refs (local ones may be mixed
    in), or ``None``: none is.

    Raises:
        GetTimeoutError: ``timeout`` seconds passed first.
    """
    parts = _split(refs)
    if parts is None:
        return None
    local, remote = parts
    deadline = None if timeout is None else time.monotonic() + timeout
    if local or driver.client().helper is not None:
        ready = _wait(refs, local, remote, len(refs), deadline)
        if not all(ready):
            raise GetTimeoutError(f"get() timed out after {timeout} s: {ready.count(False)} "
                                  f"of {len(refs)} object(s) not ready")
    out: list = [None] * len(refs)
    by_client: dict[Any, list[int]] = {}
    for i in remote:
        by_client.setdefault(refs[i]._cluster, []).append(i)
    for client, idx in by_client.items():
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        for i, v in zip(idx, client.get([refs[i] for i in idx], left)):
            out[i] = v
    if local:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        for i, v in zip(local, driver.client().get([refs[i] for i in local], left)):
            out[i] = v
    return out


def wait(refs: Sequence[ObjectRef], num_returns: int, timeout: float | None
         ) -> list[bool] | None:
    """``repartir.wait``'s readiness mask of refs among which some are cluster refs, or
    ``None``: none is."""
    parts = _split(refs)
    if parts is None:
        return None
    local, remote = parts
    deadline = None if timeout is None else time.monotonic() + timeout
    return _wait(refs, local, remote, num_returns, deadline)


def install() -> None:
    """Make ``context.inner`` in a worker or actor process of a node (nothing elsewhere)."""
    head = node_head()
    if head is not None and context.inner is None:
        context.set_inner(InnerCluster(head))
        # a program this task starts is no worker of the node (its own init() stays local)
        os.environ.pop(HEAD_ENV, None)


install()
