"""Drivers' leases: what a node keeps for a driver is dropped when the driver says goodbye,
and when it died without saying so (docs/cluster.md, "Failures").

A driver that ends normally (``repartir.shutdown()``, the end of the script, Ctrl-C: all go
through ``ClusterClient.close``) says goodbye: ``("bye",)`` to every node it is connected to
and ``("bye", driver id)`` to the head.  A node drops at once the results it kept for that
driver, its queued tasks, and cancels its running ones (:func:`drop_driver`); the head drops
its lease (:meth:`DriverLeases.left`).

One killed (SIGKILL, a crashed interpreter, a machine gone) cannot: its results would stay
in the nodes' arenas, and its queued tasks would run, for nobody, until the nodes stop.  So
the liveness of drivers rides on the registry requests they already make: every
``CLUSTER_HEARTBEAT_S`` a driver asks the head for the registry with its driver id,
``("nodes", driver id, n)``; the head keeps when it last heard each driver
(:class:`DriverLeases`) and answers every registry request with the ids of the drivers
heard within ``REPARTIR_NODE_TIMEOUT`` and the seconds it has been listening,
``("nodes", records, driver ids, uptime, n)``.

::

    driver ── ("nodes", id, n) every CLUSTER_HEARTBEAT_S ──▶ head: last heard[id] = now
    node   ── ("nodes",)       every CLUSTER_HEARTBEAT_S ──▶ head
    node   ◀─ ("nodes", records, ids heard within REPARTIR_NODE_TIMEOUT, uptime) ──

A node (:class:`Holdings`) judges only the drivers it serves that the head has listed at
least once (so a peer that never asks the head, ``repartir status`` or another node, is
never taken for a dead driver), and takes such a driver for gone as soon as a list of a head
that has been listening for longer than ``REPARTIR_NODE_TIMEOUT`` leaves it out: that head
has not heard the driver for the whole timeout, so a killed driver's holdings go within
about the timeout plus a heartbeat.  A head that restarted lists no driver until their next
request; it judges none before it has listened for the timeout, by which time every live
driver has asked it again.  Then the node drops what it held for the driver (as for a
goodbye) and tells the driver which tasks and results it dropped, ``("forgot", task ids,
object ids)``: a driver that was only paused (SIGSTOP, a debugger) gets those messages when
it resumes, and their refs fail with a clear error instead of waiting for ever
(``liveness.py``).  The daemon then also ends the actors the driver owned and drops its
holds on actors (``node_actors.NodeActors.driver_gone``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from .node_returns import cancel_local

__all__ = ["DriverLeases", "Holdings"]


class DriverLeases:
    """The head's record of the drivers that ask it for the registry.

    Args:
        timeout: seconds (``REPARTIR_NODE_TIMEOUT``) after which a driver not heard from is
            left out of :meth:`live`.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.started = time.monotonic()
        self._heard: dict[bytes, float] = {}

    def uptime(self) -> float:
        """Seconds since this head started listening."""
        return time.monotonic() - self.started

    def left(self, driver_id: Any) -> None:
        """Driver ``driver_id`` said goodbye: it is no longer listed."""
        if isinstance(driver_id, bytes):
            self._heard.pop(driver_id, None)

    def heard(self, driver_id: Any) -> None:
        """A registry request carried ``driver_id`` (anything else is ignored: a forged or
        malformed id costs nothing but an entry, dropped after the timeout)."""
        if isinstance(driver_id, bytes) and len(driver_id) <= 64:
            self._heard[driver_id] = time.monotonic()

    def live(self, now: float | None = None) -> list[bytes]:
        """The ids of the drivers heard within the timeout (older entries are dropped)."""
        now = time.monotonic() if now is None else now
        for d in [d for d, t in self._heard.items() if now - t > self.timeout]:
            del self._heard[d]
        return list(self._heard)


class Holdings:
    """A node's side: who owns each result the node keeps, and which drivers are gone.

    Args:
        timeout: seconds (``REPARTIR_NODE_TIMEOUT``) a driver the node serves may be missing
            from the head's lists before it is taken for gone.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.owner: dict[bytes, bytes] = {}  # object id -> the driver it is kept for
        self._listed: set[bytes] = set()  # drivers the head has listed at least once
        self._missing: dict[bytes, float] = {}  # driver id -> first time left out

    def kept(self, object_id: bytes, driver_id: bytes) -> None:
        self.owner[object_id] = driver_id

    def released(self, object_id: bytes) -> None:
        self.owner.pop(object_id, None)

    def gone(self, served: set[bytes], live: Any, uptime: Any = None,
             now: float | None = None) -> list[bytes]:
        """The drivers among ``served`` to take for gone, given the head's latest list
        ``live`` (``None``: the head sent none, judge nothing) and the seconds the head has
        been listening, ``uptime``: a driver the head listed once and leaves out now is gone
        when ``uptime`` exceeds the timeout.  Without ``uptime`` (a head of an earlier
        version), one left out for the timeout in a row, on this node's clock."""
        if not isinstance(live, list):
            return []
        now = time.monotonic() if now is None else now
        live_set = set(live)
        self._listed.update(served & live_set)
        if isinstance(uptime, (int, float)):
            if uptime <= self.timeout:
                return []  # a head that restarted lately: it has not heard every driver yet
            return [d for d in served if d in self._listed and d not in live_set]
        out = []
        for d in served:
            if d in live_set or d not in self._listed:
                self._missing.pop(d, None)
            elif now - self._missing.setdefault(d, now) > self.timeout:
                out.append(d)
        return out

    def forget(self, driver_id: bytes) -> None:
        self._listed.discard(driver_id)
        self._missing.pop(driver_id, None)


def drop_driver(d: Any, driver_id: bytes, said_bye: bool = False) -> None:
    """Node daemon ``d`` drops what it holds for driver ``driver_id``: the results kept for
    it, its queued tasks (those still pulling their arguments too: they never start), and
    its running tasks (cancelled, several returns and generators too:
    :func:`~.node_returns.cancel_local`; their completions dropped).  A
    driver taken for gone (``said_bye`` false) is told what was dropped, ``("forgot", task
    ids, object ids)`` (a killed one never reads it; a paused one does when it resumes), and
    the drop is logged; one that said goodbye is not (and its actor operations are left to
    the messages it sent before its goodbye)."""
    h: Holdings = d.holdings
    kept = [oid for oid, owner in h.owner.items() if owner == driver_id]
    for oid in kept:
        del h.owner[oid]
        d.stored.pop(oid, None)
        d.blobs.forget(oid)
    queue = getattr(d, "queue", None)  # tasks queued here, not yet run (stealing.py)
    queued: list[bytes] = []
    if queue:
        keep = [t for t in queue if t.owner != driver_id]
        queued = [t.tid for t in queue if t.owner == driver_id]
        queue.clear()
        queue.extend(keep)
    admitted = getattr(d, "_admitted", None)  # tasks, not actor operations (stealing.py)
    puller = getattr(d, "puller", None)  # tasks waiting for their arguments' pulls (pull.py)
    pulling = [t[1] for p in (puller.pulls.values() if puller is not None else ())
               for t in p.waiting if t[0] == driver_id
               and not (said_bye and admitted is not None and t[1] not in admitted)]
    for tid in pulling:
        d._never_start(tid)  # fails instead of starting once its pull ends (node_returns.py)
    queued += pulling
    running = [tid for tid, (peer, _) in d.pending.items() if peer == driver_id
               and not (said_bye and admitted is not None and tid not in admitted)]
    # newest first: those still waiting in the runtime leave it before a running one that
    # stops frees its CPU for them; one ref, several returns, a generator (node_returns.py)
    for tid in reversed(running):
        _, out = d.pending.pop(tid)
        cancel_local(out)
    d.drivers.discard(driver_id)
    h.forget(driver_id)
    if said_bye:
        return
    if kept or queued or running:
        d.router.send(("forgot", queued + running, kept), to=driver_id)
    print(f"driver {driver_id.hex()[:12]} has not asked the head for the registry for "
          f"{h.timeout:g} s: taken for gone; dropped {len(kept)} result(s) kept for it and "
          f"{len(queued)} queued task(s), cancelled {len(running)} running task(s)",
          file=sys.stderr, flush=True)
