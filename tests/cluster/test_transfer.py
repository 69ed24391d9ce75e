"""Objects between nodes (docs/cluster.md, "Objects between nodes"), on the loopback cluster
of ``test_cluster.py`` (its ``cluster`` fixture: a head with ``on_head`` and a node with
``big_mem``, one CPU each): a result kept on one node and taken by a task on the other is
pulled node to node, never through the driver; pulled once for the tasks that take it
together; kept on its node while a borrowing task needs it, and freed everywhere once the
refs and the borrowing tasks are gone; a task goes to the node holding most of its argument
bytes.  The pure rules (borrows, placement by bytes) are tested without a cluster."""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest

import repartir
from repartir.cluster import client as cluster_client
from repartir.cluster.borrows import Borrows, prefer_by_bytes
from repartir.errors import ObjectLostError

from test_cluster import cluster  # noqa: F401  (the module-scoped loopback cluster)

MIB = 1 << 20


@repartir.remote(resources={"on_head": 1})
def make_on_head(n, delay=0.0):
    time.sleep(delay)
    return np.arange(n // 8, dtype=np.float64)


@repartir.remote(resources={"big_mem": 1})
def make_on_node(n):
    return np.arange(n // 8, dtype=np.float64)


@repartir.remote(resources={"big_mem": 1})
def total_on_node(a, delay=0.0):
    time.sleep(delay)
    return repartir.get_runtime_context().get_node_id(), float(a.sum()), a.nbytes


@repartir.remote(resources={"big_mem": 1})
def total_when_gate(a, gate):
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return float(a.sum())


@repartir.remote
def where_two(a, b):
    return repartir.get_runtime_context().get_node_id(), a.nbytes + b.nbytes


def records() -> dict[str, dict]:
    """The registry's records by role (``head``, ``node``), as the driver last heard them."""
    client = cluster_client.active()
    with client._lock:
        recs = list(client.nodes_seen.values())
    return {("head" if r["Head"] else "node"): r for r in recs}


def wait_records(check, timeout: float = 20.0) -> dict[str, dict]:
    """The records once ``check(records)`` holds (they refresh each heartbeat)."""
    deadline = time.monotonic() + timeout
    while True:
        repartir.nodes()  # waits for a fresh registry
        recs = records()
        if check(recs):
            return recs
        assert time.monotonic() < deadline, f"not reached within {timeout} s: {recs}"


def expected_sum(n: int) -> float:
    k = n // 8
    return float(k * (k - 1) // 2)


def test_a_result_is_pulled_node_to_node_once_not_through_the_driver(cluster):  # noqa: F811
    client = cluster_client.active()
    n = 8 * MIB
    before = wait_records(lambda r: "head" in r and "node" in r)
    used = {k: r["StoreUsedBytes"] for k, r in before.items()}
    driver_before = client.pulled_bytes
    ref = make_on_head.remote(n)
    repartir.wait([ref], timeout=60)
    # two tasks that take it at once: the node pulls it once for both
    outs = repartir.get([total_on_node.remote(ref), total_on_node.remote(ref)], timeout=60)
    node_id = before["node"]["NodeID"]
    assert outs == [(node_id, expected_sum(n), n)] * 2
    after = wait_records(lambda r: r["node"]["PulledBytes"] > before["node"]["PulledBytes"]
                         and r["head"]["ServedBytes"] > before["head"]["ServedBytes"])
    # (each counter reaches the registry with its own node's heartbeat)
    pulled = after["node"]["PulledBytes"] - before["node"]["PulledBytes"]
    served = after["head"]["ServedBytes"] - before["head"]["ServedBytes"]
    assert n < pulled < n + MIB, "the blob is the array plus a small header, pulled once"
    assert served == pulled
    assert client.pulled_bytes == driver_before, "the bytes went through the driver"
    del ref, outs
    gc.collect()
    # nothing of it left: not kept on the head, not cached on the node, no block of it in
    # either store (small blocks of the functions' first calls may stay: < 1 MiB)
    wait_records(lambda r: r["head"]["Stored"] == 0 and r["node"]["Cached"] == 0
                 and all(r[k]["StoreUsedBytes"] < used[k] + MIB for k in used))


def test_a_copy_cached_while_a_task_holds_it_is_not_pulled_again(cluster):  # noqa: F811
    n = 4 * MIB
    gate = str(cluster["tmp"] / "transfer-gate")
    ref = make_on_head.remote(n)
    repartir.wait([ref], timeout=60)
    first = total_when_gate.remote(ref, gate)  # holds the node's copy until the gate opens
    held = wait_records(lambda r: r["node"]["Cached"] == 1)
    second = total_on_node.remote(ref)  # arrives while the copy is cached
    wait_records(lambda r: r["node"]["Running"] + r["node"]["Queued"] == 2)
    open(gate, "w").close()
    assert repartir.get(first, timeout=60) == expected_sum(n)
    assert repartir.get(second, timeout=60)[1:] == (expected_sum(n), n)
    after = wait_records(lambda r: r["node"]["Cached"] == 0)
    assert after["node"]["PulledBytes"] == held["node"]["PulledBytes"]
    del ref, first, second
    gc.collect()
    wait_records(lambda r: r["head"]["Stored"] == 0 and r["node"]["Stored"] == 0)


def test_a_borrowed_object_outlives_the_drivers_ref_until_the_task_ends(cluster):  # noqa: F811
    n = 4 * MIB
    ref = make_on_head.remote(n)
    repartir.wait([ref], timeout=60)
    out = total_on_node.remote(ref, delay=1.0)
    del ref  # the driver's only ref: the head must keep it for the task on the node
    gc.collect()
    assert repartir.get(out, timeout=60)[1:] == (expected_sum(n), n)
    del out
    gc.collect()
    wait_records(lambda r: r["head"]["Stored"] == 0 and r["node"]["Cached"] == 0
                 and r["node"]["Stored"] == 0)


def test_a_task_goes_to_the_node_holding_most_of_its_argument_bytes(cluster):  # noqa: F811
    small = make_on_head.remote(1 * MIB)  # first argument, on the head
    big = make_on_node.remote(8 * MIB)  # second, on the node: more bytes
    repartir.wait([small, big], num_returns=2, timeout=60)
    node_id = records()["node"]["NodeID"]
    got = repartir.get([where_two.remote(small, big) for _ in range(3)], timeout=60)
    assert got == [(node_id, 9 * MIB)] * 3
    head_id = records()["head"]["NodeID"]
    small2 = make_on_head.remote(8 * MIB)
    big2 = make_on_node.remote(1 * MIB)
    repartir.wait([small2, big2], num_returns=2, timeout=60)
    assert repartir.get(where_two.remote(big2, small2), timeout=60) == (head_id, 9 * MIB)
    del small, big, small2, big2
    gc.collect()
    wait_records(lambda r: r["head"]["Stored"] == 0 and r["node"]["Stored"] == 0
                 and r["node"]["Cached"] == 0 and r["head"]["Cached"] == 0)


def test_an_object_its_node_no_longer_keeps_fails_the_task_clearly(cluster):  # noqa: F811
    client = cluster_client.active()
    head_id = records()["head"]["NodeID"]
    lost = b"\x01" * 16  # a result the driver believes the head keeps, which it does not
    with client._lock:
        client.results[lost] = ("stored", head_id, 8 * MIB)
    ref = cluster_client.ClusterRef(lost, client)
    with pytest.raises(ObjectLostError, match="could not be pulled from node"):
        repartir.get(total_on_node.remote(ref), timeout=60)
    del ref
    gc.collect()
    wait_records(lambda r: r["node"]["Cached"] == 0 and r["head"]["Stored"] == 0)


# ---------------------------------------------------------------- pure rules, no cluster


def test_borrows_defer_a_release_until_the_last_borrowing_task_ends():
    b = Borrows()
    b.borrow(b"t1", [(b"o", "B")])
    b.borrow(b"t2", [(b"o", "B"), (b"p", "B")])
    assert b.dropped(b"o", "B") is False  # borrowed: wait
    assert b.task_ended(b"t1") == []
    assert b.dropped(b"p", "B") is False
    assert sorted(b.task_ended(b"t2")) == [("B", b"o"), ("B", b"p")]
    assert b.dropped(b"q", "C") is True  # never borrowed: release now
    assert b.task_ended(b"unknown") == []
    assert b.counts == {} and b.deferred == {} and b.by_task == {}


def test_borrows_of_a_dead_node_are_forgotten():
    b = Borrows()
    b.borrow(b"t", [(b"o", "B")])
    assert b.dropped(b"o", "B") is False
    b.node_died("B")
    assert b.task_ended(b"t") == []


@pytest.mark.parametrize("holdings, fits, expected", [
    ({"A": 10, "B": 30}, {"A", "B"}, "B"),
    ({"A": 10, "B": 30}, {"A"}, "A"),
    ({"A": 10, "B": 30}, set(), None),
    ({}, {"A"}, None),
    ({"A": 0}, {"A"}, None),
])
def test_prefer_by_bytes(holdings, fits, expected):
    assert prefer_by_bytes(holdings, lambda n: n if n in fits else "elsewhere") == expected
