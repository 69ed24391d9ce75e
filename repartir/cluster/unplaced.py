"""Tasks that no live node fits right now wait in the driver for one to join
(docs/cluster.md, "Failures" and "Drivers").

A node declared dead often comes back: the same machine restarted, a frozen node thawed
(a new incarnation), a replacement started with the same resources.  A task that only such
a node fits would fail at once if the driver placed it only among the live nodes.  So,
on a connected driver:

::

    node N declared dead ─▶ ClusterClient._node_died ─▶ a task of N with retries left
        that no live node fits ─▶ retry_when_a_node_fits: it waits (Lineage.wait) ─▶
        Lineage.step, each loop turn: a live node fits it now ─▶ sent there (once)
                                     none for REPARTIR_NODE_TIMEOUT ─▶ its ref raises
                                     NodeDiedError (the node, the task, the live nodes)
    f.remote() (or a task whose ref arguments became ready, deps.py) that no live node
        fits ─▶ enqueue_or_wait: a node this driver saw (dead now) fitted it ─▶ it waits
        the same way, then its ref raises InfeasibleTaskError; no node ever seen fitted
        it ─▶ InfeasibleTaskError at once, as before (nothing suggests one will come)

The wait is :class:`~.lineage.Lineage`'s, the one a rebuild uses (``unplaced`` holds until
when): ``repartir.cancel`` of such a task fails it at once (``TaskCancelledError``), and
``repartir.shutdown()`` ends it with the driver.  The bound is the driver's
``REPARTIR_NODE_TIMEOUT`` (``ClusterClient.timeout``, 10 s by default): a node that comes back
later than that was gone for longer than the cluster takes to declare a node dead.  Every
function is called with the client's lock held.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import InfeasibleTaskError, NodeDiedError
from .stealing import fits as fits_in

__all__ = ["retry_when_a_node_fits", "enqueue_or_wait", "fitted_before"]


def retry_when_a_node_fits(c: Any, tid: bytes, task: Any, lost: str) -> None:
    """Task ``tid``, whose node died (``lost``: "node N at ADDR was declared dead ...
    while it ran task T"), has a retry left but no live node fits it: it waits for one,
    up to ``c.timeout`` seconds, then its ref raises :class:`NodeDiedError` saying so."""
    c._lineage.fails_as[tid] = lambda why: NodeDiedError(f"{lost}; it cannot run again: {why}")
    c._lineage.wait(tid, task)


def fitted_before(c: Any, demand: dict) -> bool:
    """Whether a node this driver saw, dead now, had the resources ``demand`` asks for."""
    return any(not rec["Alive"] and fits_in(demand, rec["Resources"])
               for rec in c.nodes_seen.values())


def enqueue_or_wait(c: Any, tid: bytes, task: Any, prefer: str | None, name: str = "") -> None:
    """``c._enqueue(tid, task, prefer)``; when no live node fits the task but a node seen
    before (dead now) did, the task waits for one instead, up to ``c.timeout`` seconds,
    then its ref raises :class:`InfeasibleTaskError`.  A warning on stderr says so.

    Raises:
        InfeasibleTaskError: no live node fits the task, and no node seen before did.
    """
    try:
        c._enqueue(tid, task, prefer)
        return
    except InfeasibleTaskError:
        if c._failed is not None or not fitted_before(c, task.demand):
            raise
    what = f"task {name} ({tid.hex()})" if name else f"task {tid.hex()}"
    if not any(t.demand == task.demand for t in c._lineage.waiting.values()):  # once a wait
            print(f"repartir: {what} asks for {task.demand}, which no live node of the cluster "
              f"at {c.address} has now (a node that had it is dead): it waits up to "
              f"{c.timeout:g} s (REPARTIR_NODE_TIMEOUT) for one to join", file=sys.stderr,
              flush=True)
    c._lineage.fails_as[tid] = lambda why: InfeasibleTaskError(f"{what} never ran: {why}")
    c._lineage.wait(tid, task)
