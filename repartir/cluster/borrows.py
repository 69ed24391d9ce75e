"""The driver's side of objects moving node to node (docs/cluster.md, "Objects between
nodes"): the argument that names an object kept on another node, the borrows that keep such
an object on its node while tasks elsewhere need it, and placement by argument bytes.

Pure state, no I/O: :class:`Borrows` answers each event (a task borrows objects, a task
ended, the driver dropped its ref) with the releases to send, so its rules are unit tests
(``tests/cluster/test_borrows.py``).

**Reference counting across nodes.**  A result kept on node B is released there (the
driver sends B ``("release", ids)``) only when the driver's last ref to it is gone *and*
every task that borrowed it (sent to another node with a :class:`RemoteArg`) has ended;
the node that ran such a task keeps its pulled copy only while its own tasks use it
(:class:`repartir.cluster.pull.Puller`).  So no node frees an object another node still
pulls or reads, and once every ref and every borrowing task is gone, nothing of it is left.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple

__all__ = ["RemoteArg", "Borrows", "prefer_by_bytes"]


class RemoteArg(NamedTuple):
    """A task argument that is a result kept on another node than the task's: the node that
    runs the task pulls it from there (docs/cluster.md, "Objects between nodes")."""

    object_id: bytes  #: the result's id (the id of the task that made it)
    node: str  #: the id of the node that keeps it
    address: str  #: that node's ``HOST:PORT``
    size: int  #: its encoded size in bytes, as the node reported at completion
    #: that node's CurveZMQ public key in an encrypted cluster (from the driver's registry,
    #: so that a node that joined a moment ago need not wait for its own copy), else None
    key: str | None = None


class Borrows:
    """Which objects kept on nodes are borrowed by tasks in flight, and which releases wait
    for those tasks.

    Attributes:
        by_task: ``{task id: [(object id, node id), ...]}``, the borrows of each task in
            flight.
        counts: ``{object id: tasks in flight borrowing it}``.
        deferred: ``{object id: node id}``, objects whose driver ref is gone but that are
            still borrowed: released when their last borrowing task ends.
    """

    def __init__(self) -> None:
        self.by_task: dict[bytes, list[tuple[bytes, str]]] = {}
        self.counts: dict[bytes, int] = {}
        self.deferred: dict[bytes, str] = {}

    def borrow(self, task: bytes, objects: Iterable[tuple[bytes, str]]) -> None:
        """Task ``task`` (in flight) takes the ``(object id, node id)`` pairs as arguments."""
        objects = list(objects)
        if not objects:
            return
        self.by_task.setdefault(task, []).extend(objects)
        for oid, _ in objects:
            self.counts[oid] = self.counts.get(oid, 0) + 1

    def task_ended(self, task: bytes) -> list[tuple[str, bytes]]:
        """Task ``task`` finished (or failed, or will never run): its borrows end.  Returns
        the ``(node id, object id)`` releases now due."""
        out = []
        for oid, _ in self.by_task.pop(task, ()):
            n = self.counts.get(oid, 0) - 1
            if n > 0:
                self.counts[oid] = n
                continue
            self.counts.pop(oid, None)
            nid = self.deferred.pop(oid, None)
            if nid is not None:
                out.append((nid, oid))
        return out

    def dropped(self, oid: bytes, node: str) -> bool:
        """The driver's ref to ``oid`` (kept on ``node``) is gone: ``True`` if it may be
        released now, ``False`` if its release waits for the tasks borrowing it."""
        if self.counts.get(oid, 0) > 0:
            self.deferred[oid] = node
            return False
        return True

    def node_died(self, node: str) -> None:
        """Objects kept on ``node`` are gone with it: nothing to release there any more."""
        for oid in [o for o, n in self.deferred.items() if n == node]:
            del self.deferred[oid]


def prefer_by_bytes(holdings: dict[str, int], place: Callable[[str], str | None]) -> str | None:
    """The node a task should go to, by its argument bytes: among the nodes holding some of
    them (``holdings``: ``{node id: bytes of the task's arguments kept there}``), the one
    holding the most that ``place`` accepts (``place(node)`` returns ``node`` when the task
    fits there); ``None`` when none does (the ordinary placement decides).  Ties go to the
    first node named."""
    for nid in sorted(holdings, key=lambda n: -holdings[n]):
        if holdings[nid] > 0 and place(nid) == nid:
            return nid
    return None
