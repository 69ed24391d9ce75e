"""The nodes a driver connected to a cluster knows (a part of
:class:`~.client.ClusterClient`, whose state it shares; docs/cluster.md, "Failures"): it takes
the head's registry, connects to the nodes that join, and when one dies resubmits or fails
its tasks and gives up (or rebuilds, ``lineage.py``) the objects kept on it.

::

    the head's registry (client_loop.py: every CLUSTER_HEARTBEAT_S)
      ─▶ _update_nodes: a node alive and new ─▶ _connect_node (after _replaced_at closed
                        the connections to nodes gone from its address)
                        a node dead, back as a new incarnation, or unlisted too long
                        (membership.unlisted_nodes) ─▶ returned as newly dead
      ─▶ _node_died (each newly dead node; every node once the head is lost)

Every method is called with the client's lock held (or before its loop thread starts).
"""

from __future__ import annotations

import zmq

from ..errors import InfeasibleTaskError, NodeDiedError, ObjectLostError
from .membership import unlisted_nodes
from .sockets import Endpoint
from .state import tcp
from .unplaced import retry_when_a_node_fits

__all__ = ["ClientNodes"]


class ClientNodes:
    """The registry and membership methods of :class:`~.client.ClusterClient` (see the
    module's docstring); they read and change its state (``nodes_seen``, ``_eps``,
    ``inflight``, ``results``, ...)."""

    def _update_nodes(self, records: list[dict]) -> list[str]:
        """Take the head's registry; returns the ids of nodes newly dead."""
        newly_dead = []
        for rec in records:
            nid = rec["NodeID"]
            if nid in self._superseded:  # listed still, by a head that has not timed it out
                self.nodes_seen[nid] = dict(rec, Alive=False)
                continue
            old = self.nodes_seen.get(nid)
            self.nodes_seen[nid] = rec
            if rec["Alive"] and nid not in self._eps:
                newly_dead.extend(self._replaced_at(nid, rec["NodeManagerAddress"]))
                self._connect_node(nid, rec["NodeManagerAddress"])
            if not rec["Alive"] and (old is None or old["Alive"]):
                newly_dead.append(nid)
            elif old is not None and old["Alive"] and \
                    rec.get("Incarnation") != old.get("Incarnation"):
                newly_dead.append(nid)  # declared dead and back since we last looked
        return newly_dead + unlisted_nodes(self.nodes_seen, records, self._unlisted,
                                           self.timeout)

    def _replaced_at(self, nid: str, address: str) -> list[str]:
        """The nodes this driver is connected to at ``address``, where node ``nid`` now
        listens: their daemon is gone (one address, one daemon; a head restarted at its
        port brings a new node there).  Their connections close now, before ``nid``'s
        opens: both carry this driver's routing id, and two connections with one id to
        one ROUTER take it from each other (``ROUTER_HANDOVER``), so the new node's
        answers would arrive on the old connection and be dropped there.  The caller
        declares them dead.  Holds the lock."""
        gone = [n for n in self._eps if n != nid
                and self.nodes_seen.get(n, {}).get("NodeManagerAddress") == address]
        for n in gone:
            ep = self._eps.pop(n)
            self._poller.unregister(ep.socket)
            self._ep_node.pop(ep.socket, None)
            ep.close()
            self.nodes_seen[n] = dict(self.nodes_seen[n], Alive=False)
            self._superseded.add(n)
        return gone

    def _connect_node(self, nid: str, address: str) -> None:
        ep = Endpoint.connect(tcp(address), token=self._token, routing_id=self._driver_id,
                              **self._curve.to_node(self.nodes_seen.get(nid, {})))
        ep.send(("driver",))  # so that a node that steals our tasks knows it reaches us
        self._eps[nid] = ep
        self._ep_node[ep.socket] = nid
        self._fn_sent[nid] = set()
        self._used.setdefault(nid, 0.0)
        self._count.setdefault(nid, 0)
        self._poller.register(ep.socket, zmq.POLLIN)

    def _node_died(self, nid: str, why: str) -> None:
        """Resubmit or fail the node's tasks; its objects are lost.  Holds the lock."""
        rec = self.nodes_seen.get(nid, {})
        where = f"node {nid[:12]} at {rec.get('NodeManagerAddress', '?')}"
        ep = self._eps.pop(nid, None)
        if ep is not None:
            self._poller.unregister(ep.socket)
            self._ep_node.pop(ep.socket, None)
            ep.close()
        self._outbox.pop(nid, None)
        self.actors.node_died_locked(nid, where, why)  # restart, resend or fail (actors.py)
        for tid, task in list(self.inflight.items()):
            if task.node != nid:
                continue
            if self._failed is not None:
                not_again = f"it is not run again: {self._failed}"
            elif task.retries <= 0:
                not_again = "its max_retries are used up"
            else:
                task.retries -= 1
                if tid in self._lineage.deps:  # its node-kept arguments died with it
                    self._lineage.wait(tid, task)
                    continue
                try:
                    self._enqueue(tid, task, None)
                except InfeasibleTaskError:  # it waits for a node that fits (unplaced.py)
                    retry_when_a_node_fits(self, tid, task, f"{where} {why} while it ran "
                                                            f"task {tid.hex()}")
                continue
            del self.inflight[tid]
            self._due.extend(self.borrows.task_ended(tid))
            self.results[tid] = ("error", NodeDiedError(
                f"{where} {why} while it ran task {tid.hex()}; {not_again}"))
        for tid, res in list(self.results.items()):
            if res[0] == "stored" and res[1] == nid:
                why_not = self._lineage.rebuild(tid)
                if why_not is not None:
                    self.results[tid] = ("error", ObjectLostError(
                        f"object {tid.hex()} was kept on {where}, which {why}; it cannot be "
                        f"rebuilt: {why_not}"))
        for tid in [t for t, f in self._fetches.items() if f["node"] == nid]:
            del self._fetches[tid]
        self.borrows.node_died(nid)
        self.dvals.node_died(nid)  # it holds none of our values now (driver_values.py)
        self._used[nid] = 0.0
        self._count[nid] = 0
        self._cv.notify_all()
