"""Lineage of the returns of tasks of several returns and of the items of generators
(docs/cluster.md, "Failures"): a part of :class:`~.lineage.Lineage`, whose tables it shares.

A task of ``num_returns=k`` makes its ``k`` returns with one run, a generator task all its
items.  When such a task ends with some of them kept on its node (those over
``CLUSTER_INLINE_RESULT_BYTES`` whose refs live; a generator's items not handed out yet
count while the generator lives), the driver keeps its task once for all of them (a
:class:`_Group`: the pickled arguments count once against ``CLUSTER_LINEAGE_BYTES``) and a
:class:`ReturnSpec` for each kept one, which lives as a single result's lineage does: while
the driver's ref to it lives or while the lineage of a task that took it as a node-kept
argument is kept.  The group, and the lineage of the task's own node-kept arguments, live
while one of its specs does.

::

    node N dies ─▶ for each return (item) kept on N: Lineage.rebuild(its id)
                     ReturnSpec ─▶ its task t in flight already (run again for another
                     │             one lost with N): it waits for that run
                     └─ else ─▶ Lineage._start(t): one retry, t sent again (or waits for
                                its own lost arguments, as a single result's task does);
                                Returns.run_again_locked: returns.tasks[t] =
                                ("multi", return ids, AGAIN), or the generator's stream
                                marked ``again`` (the item's index in its ``lost``)
    t's completion ─▶ Returns.done_locked: each return lost and still wanted (awaits)
    (a generator:     takes the new value; the others (pulled by the driver meanwhile,
     each item as     inline, or dropped since) are released on the node that ran t;
     it comes)        a lost item the run again did not yield raises ObjectLostError

So a task whose returns (items) were lost with one node runs once more, not once per lost
object, and one retry of its ``max_retries`` pays for all of them.  Every method is called
with the client's lock held.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReturnsLineage", "ReturnSpec", "AGAIN"]

#: The third field of ``returns.tasks[t]`` (``("multi", return ids, AGAIN)``) while task
#: ``t`` runs again to rebuild its lost returns.
AGAIN = "again"


class ReturnSpec:
    """The lineage of one return of a task of several (or one item of a generator): what a
    single result's spec holds (its task, whether its ref lives, how many tasks take it as
    a node-kept argument), ``tid``, the id of the task that makes it, and ``index``, its
    place among the task's returns (items).  Its bytes are its group's."""

    __slots__ = ("task", "ref", "users", "nbytes", "tid", "index")

    def __init__(self, task: Any, tid: bytes, index: int) -> None:
        self.task, self.ref, self.users, self.nbytes = task, True, 0, 0
        self.tid, self.index = tid, index


class _Group:
    """A task of several returns (or a generator) whose lineage is kept: all its return ids,
    in order (a generator: none, its stream knows its items); the ones whose
    :class:`ReturnSpec` is kept; the bytes of its pickled arguments; the generator's stream
    (``returns._Stream``), else ``None``."""

    __slots__ = ("oids", "kept", "nbytes", "stream")

    def __init__(self, oids: tuple[bytes, ...], kept: set[bytes], nbytes: int,
                 stream: Any) -> None:
        self.oids, self.kept, self.nbytes, self.stream = oids, kept, nbytes, stream


class ReturnsLineage:
    """Mixed into :class:`~.lineage.Lineage` (see the module's docstring); uses its
    ``c``, ``specs``, ``deps``, ``nbytes``, ``max_bytes``, ``done``, ``_start``,
    ``_unuse`` and ``_evict``.

    Attributes:
        groups: ``{task id: _Group}``, tasks of several returns whose lineage is kept.
    """

    c: Any
    specs: dict
    deps: dict
    nbytes: int
    max_bytes: int

    def _init_groups(self) -> None:
        self.groups: dict[bytes, _Group] = {}

    def returns_done(self, tid: bytes, task: Any, oids: dict[int, bytes], again: bool,
                     stream: Any = None) -> None:
        """Task ``tid`` ended and its returns are in the client's results: keep its lineage
        if some of them are kept on a node (their refs live: those dropped were released),
        else end its arguments' lineage.  ``oids``: ``{index: id}`` of all its returns (a
        generator, that of ``stream``: of its items that came kept on a node)."""
        if tid in self.groups:  # run again: its lineage stays as it is
            return
        c = self.c
        kept = {o for o in oids.values() if c.results.get(o, ("",))[0] == "stored"}
        if not kept or again:  # nothing kept, or all its returns dropped while it ran again
            self.done(tid, "value", task, False)  # type: ignore[attr-defined]
            return
        nbytes = sum(memoryview(f).nbytes for f in task.payload)
        self.groups[tid] = _Group(() if stream else tuple(oids.values()), kept, nbytes, stream)
        for i, o in oids.items():
            if o in kept:
                self.specs[o] = ReturnSpec(task, tid, i)
        self.nbytes += nbytes
        if self.nbytes > self.max_bytes:
            self._evict()  # type: ignore[attr-defined]

    def awaits(self, oid: bytes) -> bool:
        """Whether return (item) ``oid`` of a task run again takes the value of that run:
        it was lost, and its lineage is still kept (its ref lives, or a task takes it)."""
        return oid not in self.c.results and oid in self.specs

    def _again(self, oid: bytes, spec: Any) -> str | None:
        """Object ``oid`` (of lineage ``spec``) was lost: start making it again and return
        ``None``, or return why it cannot be."""
        if type(spec) is not ReturnSpec:
            return self._start(oid, spec.task)  # type: ignore[attr-defined]
        c = self.c
        tid = spec.tid
        group = self.groups[tid]
        if tid not in c.inflight:  # else: run again already, for another lost one
            why = self._start(tid, spec.task)  # type: ignore[attr-defined]
            if why is not None:
                return why
            c.returns.run_again_locked(tid, group.oids, group.stream)
        if group.stream is not None:
            group.stream.lost.add(spec.index)  # (returns._Stream)
        c.results.pop(oid, None)
        return None

    def _return_dropped(self, oid: bytes, spec: ReturnSpec) -> None:
        """The spec of return ``oid`` was dropped: its group goes with its last one."""
        group = self.groups.get(spec.tid)
        if group is None:
            return
        group.kept.discard(oid)
        if group.kept:
            return
        del self.groups[spec.tid]
        self.nbytes -= group.nbytes
        if spec.tid not in self.c.inflight:  # else its completion ends them (returns_done)
            for d in self.deps.pop(spec.tid, ()):
                self._unuse(d)  # type: ignore[attr-defined]
