"""The holds that keep a cluster actor alive (``repartir/cluster/handoff.py``,
``node_actors.NodeActors``), fed operations in the orders the network may deliver them, no
cluster: an actor ends exactly when its last hold goes."""

from __future__ import annotations

from repartir.cluster.handoff import HandlePass, rebuild_handle
import pytest

from repartir.cluster.node_actors import OWNER_HOLD, ActorKey, NodeActors
from repartir.errors import RepartirError

A, OWNER, LENDER, BORROWER = b"actor-1", b"owner", b"lender", b"borrower"


def node_with_actor(owner: bytes = OWNER) -> NodeActors:
    """A node holding one actor created by ``owner`` (the local actor: a stand-in)."""
    na = NodeActors("n" * 56, None, 10.0)
    na.received(owner, "create", ({"id": A, "detached": False},))
    na.handles[A] = object()
    na.holds[A] = {OWNER_HOLD: na._owners.pop(A)}
    return na


def op(na: NodeActors, peer: bytes, name: str, *args) -> None:
    na.received(peer, name, args)
    na.target(ActorKey(name)).remote(*args)


def test_a_handle_passed_on_keeps_the_actor_until_its_receiver_lets_go():
    na = node_with_actor()
    op(na, OWNER, "hold", A, b"h1")  # the owner passes a handle
    op(na, BORROWER, "hold", A, b"h1", True)  # the receiver claims it
    op(na, OWNER, "end", A)  # the owner's last handle is gone
    assert A in na.handles
    op(na, BORROWER, "unhold", A, b"h1")
    assert A not in na.handles and A not in na.holds


def test_an_unhold_before_its_hold_is_remembered():
    na = node_with_actor()
    op(na, BORROWER, "hold", A, b"h1", True)
    op(na, BORROWER, "unhold", A, b"h1")  # the receiver let go ...
    op(na, OWNER, "hold", A, b"h1")  # ... before the lender's hold arrived: ignored
    op(na, OWNER, "end", A)
    assert A not in na.handles


def test_the_owner_exit_ends_the_actor_whoever_holds_it():
    na = node_with_actor()
    op(na, OWNER, "hold", A, b"h1")
    op(na, OWNER, "end", A, True)
    assert A not in na.handles


def test_a_killed_driver_s_holds_go_and_its_actors_end():
    na = node_with_actor()
    op(na, OWNER, "hold", A, b"h1")
    op(na, BORROWER, "hold", A, b"h1", True)
    op(na, OWNER, "end", A)
    assert na.driver_gone(OWNER) == 0 and A in na.handles  # the hold is the borrower's
    assert na.driver_gone(BORROWER) == 1 and A not in na.handles
    na = node_with_actor()
    op(na, OWNER, "hold", A, b"h1")
    op(na, BORROWER, "hold", A, b"h1", True)
    assert na.driver_gone(OWNER) == 1 and A not in na.handles  # its owner is gone


def test_a_killed_driver_s_names_are_freed_on_the_head_but_not_detached_ones():
    head = NodeActors("h" * 56, {"n" * 56: {"Alive": True, "LastHeard": 1e18}}, 10.0)
    for name, detached in (("plain", False), ("kept", True)):
        rec = {"id": name.encode(), "node": "n" * 56, "detached": detached}
        op(head, OWNER, "name", "add", "default", name, rec, False)
    head.driver_gone(OWNER)
    assert set(head.names) == {("default", "kept")}


def test_a_handle_passes_through_a_daemon_unchanged():
    import pickle

    import repartir.cluster.handoff as handoff

    record = {"id": A, "class_name": "Counter"}
    saved = handoff._in_daemon
    handoff._in_daemon = True
    try:
        passing = pickle.loads(pickle.dumps(HandlePass(record, b"h1")))
    finally:
        handoff._in_daemon = saved
    assert type(passing) is HandlePass and passing.record == record and passing.hold == b"h1"
    assert passing.__reduce__() == (rebuild_handle, (record, b"h1"))


def test_a_handle_reaching_a_process_outside_the_cluster_says_so():
    with pytest.raises(RepartirError, match="not connected to that cluster"):
        rebuild_handle({"id": A, "class_name": "Counter"}, b"h1")
