"""Lineage of the returns of tasks with several returns (docs/cluster.md, "Failures"): a
part of :class:`~.lineage.Lineage`, whose tables it shares.

A task of ``num_returns=k`` makes its ``k`` returns with one run.  When it ends with some of
them kept on its node (those over ``CLUSTER_INLINE_RESULT_BYTES`` whose refs live), the
driver keeps its task once for all of them (a :class:`_Group`: the pickled arguments are
counted once against ``CLUSTER_LINEAGE_BYTES``) and a :class:`ReturnSpec` for each kept
return, which lives as a single result's lineage does: while the driver's ref to that
return lives or while the lineage of a task that took it as a node-kept argument is kept.
The group, and the lineage of the task's own node-kept arguments, live while one of its
returns' specs does.

::

    node N dies ─▶ for each return kept on N: Lineage.rebuild(return id)
                     ReturnSpec ─▶ its task t in flight already (run again for another
                     │             return lost with N): the return waits for that run
                     └─ else ─▶ Lineage._start(t): one retry, t sent again (or waits for
                                its own lost arguments, as a single result's task does);
                                returns.tasks[t] = ("multi", return ids, AGAIN)
    t's completion ─▶ Returns.done_locked: each return lost and still wanted (awaits)
                      takes the new value; the others (pulled by the driver meanwhile,
                      inline, or dropped since) are released on the node that ran t

So a task whose ``k`` returns were all lost with one node runs once more, not ``k`` times,
and one retry of its ``max_retries`` pays for all of them.  Every method is called with the
client's lock held.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReturnsLineage", "ReturnSpec", "AGAIN"]

#: The third field of ``returns.tasks[t]`` (``("multi", return ids, AGAIN)``) while task
#: ``t`` runs again to rebuild its lost returns.
AGAIN = "again"


class ReturnSpec:
    """The lineage of one return of a task of several: what a single result's spec holds
    (its task, whether its ref lives, how many tasks take it as a node-kept argument), and
    ``tid``, the id of the task that makes it.  Its bytes are its group's."""

    __slots__ = ("task", "ref", "users", "nbytes", "tid")

    def __init__(self, task: Any, tid: bytes) -> None:
        self.task, self.ref, self.users, self.nbytes, self.tid = task, True, 0, 0, tid


class _Group:
    """A task of several returns whose lineage is kept: all its return ids (in order), the
    ones whose :class:`ReturnSpec` is kept, the bytes of its pickled arguments."""

    __slots__ = ("oids", "kept", "nbytes")

    def __init__(self, oids: tuple[bytes, ...], kept: set[bytes], nbytes: int) -> None:
        self.oids, self.kept, self.nbytes = oids, kept, nbytes


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

    def returns_done(self, tid: bytes, task: Any, oids: list[bytes], again: bool) -> None:
        """Task ``tid`` of several returns ``oids`` ended and its returns are in the
        client's results: keep its lineage if some of them are kept on its node (their
        refs live: those dropped were released), else end its arguments' lineage."""
        if tid in self.groups:  # run again: its lineage stays as it is
            return
        c = self.c
        kept = {o for o in oids if c.results.get(o, ("",))[0] == "stored"}
        if not kept or again:  # nothing kept, or all its returns dropped while it ran again
            self.done(tid, "value", task, False)  # type: ignore[attr-defined]
            return
        nbytes = sum(memoryview(f).nbytes for f in task.payload)
        self.groups[tid] = _Group(tuple(oids), kept, nbytes)
        for o in kept:
            self.specs[o] = ReturnSpec(task, tid)
        self.nbytes += nbytes
        if self.nbytes > self.max_bytes:
            self._evict()  # type: ignore[attr-defined]

    def awaits(self, oid: bytes) -> bool:
        """Whether return ``oid`` of a task run again takes the value of that run: it was
        lost, and its lineage is still kept (its ref lives, or a task takes it)."""
        return oid not in self.c.results and oid in self.specs

    def _again(self, oid: bytes, spec: Any) -> str | None:
        """Object ``oid`` (of lineage ``spec``) was lost: start making it again and return
        ``None``, or return why it cannot be."""
        if type(spec) is not ReturnSpec:
            return self._start(oid, spec.task)  # type: ignore[attr-defined]
        c = self.c
        tid = spec.tid
        if tid not in c.inflight:  # else: run again already, for another lost return
            why = self._start(tid, spec.task)  # type: ignore[attr-defined]
            if why is not None:
                return why
            c.returns.tasks[tid] = ("multi", list(self.groups[tid].oids), AGAIN)
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
