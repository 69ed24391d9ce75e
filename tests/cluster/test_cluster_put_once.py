"""A value the driver holds (``put``, a small result kept in the driver) goes to a node at
most once while the driver holds its ref (docs/cluster.md, "Values: copies, as locally";
repartir/cluster/driver_values.py): later tasks and actor calls there carry only its id; its
copies go when the ref goes; a task retried on another node brings it there.

A head (1 CPU, ``on_head: 1``) and a node (1 CPU, ``big_mem: 1``) on loopback, started with
the CLI (the fixtures of test_cluster.py: at the end every daemon is stopped and checked
gone, /dev/shm swept); one test adds a node that it kills.
"""

from __future__ import annotations

import gc
import os
import signal
import time

import numpy as np
import pytest

import repartir
from repartir.cluster import client as cluster_client
from repartir.config import resolve
from repartir.runtime.session import sweep_dead_sessions
from rtsupport import wait_until
from test_cluster import (STORE, alive, cluster_env, join_node, start_head_and_node)

pytestmark = pytest.mark.timeout(300)

MIB8 = 1 << 20  # float64 elements: 8 MiB


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, _leaves_nothing_behind):
    tmp = tmp_path_factory.mktemp("put_once")
    with cluster_env(tmp, 3.0):
        info = start_head_and_node(STORE)
        yield {"address": info["address"]}


@repartir.remote
def total(a, i=0, delay=0.0):
    time.sleep(delay)
    return float(a.sum()) + i, repartir.get_runtime_context().get_node_id()


@repartir.remote
def slow_on(a, victim):
    """``a``'s sum and the node; sleeps 30 s on node ``victim`` (to be killed there)."""
    here = repartir.get_runtime_context().get_node_id()
    if here == victim:
        time.sleep(30)
    return float(a.sum()), here


@repartir.remote
class Keeper:
    def __init__(self, a=None):
        self.start = 0.0 if a is None else float(a.sum())

    def total(self, a, i=0):
        return self.start + float(a.sum()) + i


def _node(resource: str) -> str:
    return [n["NodeID"] for n in repartir.nodes() if n["Alive"]
            and n["Resources"].get(resource)][0]


def _stored() -> dict[str, int]:
    """Objects each live node keeps (results and drivers' values), from a fresh registry."""
    repartir.nodes()
    return {nid: r["Stored"] for nid, r in cluster_client.active().nodes_seen.items()
            if r["Alive"]}


def _sent(nid: str) -> tuple[int, int]:
    """(bytes of task arguments, values sent alone) this driver sent node ``nid``."""
    dv = cluster_client.active().dvals
    return dv.sent_bytes.get(nid, 0), dv.values_sent.get(nid, 0)


def test_tasks_taking_one_put_send_it_to_their_node_once(cluster):
    node = _node("big_mem")
    before, stored = _sent(node), _stored()
    big = repartir.put(np.ones(MIB8))
    refs = [total.options(resources={"big_mem": 1}).remote(big, i) for i in range(6)]
    out = repartir.get(refs, timeout=120)
    assert [v for v, _ in out] == [float(MIB8) + i for i in range(6)]
    assert {n for _, n in out} == {node}
    # the node keeps it while the driver holds the ref
    assert wait_until(lambda: _stored()[node] == stored[node] + 1, 20), _stored()
    nbytes, values = _sent(node)
    assert values - before[1] == 1
    assert 8 * MIB8 <= nbytes - before[0] < 8 * MIB8 + (1 << 20)  # one copy, not six
    more = repartir.get([total.options(resources={"big_mem": 1}).remote(big, 10)],
                        timeout=60)
    assert more[0][0] == float(MIB8) + 10
    assert _sent(node)[1] - before[1] == 1
    del big, refs
    gc.collect()
    assert wait_until(lambda: _stored()[node] == stored[node], 20), _stored()


def test_tasks_on_two_nodes_each_get_one_copy(cluster):
    head, node = _node("on_head"), _node("big_mem")
    before = {n: _sent(n) for n in (head, node)}
    stored = _stored()
    big = repartir.put(np.arange(MIB8, dtype=np.float64))
    want = float(np.arange(MIB8, dtype=np.float64).sum())
    refs = [total.options(resources={r: 1}).remote(big, i)
            for i in range(4) for r in ("on_head", "big_mem")]
    out = repartir.get(refs, timeout=120)
    assert [v for v, _ in out] == [want + i for i in range(4) for _ in range(2)]
    assert {n for _, n in out} == {head, node}
    assert wait_until(lambda: _stored() == {n: stored[n] + 1 for n in stored}, 20), _stored()
    for n in (head, node):
        nbytes, values = _sent(n)
        assert values - before[n][1] == 1, n
        assert 8 * MIB8 <= nbytes - before[n][0] < 8 * MIB8 + (1 << 20), n
    del big, refs
    gc.collect()
    assert wait_until(lambda: _stored() == stored, 20), _stored()


@repartir.remote
def waits(path):
    """Returns once file ``path`` exists (at most 60 s)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.path.exists(path)


def test_the_copy_outlives_the_ref_while_a_task_takes_it(cluster, tmp_path):
    """The driver drops its ref while the task that takes it waits behind another: the
    node keeps the copy until the task has run, then drops it."""
    node = _node("big_mem")
    stored = _stored()
    go = str(tmp_path / "go")
    blocker = waits.options(resources={"big_mem": 1}).remote(go)
    big = repartir.put(np.full(MIB8, 2.0))
    late = total.options(resources={"big_mem": 1}).remote(big)
    del big
    gc.collect()
    assert wait_until(lambda: _stored()[node] == stored[node] + 1, 20), _stored()
    open(go, "w").close()
    assert repartir.get(blocker, timeout=60) is True
    assert repartir.get(late, timeout=60)[0] == 2.0 * MIB8
    assert wait_until(lambda: _stored()[node] == stored[node], 20), _stored()


def test_a_small_result_kept_in_the_driver_goes_once_too(cluster):
    """A result small enough to come back with its completion (so kept in the driver), but
    over the out-of-band threshold, taken by several tasks: one copy to their node."""
    node = _node("big_mem")
    made = repartir.remote(lambda: np.ones(1 << 14)).remote()  # 128 KiB
    repartir.wait([made], timeout=60)
    before = _sent(node)
    out = repartir.get([total.options(resources={"big_mem": 1}).remote(made, i)
                        for i in range(5)], timeout=60)
    assert [v for v, _ in out] == [float(1 << 14) + i for i in range(5)]
    assert _sent(node)[1] - before[1] == 1


def test_actor_calls_taking_one_put_send_it_once(cluster, tmp_path):
    node = _node("big_mem")
    keeper = Keeper.options(resources={"big_mem": 1}).remote()
    repartir.get(keeper.total.remote(np.ones(1)), timeout=60)
    before, stored = _sent(node), _stored()
    big = repartir.put(np.ones(MIB8))
    out = repartir.get([keeper.total.remote(big, i) for i in range(6)], timeout=120)
    assert out == [float(MIB8) + i for i in range(6)]
    assert wait_until(lambda: _stored()[node] == stored[node] + 1, 20), _stored()
    nbytes, values = _sent(node)
    assert values - before[1] == 1
    assert 8 * MIB8 <= nbytes - before[0] < 8 * MIB8 + (1 << 20)
    # calls that wait in the driver for another argument carry only its id too
    go = str(tmp_path / "go")
    gate = waits.remote(go)
    later = [keeper.total.remote(big, gate) for _ in range(3)]
    open(go, "w").close()
    assert repartir.get(later, timeout=60) == [float(MIB8) + 1] * 3
    nbytes, values = _sent(node)
    assert values - before[1] == 1
    assert nbytes - before[0] < 8 * MIB8 + (1 << 20)
    # a constructor's argument travels by value (a restart sends it again)
    other = Keeper.remote(big)
    assert repartir.get(other.total.remote(big), timeout=60) == 2.0 * MIB8
    del big
    gc.collect()
    assert wait_until(lambda: _stored()[node] == stored[node], 20), _stored()
    repartir.kill(keeper)
    repartir.kill(other)


def test_a_task_retried_on_another_node_gets_the_value_there(cluster):
    """A node that got the value is killed while its task runs: the task, retried on a
    node that never had the value, gets it there."""
    victim, port = join_node(cluster["address"], '{"big_mem": 1}', STORE)
    victim_id = [n["NodeID"] for n in repartir.nodes() if n["NodeManagerPort"] == port][0]
    node = [n for n in _stored() if n != victim_id and n != _node("on_head")][0]
    client = cluster_client.active()
    try:
        # the node busy, so the task taking the value goes to the victim
        blocker = total.options(resources={"big_mem": 1}).remote(np.ones(1), 0, 1.5)
        with client._lock:
            assert client.inflight[blocker.binary()].node == node
        before = _sent(node)
        big = repartir.put(np.full(MIB8, 3.0))
        ref = slow_on.options(resources={"big_mem": 1}, max_retries=2).remote(big, victim_id)
        with client._lock:
            assert client.inflight[ref.binary()].node == victim_id
        assert wait_until(lambda: _sent(victim_id)[1] == 1, 20)
        os.kill(victim["pid"], signal.SIGKILL)
        value, where = repartir.get(ref, timeout=120)
        assert (value, where) == (3.0 * MIB8, node)
        assert _sent(node)[1] - before[1] == 1
        repartir.get(blocker, timeout=60)
    finally:
        if alive(victim["pid"]):
            os.kill(victim["pid"], signal.SIGKILL)
        sweep_dead_sessions(resolve(num_cpus=1, object_store_memory=64 << 20,
                                    num_gpus=0).temp_dir, "/dev/shm")
