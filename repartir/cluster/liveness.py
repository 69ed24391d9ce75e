"""A connected driver's side of liveness (docs/cluster.md, "Failures"): its lease at the head,
a pause of its own process, its goodbye, a fresh registry on demand, and what the nodes
dropped for it.  Functions of a :class:`~.client.ClusterClient` ``c``.

- **The lease.** Every ``CLUSTER_HEARTBEAT_S`` (and at once when :func:`fresh_registry`
  asks) the driver's loop sends ``("nodes", driver id, n)``, ``n`` counting its requests;
  the head echoes ``n`` in its answer, so a caller waits for the answer to a request sent
  after it asked, no longer (:func:`ask_registry`, :func:`answered`).
- **A pause of the driver itself** (SIGSTOP, a debugger, a machine that was suspended, a
  thread that held the interpreter lock for a long time): the loop notes when it last
  turned; a gap longer than ``CLUSTER_HEARTBEAT_S`` is not counted as silence of the head
  (:func:`turned`), whose answers the driver did not read meanwhile, and the registry is
  asked for at once.  The head may have taken the driver for gone meanwhile (after
  ``REPARTIR_NODE_TIMEOUT``), and the nodes dropped its tasks and results: they say which
  (``("forgot", task ids, object ids)``, leases.py), and those refs fail with
  :class:`~repartir.errors.ObjectLostError` (:func:`forgot`).
- **The goodbye.** ``close`` (``repartir.shutdown()``, the end of the script, Ctrl-C) ends
  with :func:`say_goodbye`: the nodes drop at once what they held for this driver, the head
  its lease.
- **A head gone.** Once the head has not answered for ``REPARTIR_NODE_TIMEOUT``, ``nodes()``,
  ``cluster_resources()`` and ``available_resources()`` raise the
  :class:`~repartir.errors.NodeDiedError` that ``.remote()`` raises
  (:func:`fresh_registry`), rather than report nodes that nobody can vouch for.
"""

from __future__ import annotations

import time
from typing import Any

from ..config import CLUSTER_HEARTBEAT_S
from ..errors import NodeDiedError, ObjectLostError
from .membership import writable

__all__ = ["ask_registry", "answered", "turned", "forgot", "say_goodbye", "fresh_registry",
           "registry_nodes", "summed_resources"]


def turned(c: Any, gap: float, now: float) -> bool:
    """The driver's loop turns again after ``gap`` seconds (``now``: ``time.monotonic()``).
    A gap over ``CLUSTER_HEARTBEAT_S`` was a pause of this process, not silence of the head:
    it is not counted against the head.  Returns whether it was such a pause."""
    if gap <= CLUSTER_HEARTBEAT_S:
        return False
    with c._lock:
        c._last_head = min(now, c._last_head + gap)
        c._registry_asked = True
    return True


def ask_registry(c: Any) -> None:
    """Send the head a registry request (the driver's lease, numbered); nothing when its
    connection takes nothing now (the next period tries again)."""
    if not writable(c._head):
        return
    with c._lock:
        c._registry_asked = False
        c._registry_sent += 1
        n = c._registry_sent
    c._head.send(("nodes", c._driver_id, n))


def answered(c: Any, value: tuple) -> None:
    """The head answered registry request ``value[4]`` (if numbered).  Holds the lock."""
    n = value[4] if len(value) > 4 else None
    if isinstance(n, int) and n > c._registry_answered:
        c._registry_answered = n


def fresh_registry(c: Any, timeout: float | None = None) -> None:
    """Ask the head for the registry now and wait for its answer (at most ``timeout``
    seconds, default ``2 * CLUSTER_HEARTBEAT_S + 1``: then the last registry stands).

    Raises:
        NodeDiedError: the head has not answered for ``REPARTIR_NODE_TIMEOUT``: the cluster
            is gone or cut off (call ``repartir.shutdown()`` and ``init()`` again).
    """
    deadline = time.monotonic() + (2 * CLUSTER_HEARTBEAT_S + 1 if timeout is None else timeout)
    with c._cv:
        if c._failed is None:
            c._registry_asked = True
            c._wake.signal()  # the loop sends it now, not at the end of its poll (wake.py)
            target = c._registry_sent + 1
            while c._registry_answered < target and c._failed is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                c._cv.wait(min(left, 0.05))
        if c._failed is not None:
            raise NodeDiedError(c._failed)


def registry_nodes(c: Any) -> list[dict]:
    """``nodes()`` of a connected driver: the head's registry, asked for now
    (:func:`fresh_registry`), in Ray's shape.

    Raises:
        NodeDiedError: as :func:`fresh_registry`.
    """
    fresh_registry(c)
    with c._cv:
        return [{"NodeID": r["NodeID"], "Alive": r["Alive"],
                 "NodeManagerAddress": r["NodeManagerAddress"].rsplit(":", 1)[0],
                 "NodeManagerPort": int(r["NodeManagerAddress"].rsplit(":", 1)[1]),
                 "Resources": dict(r["Resources"])} for r in c.nodes_seen.values()]


def summed_resources(c: Any, available: bool) -> dict:
    """``cluster_resources()`` (``available`` false) or ``available_resources()`` of a
    connected driver: the sum over the live nodes of a fresh registry.

    Raises:
        NodeDiedError: as :func:`fresh_registry`.
    """
    fresh_registry(c)
    out: dict[str, float] = {}
    with c._lock:
        for r in c.nodes_seen.values():
            if r["Alive"]:
                for k, v in r["Available" if available else "Resources"].items():
                    out[k] = out.get(k, 0.0) + v
    return out


def forgot(c: Any, nid: str, tids: Any, oids: Any) -> None:
    """Node ``nid`` dropped this driver's tasks ``tids`` and results ``oids``: the head had
    not heard from this driver for ``REPARTIR_NODE_TIMEOUT`` (its process was paused, or cut
    off from the head).  Their refs fail.  Holds the lock."""
    rec = c.nodes_seen.get(nid, {})
    why = (f"node {nid[:12]} at {rec.get('NodeManagerAddress', '?')} dropped it: the head had "
           f"not heard from this driver for {c.timeout:g} s (REPARTIR_NODE_TIMEOUT; was this "
           f"process paused or cut off from the head?), so the node took it for gone")
    for tid in tids if isinstance(tids, list) else ():
        task = c.inflight.get(tid)
        if task is None or task.node != nid:
            continue
        del c.inflight[tid]
        c._used[nid] -= task.demand.get("CPU", 0.0)
        c._count[nid] -= 1
        c._due.extend(c.borrows.task_ended(tid))
        c.results[tid] = ("error", ObjectLostError(f"the result of task {tid.hex()} is lost: "
                                                   f"{why}"))
    c.dvals.forgot(nid, oids)  # values of this driver it held (driver_values.py)
    for oid in oids if isinstance(oids, list) else ():
        res = c.results.get(oid)
        if res is not None and res[0] == "stored" and res[1] == nid:
            c._fetches.pop(oid, None)
            c.results[oid] = ("error", ObjectLostError(f"object {oid.hex()} is lost: {why}"))
    c._cv.notify_all()


def say_goodbye(c: Any) -> None:
    """This driver ends: the nodes drop at once what they hold for it (results, queued and
    running tasks), the head its lease.  Best effort: a connection that takes nothing now
    is skipped (that node drops them once the head's lists leave this driver out)."""
    for ep in list(c._eps.values()):
        if writable(ep):
            ep.send(("bye",))
    if writable(c._head):
        c._head.send(("bye", c._driver_id))
