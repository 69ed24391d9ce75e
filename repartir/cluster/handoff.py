"""Actor handles passed between the processes of a cluster (docs/cluster.md, "Actors on a
cluster"), and what a node daemon tells its workers so that they reach the cluster.

A :class:`~.actors.ClusterActorHandle` pickled in a process connected to a cluster (a
driver, or a worker or actor process of a node: :mod:`.inner`) travels as the actor's
record and a *hold id*; the process that unpickles it gets a handle of its own connection
to the cluster, which calls the actor on its node directly (so the calls of one process
reach the actor in the order it made them).  A node daemon only passes handles through
(a task's arguments, its result): there it stays a :class:`HandlePass`, pickled again as
it came.

Lifetime, as Ray's reference counting of actor handles: the actor's node keeps, per actor,
the holds that keep it alive (``node_actors.NodeActors.holds``): its owner's, and one per
handle that left a process.

::

    lender (pickles a handle)      the actor's node               borrower (unpickles it)
      ── hold(actor, hid) ─────────▶ holds[hid] = lender
      ── the handle travels (task argument, actor call argument, task result) ──▶ adopt hid
                                     holds[hid] = borrower ◀── hold(actor, hid, claim)
                                     holds -= hid ◀── unhold(actor, hid) ── last handle gone
    owner's last handle gone ─ end ▶ holds -= owner; no hold left: the actor ends

The ``hold`` goes out before the pickle leaves the lender, on the lender's connection to
the actor's node; an ``unhold`` that still arrives first (another connection) is
remembered, so the late ``hold`` is ignored.  An owner that shuts down or exits ends its
actors whoever holds them (``end`` with ``force``), as in Ray; detached actors keep no holds.
Each hold belongs to the driver (connection) that sent it, the lender's until the receiver
claims it: when the head stops listing a driver (killed: ``leases.py``), the nodes drop its
holds and end the actors it owned (``NodeActors.driver_gone``).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ..errors import NodeDiedError, RepartirError
from ..runtime import context
from .liveness import fresh_registry

__all__ = ["HandlePass", "rebuild_handle", "prepare_workers", "node_head", "connection",
           "HEAD_ENV", "DAEMON_ENV", "SERVER_KEY_ENV"]

#: Set by a node daemon for its workers and actors: the head's ``HOST:PORT``.
HEAD_ENV = "REPARTIR_CLUSTER_HEAD"
#: Set by a node daemon: its own pid (the daemon itself is no worker of the cluster).
DAEMON_ENV = "REPARTIR_CLUSTER_DAEMON"
SERVER_KEY_ENV = "REPARTIR_SERVER_KEY"

_in_daemon = False


def prepare_workers(head: str, server_key: bytes | None, token: str | None) -> None:
    """In a node daemon, before it starts its local node: the environment its worker and
    actor processes inherit, so that they connect to the cluster at ``head`` when a task
    needs it (:mod:`.inner`): the head's address, its public key in an encrypted cluster,
    the token when it was given as an argument (else they read ``REPARTIR_TOKEN`` or the
    token file as the daemon did).  Marks this process as a daemon (handles pass through)."""
    global _in_daemon
    _in_daemon = True
    os.environ[HEAD_ENV] = head
    os.environ[DAEMON_ENV] = str(os.getpid())
    if server_key is not None:
        os.environ[SERVER_KEY_ENV] = server_key.decode() if isinstance(server_key, bytes) \
            else server_key
    if token is not None:
        os.environ["REPARTIR_TOKEN"] = token


def node_head() -> str | None:
    """The head's ``HOST:PORT`` in a worker or actor process of a node, else ``None``."""
    head = os.environ.get(HEAD_ENV)
    if not head or os.environ.get(DAEMON_ENV) == str(os.getpid()):
        return None
    return head


def connection() -> Any:
    """This process's connection to a cluster (``ClusterClient``): a driver's, or a node
    worker's (made now if it has none yet), else ``None``."""
    if context.cluster is not None:
        return context.cluster
    if context.inner is not None:
        return context.inner.client()
    return None


class HandlePass:
    """An actor handle passing through a node daemon: pickled again as it came."""

    __slots__ = ("record", "hold")

    def __init__(self, record: dict, hold: bytes | None) -> None:
        self.record, self.hold = record, hold

    def __reduce__(self):
        return (rebuild_handle, (self.record, self.hold))

    def __repr__(self) -> str:
        return f"<actor handle {self.record['class_name']} in transit>"


def rebuild_handle(record: dict, hold: bytes | None) -> Any:
    """The handle a process gets when it unpickles one (see the module's docstring).

    Raises:
        RepartirError: this process is neither connected to a cluster nor one of its
            nodes' workers.
    """
    if _in_daemon:
        return HandlePass(record, hold)
    client = connection()
    if client is None:
        raise RepartirError(
            f"a handle to actor {record['class_name']} of a cluster reached a process that "
            f"is not connected to that cluster: pass it only to tasks and actors of the "
            f"cluster, or call repartir.init(address=...) first")
    if record.get("node") not in client.nodes_seen and \
            threading.current_thread() is not client._thread:
        try:
            fresh_registry(client)  # its node joined since this process last asked the head
        except NodeDiedError:
            pass  # the head is lost: calls on the handle say so
    return client.actors.adopt(record, hold)
