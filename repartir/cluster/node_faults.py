"""One node's bad message fails that node's tasks, not every task of the driver
(docs/cluster.md, "Drivers").

A node answers a message of this driver that it could not verify (its MAC does not
verify: another token, or frames changed on the way) with a refusal, which the driver's
``recv`` raises as :class:`~repartir.errors.TokenError`; the tasks that message carried
never run there.  Which tasks they were is not known, so every task this driver has in
flight on that node fails, with the node's reason; tasks on other nodes, results kept and
the connection itself are untouched (the next batch sent there carries its functions
again, in case the refused message brought them).  An error while handling one node's message (a
message of an unexpected shape) is treated the same way.

On the node's side, a task whose arguments or function cannot be unpickled there fails with
a :class:`~repartir.errors.TaskError` naming it (:func:`unpickling_failed`), as it would in a
worker of a local node.
"""

from __future__ import annotations

import logging

from typing import Any

from ..errors import RepartirError
from ..serialization import error_from_payload, error_payload

__all__ = ["node_message_failed", "unpickling_failed"]

log = logging.getLogger("repartir.cluster")


def unpickling_failed(rf: Any, exc: BaseException) -> BaseException:
    """The error of a task whose arguments (or function: ``rf`` ``None``) do not unpickle on
    this node: a :class:`~repartir.errors.TaskError` naming the task, with the traceback of
    the unpickling, as a worker's is locally (an argument's ``__setstate__`` that raises, a
    class missing on the node)."""
    name = getattr(rf, "_name", None) or "<a function that could not be unpickled>"
    return error_from_payload(error_payload(exc, name))


def node_message_failed(client, nid: str, exc: BaseException) -> None:
    """Fail the tasks ``client`` has in flight on node ``nid`` with ``exc`` named in the
    error; log it once."""
    rec = client.nodes_seen.get(nid, {})
    where = f"node {nid[:12]} at {rec.get('NodeManagerAddress', '?')}"
    log.warning("%s: %s: %s; failing this driver's tasks there", where,
                type(exc).__name__, exc)
    with client._lock:
        if nid in client._fn_sent:  # the refused message may have carried functions:
            client._fn_sent[nid] = set()  # the next batch carries them again
        for tid, task in list(client.inflight.items()):
            if task.node != nid:
                continue
            del client.inflight[tid]
            client._used[nid] = client._used.get(nid, 0.0) - task.demand.get("CPU", 0.0)
            client._count[nid] = client._count.get(nid, 0) - 1
            client._due.extend(client.borrows.task_ended(tid))
            client.results[tid] = ("error", RepartirError(
                f"task {tid.hex()} was sent to {where}, which could not take a message of "
                f"this driver ({type(exc).__name__}: {exc}); the tasks this driver had "
                f"there fail, those on other nodes go on. Submit it again"))
        client._cv.notify_all()
