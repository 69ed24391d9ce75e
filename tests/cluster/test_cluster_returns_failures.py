"""Several returns and generators when their node dies (docs/cluster.md, "Returns,
generators, cancel"), on the loopback cluster of ``test_cluster_failures.py``
(``REPARTIR_NODE_TIMEOUT=2``): returns kept on the node whose task no live node fits, and
items of a generator without retries, are lost and say why; a generator still running there
ends with the node's death."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import repartir
from repartir.errors import NodeDiedError, ObjectLostError
from test_cluster_failures import BIG, _join, _node_id, _sweep, cluster, env  # noqa: F401


@repartir.remote(resources={"victim": 1}, num_returns=2, max_retries=3)
def two():
    return np.full(BIG, 1.0), np.full(BIG, 2.0)


@repartir.remote(resources={"victim": 1}, max_retries=0)
def items(n, seconds):
    for i in range(n):
        yield np.full(BIG, float(i))
        time.sleep(seconds)


def test_returns_and_items_lost_with_their_node(cluster):  # noqa: F811
    rec = _join(cluster["address"], '{"victim": 1}')
    nid = _node_id(rec)
    a, b = two.remote()
    gen = items.remote(100, 0.2)
    first = next(gen)
    ready, _ = repartir.wait([a, b, first], num_returns=3, timeout=60)
    assert len(ready) == 3
    os.kill(rec["pid"], signal.SIGKILL)
    for ref in (a, b):  # rebuilt by running their task again, which no live node fits
        with pytest.raises(ObjectLostError, match="no live node fitted it"):
            repartir.get(ref, timeout=30)
    with pytest.raises(ObjectLostError, match="not rebuilt from lineage"):
        repartir.get(first, timeout=30)
    rest = list(gen)  # the items that came before the death, then its error
    with pytest.raises(NodeDiedError, match=nid[:12]):
        repartir.get(rest[-1], timeout=30)
    assert gen.completed()
    _sweep()


@repartir.remote(max_retries=3)
def slow_items(n, seconds):
    for i in range(n):
        yield np.full(BIG, float(i))
        time.sleep(seconds)


def test_a_generator_run_again_after_its_node_died_yields_its_lost_items_again(cluster):  # noqa: F811
    from repartir.cluster import client as cluster_client

    rec = _join(cluster["address"], '{"victim2": 1}')
    nid = _node_id(rec)
    client = cluster_client.active()
    others = [n for n, r in client.nodes_seen.items() if r["Alive"] and n != nid]
    with client._lock:  # placement: the new node only (the others count as busy)
        for n in others:
            client._used[n] += 1000.0
    try:
        gen = slow_items.remote(6, 0.3)
    finally:
        with client._lock:
            for n in others:
                client._used[n] -= 1000.0
    first = next(gen)
    assert float(repartir.get(first, timeout=60)[0]) == 0.0  # pulled into the driver
    second = next(gen)
    repartir.wait([second], timeout=60)
    os.kill(rec["pid"], signal.SIGKILL)
    values = [float(repartir.get(r, timeout=60)[0]) for r in [second, *gen]]
    assert values == [1.0, 2.0, 3.0, 4.0, 5.0]  # lost with the node, yielded again elsewhere
    _sweep()
