"""Values held by a driver connected to a cluster (a ``put`` value, a small result kept in
the driver) sent to each node at most once (docs/cluster.md, "Values: copies, as locally").

A task or an actor call that takes the ref of such a value, when its encoded size is at
least ``WIRE_INBAND_BYTES`` (the size from which the wire sends buffers out of band), does
not carry the value: its arguments name it with a :class:`DriverArg`, and the task keeps the
value's frames beside its payload (``task.dvals``).  When the driver's loop sends tasks to a
node, it first sends that node, on the same connection, ``("keep", [(object id, frames),
...])`` for the values of those tasks the node does not hold yet; the node stores each in its
object store, pinned, keyed by the driver's object id, as it keeps its results (its
``stored`` table, owned by this driver: :func:`keep_values`), and passes the task its own
ref to the copy.  A connection delivers in order, so a task finds the values sent before it.

::

    driver ── ("keep", [(id, frames)]) ──▶ node   (once per node and value)
    driver ── ("tasks", fns, [(tid, key, (DriverArg(id), ...))]) ──▶ node   (each task)
    driver ── ("release", [id]) ──▶ node   (the driver's ref gone, its tasks ended)

**Who holds what.**  :class:`DriverValues` knows which nodes hold each value (``holders``).
Each task sent with a value borrows it (``Borrows``, under the pseudo node :data:`DRIVER`):
once the driver's last ref is gone *and* every task that took it has ended, the driver
sends ``("release", ids)`` to every node holding it.  A driver that says goodbye, or whose
lease ends, has its copies dropped with the rest of what the nodes keep for it
(``leases.py``); a node that dropped them (``("forgot", ...)``), died or restarted no longer
counts as a holder, so a task sent there later (a retry, an actor restarted there, a
rebuild from lineage) brings the value again.  A value is immutable for the driver (``put``
keeps a private copy, ``get`` returns copies), so tasks sharing the node's copy see what
each would have got by value; arguments that are not refs are still captured by value at
``.remote()`` (values.py).
"""

from __future__ import annotations

import pickle
import sys
from typing import Any, Iterable, NamedTuple

from ..config import WIRE_INBAND_BYTES
from ..runtime import driver as local_driver
from .wire import encode

__all__ = ["DRIVER", "DriverArg", "DriverValues", "keep_values"]

#: The pseudo node id under which tasks borrow driver values (``Borrows``).
DRIVER = ""


class DriverArg(NamedTuple):
    """A task argument that is a value held by the driver, sent to the task's node before
    the task (once per node): the node passes its own ref to its copy."""

    object_id: bytes


def _nbytes(frames: list) -> int:
    return sum(memoryview(f).nbytes for f in frames)


class DriverValues:
    """The driver's side (see the module's docstring).

    Attributes:
        holders: ``{object id: node ids holding a copy}``.
        sent_bytes: ``{node id: bytes}`` of task arguments sent to each node so far (the
            tasks' payloads and the values sent with ``keep``), a counter for tests and
            benchmarks.
        values_sent: ``{node id: values}`` sent to each node with ``keep`` so far.
    """

    def __init__(self) -> None:
        self.holders: dict[bytes, set[str]] = {}
        self.sent_bytes: dict[str, int] = {}
        self.values_sent: dict[str, int] = {}
        # object id -> its frames (None: smaller than WIRE_INBAND_BYTES, travels inline),
        # while the driver's ref lives
        self._encoded: dict[bytes, list | None] = {}

    # ------------------------------------------------------------------ submitting

    def arg(self, oid: bytes, res: tuple) -> DriverArg | None:
        """What a task sends for the argument ``oid`` whose result is ``res``: a
        :class:`DriverArg` for a value held by the driver of at least
        ``WIRE_INBAND_BYTES`` encoded, else ``None`` (the value travels inline).

        Raises:
            SerializationError: the value cannot be pickled.
        """
        if res[0] != "value":
            return None
        if oid not in self._encoded:
            frames = encode(res[1])
            self._encoded[oid] = frames if _nbytes(frames) >= WIRE_INBAND_BYTES else None
        return None if self._encoded[oid] is None else DriverArg(oid)

    def frames_of(self, args: Iterable, kwargs: dict | None = None) -> dict | None:
        """``{object id: frames}`` of the :class:`DriverArg` among ``args`` and
        ``kwargs``' values (a task's ``dvals``), or ``None``."""
        out = {a.object_id: self._encoded[a.object_id]
               for a in (*args, *(kwargs or {}).values()) if type(a) is DriverArg}
        return out or None

    # ------------------------------------------------------------------ the loop

    def keeps(self, nid: str, tasks: Iterable[tuple[bytes, Any]], borrows: Any) -> tuple | None:
        """The ``("keep", ...)`` message to send node ``nid`` before ``tasks`` (``(task id,
        task)`` pairs; ``None`` tasks are skipped): the values they take that ``nid`` does
        not hold; ``None`` if none.  Each task borrows its values (``borrows``) until it
        ends; a value whose ref is gone already is released when they end.  Holds the
        client's lock."""
        out: dict[bytes, list] = {}
        held = self.holders
        for tid, task in tasks:
            dvals = getattr(task, "dvals", None)
            if not dvals:
                continue
            mine = borrows.by_task.get(tid, ())
            for oid, frames in dvals.items():
                if (oid, DRIVER) not in mine:
                    borrows.borrow(tid, [(oid, DRIVER)])
                    if oid not in self._encoded:  # its ref is gone: released once they end
                        borrows.deferred[oid] = DRIVER
                if nid not in held.get(oid, ()) and oid not in out:
                    out[oid] = frames
        if not out:
            return None
        return ("keep", [(oid, [f[0], *(pickle.PickleBuffer(memoryview(b)) for b in f[1:])])
                         for oid, f in out.items()])

    def sent(self, nid: str | None, fns: Any, msg: Any) -> None:
        """``msg`` went to node ``nid`` (``fns`` not ``None``: a batch of tasks, ``msg``
        its items)."""
        if nid is None:
            return
        if fns is not None:
            n = sum(_nbytes(item[2]) for item in msg if item[2] is not None)
        elif msg[0] == "keep":
            n = 0
            for oid, frames in msg[1]:
                self.holders.setdefault(oid, set()).add(nid)
                n += _nbytes(frames)
            self.values_sent[nid] = self.values_sent.get(nid, 0) + len(msg[1])
        else:
            return
        self.sent_bytes[nid] = self.sent_bytes.get(nid, 0) + n

    def dropped(self, oid: bytes, borrows: Any, releases: dict) -> None:
        """The driver's ref to the value ``oid`` is gone: its copies are released now
        (added to ``releases``, ``{node id: [object id]}``), or once the tasks that took it
        end.  Holds the client's lock."""
        if self._encoded.pop(oid, None) is None:
            return  # small, or never an argument: never sent alone
        if borrows.dropped(oid, DRIVER):
            releases.setdefault(DRIVER, []).append(oid)

    def expand(self, releases: dict) -> None:
        """Replace the releases due under :data:`DRIVER` by one per node holding a copy."""
        for oid in releases.pop(DRIVER, ()):
            for nid in self.holders.pop(oid, ()):
                releases.setdefault(nid, []).append(oid)

    def node_died(self, nid: str) -> None:
        """Node ``nid`` is gone (or restarted): it holds nothing of ours any more."""
        for oid in [o for o, nodes in self.holders.items() if nid in nodes]:
            self.forgot(nid, [oid])

    def forgot(self, nid: str, oids: Any) -> None:
        """Node ``nid`` dropped the objects ``oids`` it kept for this driver (leases.py)."""
        for oid in oids if isinstance(oids, list) else ():
            nodes = self.holders.get(oid)
            if nodes is not None:
                nodes.discard(nid)
                if not nodes:
                    del self.holders[oid]


def keep_values(d: Any, peer: bytes, entries: list) -> None:
    """Node daemon ``d`` keeps the values ``entries`` (``(object id, frames)``) that driver
    ``peer`` sent: each stored in the local object store, in ``d.stored`` (owned by the
    driver, so released by its ``release``, goodbye or lease end).  A value that cannot be
    unpickled or stored is logged and left out (the tasks taking it fail, naming it)."""
    for oid, frames in entries:
        try:
            value = pickle.loads(frames[0], buffers=frames[1:])
            ref = local_driver.client().put(value)
        except Exception as exc:  # noqa: BLE001 -- reported by the tasks that take it
            print(f"cannot keep value {oid.hex()} of driver {peer.hex()[:12]}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            continue
        d.stored[oid] = [ref, ()]  # no frames: nothing pulls a driver's value from here
        d.holdings.kept(oid, peer)
