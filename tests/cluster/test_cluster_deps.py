"""Tasks whose ref arguments are not ready yet, on a connected driver (docs/cluster.md,
"Dependent tasks"): ``.remote()`` returns at once, the task waits in the driver and is sent
when its last argument is ready; an argument that failed fails it with that error.

A head (1 CPU, ``on_head``), a node (1 CPU, ``big_mem``) and two nodes (1 CPU, ``pool``, one
of which a test kills), started with the CLI.  The first task of each chain waits for a gate
file, so the tests see the dependents' refs while nothing they need is ready.
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
from repartir.errors import SerializationError
from rtsupport import wait_until
from test_cluster import cluster_env
from test_cluster_failures import _join, _node_id, _start_head, _free_port, _sweep

NODE_TIMEOUT = 2.0
BIG = 1 << 17  # float64 elements: 1 MiB, kept on the node that made it


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, _leaves_nothing_behind):
    tmp = tmp_path_factory.mktemp("deps")
    with cluster_env(tmp, NODE_TIMEOUT):
        try:
            address = _start_head(_free_port())
            _join(address, '{"big_mem": 1}')
            repartir.init(address=address)
            yield {"address": address, "tmp": tmp}
        finally:
            _sweep()


def _client() -> cluster_client.ClusterClient:
    c = cluster_client.active()
    assert c is not None
    return c


@repartir.remote
def gated(path, value, max_wait=60.0):
    """``value`` once the file ``path`` exists (at most ``max_wait`` seconds)."""
    deadline = time.monotonic() + max_wait
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


@repartir.remote
def inc(x):
    return x + 1


@repartir.remote
def node_and_sum(a):
    return repartir.get_runtime_context().get_node_id(), float(np.sum(a))


def _settled(c) -> bool:
    with c._lock:
        return not c._deps.waiting and not c._deps.by_object and not c.inflight


def test_a_chain_is_submitted_before_its_first_task_runs(cluster, tmp_path):
    gate = str(tmp_path / "gate")
    first = gated.remote(gate, 0)
    refs = [first]
    for _ in range(200):
        refs.append(inc.remote(refs[-1]))
    # every .remote() returned while the first task still waits for its gate
    assert not os.path.exists(gate)
    ready, _ = repartir.wait(refs, num_returns=len(refs), timeout=0)
    assert ready == []
    c = _client()
    with c._lock:
        assert len(c._deps.waiting) == 200
    open(gate, "w").close()
    assert repartir.get(refs, timeout=120) == list(range(201))
    assert wait_until(lambda: _settled(c), 10)


def test_a_failed_argument_fails_its_dependents_with_its_error(cluster, tmp_path):
    @repartir.remote(max_retries=0)
    def boom(path):
        while not os.path.exists(path):
            time.sleep(0.02)
        raise KeyError("upstream broke")

    gate = str(tmp_path / "gate")
    bad = boom.remote(gate)
    a = inc.remote(bad)
    b = inc.remote(a)
    side = inc.remote(inc.remote(1))  # a chain that does not depend on it
    open(gate, "w").close()
    for r in (bad, a, b):
        with pytest.raises(KeyError, match="upstream broke"):
            repartir.get(r, timeout=60)
    assert repartir.get(side, timeout=60) == 3
    assert wait_until(lambda: _settled(_client()), 10)


def test_an_unpicklable_argument_raises_at_once(cluster, tmp_path):
    import threading

    gate = str(tmp_path / "gate")
    pending = gated.remote(gate, 1)
    with pytest.raises(SerializationError):
        repartir.remote(lambda x, lock: x).remote(pending, threading.Lock())
    with pytest.raises(repartir.InfeasibleTaskError, match="no node of the cluster"):
        inc.options(resources={"huge_mem": 1}).remote(pending)
    open(gate, "w").close()
    assert repartir.get(pending, timeout=60) == 1


def test_dropped_refs_of_a_chain_leave_nothing(cluster, tmp_path):
    c = _client()
    gate = str(tmp_path / "gate")
    a = gated.remote(gate, np.zeros(BIG))  # results kept on their nodes
    b = repartir.remote(lambda x: x + 1.0).remote(a)
    d = repartir.remote(lambda x: x + 1.0).remote(b)
    leaf = repartir.remote(lambda x: x + 1.0).remote(d)  # its ref dropped while it waits
    del a, b, leaf  # the middle ref and a waiting task's own
    gc.collect()
    open(gate, "w").close()
    assert float(repartir.get(d, timeout=60)[0]) == 2.0
    del d
    gc.collect()

    def clean() -> bool:
        with c._lock:
            return (_settled(c) and not c.results and not c._dropped
                    and not c.borrows.by_task and not c.borrows.deferred)

    assert wait_until(clean, 20), (c.results, c._dropped, c.inflight)

    def nothing_kept() -> bool:  # no node keeps or caches any of them
        repartir.nodes()  # a fresh registry
        with c._lock:
            recs = [r for r in c.nodes_seen.values() if r["Alive"]]
        return all(r["Stored"] == 0 and r["Cached"] == 0 for r in recs)

    assert wait_until(nothing_kept, 30)


def test_a_dependent_runs_where_its_argument_is_kept(cluster, tmp_path):
    gate = str(tmp_path / "gate")
    big = [n["NodeID"] for n in repartir.nodes() if n["Resources"].get("big_mem")][0]
    head = [n["NodeID"] for n in repartir.nodes() if n["Resources"].get("on_head")][0]
    a = gated.options(resources={"big_mem": 1}).remote(gate, np.ones(BIG))
    here = node_and_sum.remote(a)  # free to go anywhere: goes where a is kept
    there = node_and_sum.options(resources={"on_head": 1}).remote(a)  # pulls it
    open(gate, "w").close()
    assert repartir.get(here, timeout=60) == (big, float(BIG))
    assert repartir.get(there, timeout=60) == (head, float(BIG))


def test_a_node_killed_while_dependents_wait(cluster, tmp_path):
    recs = [_join(cluster["address"], '{"pool": 1}') for _ in range(2)]
    by_id = {_node_id(r): r for r in recs}
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")

    @repartir.remote(resources={"pool": 1}, max_retries=2)
    def upstream(gate, started):
        with open(started, "w") as f:
            f.write(repartir.get_runtime_context().get_node_id())
        while not os.path.exists(gate):
            time.sleep(0.02)
        return 10

    a = upstream.remote(gate, started)
    b = inc.remote(a)
    c = inc.remote(b)
    assert wait_until(lambda: os.path.exists(started) and os.path.getsize(started), 60)
    with open(started) as f:
        victim = by_id[f.read()]
    os.unlink(started)
    os.kill(victim["pid"], signal.SIGKILL)
    # declared dead, the task runs again on the other pool node, the dependents wait for it
    assert wait_until(lambda: os.path.exists(started), 60)
    open(gate, "w").close()
    assert repartir.get([a, b, c], timeout=60) == [10, 11, 12]
    assert wait_until(lambda: _settled(_client()), 10)


@repartir.remote
def total_of(box):
    """The sum of the values behind the refs in ``box["refs"]`` (refs nested in an
    argument reach the task as refs), and whether each was one."""
    refs = box["refs"]
    return [isinstance(r, repartir.ObjectRef) for r in refs], float(sum(
        np.sum(v) for v in repartir.get(refs, timeout=60)))


def test_refs_nested_in_an_argument_do_not_block(cluster, tmp_path):
    gate = str(tmp_path / "gate")
    pending = gated.remote(gate, 2.0)
    kept = gated.options(resources={"big_mem": 1}).remote(gate, np.ones(BIG))
    ready = repartir.put(3.0)
    out = total_of.remote({"refs": [pending, kept, ready]})  # returns while they wait
    assert not os.path.exists(gate)
    assert repartir.wait([out], timeout=0)[0] == []
    with _client()._lock:
        assert len(_client()._deps.waiting) == 1
    open(gate, "w").close()
    kinds, total = repartir.get(out, timeout=60)
    assert kinds == [True, True, True] and total == 2.0 + BIG + 3.0
    assert wait_until(lambda: _settled(_client()), 10)


def test_a_nested_ref_that_failed_reaches_the_task_as_a_ref_that_raises(cluster, tmp_path):
    @repartir.remote(max_retries=0)
    def boom(path):
        while not os.path.exists(path):
            time.sleep(0.02)
        raise KeyError("nested broke")

    @repartir.remote
    def catch(box):
        try:
            repartir.get(box[0], timeout=60)
        except KeyError as exc:
            return f"caught {exc}"
        return "no error"

    gate = str(tmp_path / "gate")
    out = catch.remote([boom.remote(gate)])
    open(gate, "w").close()
    assert "nested broke" in repartir.get(out, timeout=60)


def test_several_returns_and_cancel_of_a_waiting_task(cluster, tmp_path):
    @repartir.remote(num_returns=2)
    def pair(x):
        return x, x + 1

    gate = str(tmp_path / "gate")
    first = gated.remote(gate, 5)
    a, b = pair.remote(first)
    doomed = inc.remote(first)
    after = inc.remote(doomed)  # waits for the one cancelled: fails with its error
    repartir.cancel(doomed)
    with pytest.raises(repartir.TaskCancelledError):
        repartir.get(doomed, timeout=10)
    with pytest.raises(repartir.TaskCancelledError):
        repartir.get(after, timeout=10)
    assert not os.path.exists(gate)  # all of it while the first task still waited
    open(gate, "w").close()
    assert repartir.get([a, b], timeout=60) == [5, 6]
    assert wait_until(lambda: _settled(_client()), 10)
