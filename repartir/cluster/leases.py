"""Drivers' leases: what a node keeps for a driver that died without saying so is dropped
(docs/cluster.md, "Failures").

A driver that exits normally releases what it kept on the nodes (``repartir.shutdown()``
and ``atexit``).  One killed (SIGKILL, a crashed interpreter, a machine gone) cannot: its
results would stay in the nodes' arenas, and its queued tasks would run, for nobody, until
the nodes stop.  So the liveness of drivers rides on the registry requests they already
make: every ``CLUSTER_HEARTBEAT_S`` a driver asks the head for the registry with its
driver id, ``("nodes", driver id)``; the head keeps when it last heard each driver
(:class:`DriverLeases`) and answers every registry request with the ids of the drivers
heard within ``REPARTIR_NODE_TIMEOUT``, ``("nodes", records, driver ids)``.

::

    driver ── ("nodes", id) every CLUSTER_HEARTBEAT_S ──▶ head: last heard[id] = now
    node   ── ("nodes",)    every CLUSTER_HEARTBEAT_S ──▶ head
    node   ◀─ ("nodes", records, ids heard within REPARTIR_NODE_TIMEOUT) ──

A node (:class:`Holdings`) judges only the drivers it serves that the head has listed at
least once (so a peer that never asks the head, ``repartir status`` or another node, is
never taken for a dead driver), and takes a driver for gone once the head's lists have
left it out for ``REPARTIR_NODE_TIMEOUT`` in a row, measured on the node's clock.  Then it
drops the results it kept for that driver, the tasks of that driver it queued, and cancels
those running (as ``repartir.cancel``); their completions are not sent.  A
head that restarted lists no driver until their next request, one heartbeat later: well
inside the timeout.  A driver cut off from the head for longer than the timeout has failed
its own work already (the head is gone, to it), so nothing it could still use is dropped.
The daemon then also ends the actors the driver owned and drops its holds on actors
(``node_actors.NodeActors.driver_gone``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ..runtime import driver as local_driver

__all__ = ["DriverLeases", "Holdings"]


class DriverLeases:
    """The head's record of the drivers that ask it for the registry.

    Args:
        timeout: seconds (``REPARTIR_NODE_TIMEOUT``) after which a driver not heard from is
            left out of :meth:`live`.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._heard: dict[bytes, float] = {}

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

    def gone(self, served: set[bytes], live: Any, now: float | None = None) -> list[bytes]:
        """The drivers among ``served`` to take for gone, given the head's latest list
        ``live`` (``None``: the head sent none, judge nothing)."""
        if not isinstance(live, list):
            return []
        now = time.monotonic() if now is None else now
        live_set = set(live)
        self._listed.update(served & live_set)
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


def drop_driver(d: Any, driver_id: bytes) -> None:
    """Node daemon ``d`` drops what it holds for a driver taken for gone: the results kept
    for it, its queued tasks, and its running tasks (cancelled; their completions dropped).
    Logs what it dropped."""
    h: Holdings = d.holdings
    kept = [oid for oid, owner in h.owner.items() if owner == driver_id]
    for oid in kept:
        del h.owner[oid]
        d.stored.pop(oid, None)
        d.blobs.forget(oid)
    queue = getattr(d, "queue", None)  # tasks queued here, not yet run (stealing.py)
    queued = 0
    if queue:
        keep = [t for t in queue if t.owner != driver_id]
        queued = len(queue) - len(keep)
        queue.clear()
        queue.extend(keep)
    running = [tid for tid, (peer, _) in d.pending.items() if peer == driver_id]
    for tid in running:
        _, ref = d.pending.pop(tid)
        try:
            local_driver.client().cancel(ref, False, True)
        except Exception:  # noqa: BLE001 -- finished meanwhile, or not cancellable
            pass
    d.drivers.discard(driver_id)
    h.forget(driver_id)
    print(f"driver {driver_id.hex()[:12]} has not asked the head for the registry for "
          f"{h.timeout:g} s: taken for gone; dropped {len(kept)} result(s) kept for it and "
          f"{queued} queued task(s), cancelled {len(running)} running task(s)",
          file=sys.stderr, flush=True)
