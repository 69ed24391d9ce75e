"""Drivers' leases (repartir/cluster/leases.py, docs/cluster.md "Failures"): the head lists
the drivers heard within the node timeout; a node takes a driver it serves for gone once
the head's lists have left it out for that long, and only a driver the head listed once."""

from __future__ import annotations

from repartir.cluster.leases import DriverLeases, Holdings

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


def test_the_head_lists_the_drivers_heard_within_the_timeout():
    leases = DriverLeases(5.0)
    leases.heard(A)
    leases.heard(b"x" * 65)  # too long to be a driver id: ignored
    leases.heard("not bytes")
    assert leases.live() == [A]
    t = leases._heard[A]
    assert leases.live(now=t + 5.0) == [A]
    assert leases.live(now=t + 5.1) == []
    assert leases._heard == {}


def test_a_node_takes_a_driver_for_gone_after_the_timeout_only():
    h = Holdings(3.0)
    served = {A, B}
    assert h.gone(served, [A, B], now=0.0) == []
    assert h.gone(served, [B], now=1.0) == []  # A left out: the clock starts
    assert h.gone(served, [B], now=3.9) == []
    assert h.gone(served, [A, B], now=4.0) == []  # listed again: the clock resets
    assert h.gone(served, [B], now=5.0) == []
    assert h.gone(served, [B], now=8.1) == [A]


def test_a_node_never_judges_a_peer_the_head_never_listed():
    h = Holdings(1.0)
    assert h.gone({C}, [], now=0.0) == []
    assert h.gone({C}, [], now=100.0) == []  # a node, or repartir status: never a driver
    assert h.gone({C}, None, now=0.0) == []  # a head that sends no list: judge nothing
    assert h.gone({C}, [C], now=101.0) == []
    assert h.gone({C}, [], now=101.5) == []
    assert h.gone({C}, [], now=102.6) == [C]
    h.forget(C)
    assert h.gone({C}, [], now=200.0) == []  # forgotten: not judged again


def test_owners_follow_kept_and_released_objects():
    h = Holdings(1.0)
    h.kept(b"o1", A)
    h.kept(b"o2", B)
    h.released(b"o1")
    h.released(b"never kept")
    assert h.owner == {b"o2": B}


def test_a_head_up_longer_than_the_timeout_is_believed_at_once():
    """The head lists a driver until it has not heard it for the timeout: once such a head
    leaves out a driver it listed, the node drops it at once (not after a second timeout)."""
    h = Holdings(3.0)
    served = {A, B}
    assert h.gone(served, [A, B], uptime=10.0) == []
    assert h.gone(served, [B], uptime=11.0) == [A]
    assert h.gone({C}, [], uptime=11.0) == []  # never listed: never judged


def test_a_head_that_restarted_lately_judges_no_driver():
    """A head up for less than the timeout may not have heard every live driver yet."""
    h = Holdings(3.0)
    served = {A}
    assert h.gone(served, [A], uptime=100.0) == []
    assert h.gone(served, [], uptime=0.5) == []  # restarted: A has not asked it yet
    assert h.gone(served, [], uptime=3.0) == []
    assert h.gone(served, [A], uptime=3.5) == []  # A asked the new head
    assert h.gone(served, [], uptime=3.6) == [A]


def test_a_driver_that_said_goodbye_is_listed_no_more():
    leases = DriverLeases(5.0)
    leases.heard(A)
    leases.heard(B)
    leases.left(A)
    leases.left("not bytes")
    assert leases.live() == [B]
    assert leases.uptime() >= 0.0
