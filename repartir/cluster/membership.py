"""Membership of the nodes in the head's registry: heartbeats, nodes declared dead, nodes that
come back, a head that restarts (docs/cluster.md, "Failures").

Both sides of it live here, as functions of a :class:`~.node.NodeDaemon`:

::

    node                                         head (its registry)
    ────                                         ───────────────────
    register (record, incarnation k)  ────────▶  alive; "welcome"
    heartbeat (k) every CLUSTER_HEARTBEAT_S ───▶  alive: LastHeard = now
                                                  silent > REPARTIR_NODE_TIMEOUT: dead
    heartbeat (k) of a node declared dead ─────▶  "dead", k
    drops what it held for drivers, k + 1  ◀────
    register (k + 1)  ─────────────────────────▶  alive again, as incarnation k + 1
    heartbeat (k) to a head that restarted ────▶  "unknown", k (it has no record of it)
    register (k), keeping its state  ◀──────────

- A node's **incarnation** counts the times it was declared dead and came back.  A node
  declared dead (its heartbeats stopped: it was stopped, frozen or cut off) has had its tasks
  resubmitted and its objects given up by every driver; when its heartbeats reach the head
  again, the head answers ``dead`` instead of taking them, and the node drops everything it
  held for drivers (the results it kept; the tasks still running are cancelled, as
  ``repartir.cancel`` does, and their results never delivered; the actors it held are
  killed: their drivers have restarted them elsewhere, or given up on them), then
  registers again with the next incarnation.  A driver that sees a
  node's incarnation change treats it as a node that died and a new one that joined, so no
  stale result can reach it: it connects to the new incarnation afresh, and the old
  connection, which the results of the old one were addressed to, is closed.
- A **head that restarts** (same address and token) knows no node: it answers their next
  heartbeat with ``unknown`` and they register again, keeping their incarnation, their
  tasks and their objects (a driver whose head came back within ``REPARTIR_NODE_TIMEOUT``
  carries on; one that waited longer has failed its tasks and needs ``shutdown()`` and a
  new ``init()``).
- A node that a driver knows but the head's registry no longer lists (its records are
  gone with a head that restarted, and this one never registered again: it was the old
  head's own node, or it died meanwhile) is dead to the driver once it has been missing for
  ``REPARTIR_NODE_TIMEOUT`` (:func:`unlisted_nodes`).  A driver that hears another daemon
  (another sender id) at a node's address, the head's own node restarted with the head,
  takes that node for dead at its next look at the registry (:func:`restarted`): that
  daemon knows none of its tasks, and what it says is dropped.  A driver whose registry
  names another node at the address of a node it is connected to holds that node for
  dead at once and does not connect to it again
  (:meth:`~.client_nodes.ClientNodes._replaced_at`).
- A driver never blocks on a node that takes nothing (frozen, cut off): a connection whose
  queue is full (the kernel's buffers, then ZeroMQ's high-water mark of 1,000 messages) is
  not sent to (:func:`writable`); the batch waits in the driver (:func:`requeue`) until the
  node takes messages again or is declared dead.
- Heartbeats queued while a link was down may reach the head late, in a burst: one that
  carries an older incarnation than the registry's is ignored, so a node drops its state
  once per time it was declared dead.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import zmq

from ..config import CLUSTER_HEARTBEAT_S
from .node_returns import cancel_local


__all__ = ["on_node_message", "on_head_message", "register", "unlisted_nodes", "restarted",
           "writable", "requeue"]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def register(d: Any) -> None:
    """Send the head this node's record as a registration (at most once per heartbeat
    period: a burst of ``unknown`` answers makes one)."""
    now = time.monotonic()
    if now - getattr(d, "_registered_at", -1e9) < CLUSTER_HEARTBEAT_S:
        return
    d._registered_at = now
    assert d.head_ep is not None
    d.head_ep.send(("register", d._record()))


# ------------------------------------------------------------------ the head's side

def on_node_message(d: Any, peer: bytes, kind: str, record: dict) -> None:
    """The head takes a node's ``register`` or ``heartbeat`` (see the module's docstring)."""
    nid, inc = record["NodeID"], record.get("Incarnation", 0)
    d._nodes()  # declare dead the nodes silent for too long, before judging this one
    old = d.registry.get(nid)
    known = -1 if old is None else old.get("Incarnation", 0)
    if inc < known:
        return  # a heartbeat or registration of an earlier incarnation, delivered late
    if kind == "register":
        d._heard(record)
        if old is None:
            _say(f"node {nid[:12]} joined from {record['NodeManagerAddress']}")
        else:
            _say(f"node {nid[:12]} at {record['NodeManagerAddress']} joined again "
                 f"(incarnation {inc})")
        d.router.send(("welcome", d.node_id, inc), to=peer)
    elif old is None:
        d.router.send(("unknown", inc), to=peer)  # this head restarted since
    elif inc == known and not old["Alive"]:
        d.router.send(("dead", inc), to=peer)
    else:
        d._heard(record)


# ------------------------------------------------------------------ the node's side

def on_head_message(d: Any, value: Any) -> None:
    """A node takes the head's answer: ``welcome``, ``unknown`` (register again) or
    ``dead`` (drop what was held for drivers, register as the next incarnation)."""
    kind = value[0] if isinstance(value, tuple) and value else None
    if kind == "unknown" and value[1] == d.incarnation:
        _say("the head does not know this node (it restarted): registering again")
        register(d)
    elif kind == "dead" and value[1] == d.incarnation:
        dropped, running = len(d.stored), len(d.pending)
        blobs = getattr(d, "blobs", None)  # what it served to other nodes (pull.py)
        for oid in list(d.stored) if blobs is not None else ():
            blobs.forget(oid)
        d.stored.clear()
        # as repartir.cancel: their CPUs come back; newest first, so that none waiting in
        # the runtime starts on a CPU that an older one frees (node_returns.py)
        for _, out in reversed(list(d.pending.values())):
            cancel_local(out)
        d.pending.clear()  # their completions are dropped as they come (no one waits)
        queue = getattr(d, "queue", None)  # tasks queued here, not yet run (stealing.py)
        if queue:
            running += len(queue)
            queue.clear()
        actors = getattr(d, "actors", None)  # the drivers restart them elsewhere, or gave up
        ended = actors.ids() if actors is not None else []
        for aid in ended:
            try:
                actors.kill(aid, True)
            except Exception:  # noqa: BLE001 -- gone already
                pass
        d.incarnation += 1
        d._registered_at = -1e9
        _say(f"this node was declared dead by the head (no heartbeat reached it for "
             f"{d.timeout:g} s): dropped {dropped} result(s) kept here, cancelled "
             f"{running} task(s) queued or running and killed {len(ended)} actor(s), which the "
             f"drivers have resubmitted or restarted elsewhere; "
             f"registering again as incarnation {d.incarnation}")
        register(d)


# ------------------------------------------------------------------ a driver's side

def unlisted_nodes(seen: dict[str, dict], records: list[dict], since: dict[str, float],
                   timeout: float, now: float | None = None) -> list[str]:
    """The nodes a driver takes for dead because the head's registry (``records``) has not
    listed them for more than ``timeout`` seconds; they are marked not alive in ``seen``
    (node id -> record).  ``since`` (node id -> the first time it was missing,
    ``time.monotonic()`` seconds) is the state kept between calls."""
    now = time.monotonic() if now is None else now
    listed = {rec["NodeID"] for rec in records}
    dead = []
    for nid, rec in seen.items():
        if nid in listed or not rec["Alive"]:
            since.pop(nid, None)
            continue
        if now - since.setdefault(nid, now) > timeout:
            seen[nid] = dict(rec, Alive=False)
            del since[nid]
            dead.append(nid)
    return dead


def restarted(c: Any, nid: str, sender: bytes) -> bool:
    """Whether a message on driver ``c``'s connection to node ``nid`` comes from another
    daemon than the first one heard there (``sender``: the signed sender id of its
    endpoint, new for every process); such messages are to be dropped, and the node is
    dead to the driver at its next look at the registry (by then the registry lists the
    daemon that answers there now, when it is a restarted head, so that the tasks
    resubmitted can go to its node)."""
    known = c._senders.setdefault(nid, sender)
    if known == sender:
        return False
    c._unlisted[nid] = float("-inf")  # see unlisted_nodes: dead when next not listed
    return True


def writable(ep: Any) -> bool:
    """Whether a message can be sent on endpoint ``ep`` without blocking (a DEALER blocks
    once its queue to a peer that takes nothing is full)."""
    return bool(ep.socket.poll(0, zmq.POLLOUT))


def requeue(c: Any, ep: Any, fns: dict | None, items: Any) -> None:
    """Put back into driver ``c``'s queues what could not be sent on ``ep``: a batch of
    tasks (and the functions that went with it), or the first request of a pull."""
    with c._lock:
        nid = c._ep_node.get(ep.socket)
        if nid is None:
            return  # its node died meanwhile: its tasks were resubmitted already
        if fns is None:
            tid = items[1]
            c._fetches.pop(tid, None)
            c._fetch_start.append(tid)
        else:
            c._fn_sent[nid].difference_update(fns)
            c._outbox.setdefault(nid, []).extend(tid for tid, _, _ in items)
