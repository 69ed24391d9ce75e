"""Failures of a cluster on loopback (docs/cluster.md, "Failures"): results lost with a killed
node rebuilt from lineage; a frozen node (SIGSTOP: no heartbeat, no answer, as a node cut off)
declared dead, its tasks resubmitted, and, once thawed, back as a new incarnation whose stale
results never reach a driver; nodes that rejoin a restarted head.

Each daemon is started with the CLI (``repartir start``) with ``REPARTIR_NODE_TIMEOUT=2``; the
module's head has 1 CPU (``on_head``) and one node 1 CPU; each test adds the node it kills.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zmq

import repartir
from repartir.cluster import client as cluster_client
from repartir.cluster import client_nodes
from repartir.cluster.sockets import Endpoint
from repartir.config import resolve
from repartir.errors import NodeDiedError, ObjectLostError
from repartir.runtime.session import sweep_dead_sessions
from rtsupport import wait_until
from test_cluster import alive, cli, cluster_env, recorded

STORE = str(128 << 20)
NODE_TIMEOUT = 2.0
BIG = 1 << 16  # float64 elements: 512 KiB, kept on the node that made it


def _sweep() -> None:
    """What a killed daemon left in /dev/shm (its workers exit by themselves)."""
    sweep_dead_sessions(resolve(num_cpus=1, object_store_memory=64 << 20, num_gpus=0).temp_dir,
                        "/dev/shm")


@pytest.fixture(scope="module")
def env(tmp_path_factory, _leaves_nothing_behind):
    """This module's state directory, token file and node timeout, restored at the end; at
    the end, every daemon recorded is stopped and must be gone."""
    tmp = tmp_path_factory.mktemp("failures")
    with cluster_env(tmp, NODE_TIMEOUT):
        try:
            yield tmp
        finally:
            _sweep()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_head(port: int) -> str:
    r = cli("start", "--head", "--port", str(port), "--num-cpus", "1",
            "--resources", '{"on_head": 1}', "--object-store-memory", STORE)
    assert r.returncode == 0, r.stderr
    return f"127.0.0.1:{port}"


def _join(address: str, resources: str = "{}") -> dict:
    r = cli("start", "--address", address, "--num-cpus", "1", "--resources", resources,
            "--object-store-memory", STORE)
    assert r.returncode == 0, r.stderr
    return recorded()[-1]


def _node_id(rec: dict) -> str:
    port = int(rec["address"].rsplit(":", 1)[1])
    found = []
    assert wait_until(lambda: found.extend(
        n["NodeID"] for n in repartir.nodes() if n["NodeManagerPort"] == port and n["Alive"])
        or found, 10), f"node {rec['address']} did not show up"
    return found[0]


def _log(tmp, address: str) -> str:
    """The log of the latest daemon that served on ``address``."""
    texts = [p.read_text() for p in sorted((tmp / "state").glob("node-*.log"))]
    return [t for t in texts if f"serving on {address}" in t][-1]


@pytest.fixture(scope="module")
def cluster(env):
    address = _start_head(_free_port())
    _join(address)
    repartir.init(address=address)
    return {"address": address, "tmp": env}


@repartir.remote
def make(i):
    return np.full(BIG, float(i))


@repartir.remote
def add_one(a):
    return a + 1.0


@repartir.remote
def slow(i, seconds):
    time.sleep(seconds)
    return repartir.get_runtime_context().get_node_id(), i


@repartir.remote
class Holder:
    def node(self):
        return repartir.get_runtime_context().get_node_id()


def _kept_on(refs, nid: str) -> list:
    client = cluster_client.active()
    with client._lock:
        return [r for r in refs if client.results.get(r.binary(), ("",))[0] == "stored"
                and client.results[r.binary()][1] == nid]


def test_results_lost_with_a_killed_node_are_rebuilt_from_lineage(cluster):
    victim = _join(cluster["address"], '{"victim": 1}')
    vid = _node_id(victim)
    made = [make.remote(i) for i in range(9)]
    chained = [add_one.remote(r) for r in made]  # each runs where its argument is kept
    twice = [add_one.remote(add_one.remote(make.remote(100 + i))) for i in range(3)]
    fragile = [make.options(max_retries=0).remote(200 + i) for i in range(3)]
    fragile += [make.options(max_retries=0, resources={"victim": 1}).remote(203 + i)
                for i in range(3)]
    every = made + chained + twice + fragile
    assert len(repartir.wait(every, num_returns=len(every), timeout=60)[0]) == len(every)
    on_victim = _kept_on(made + chained, vid)
    fragile_lost = _kept_on(fragile, vid)
    assert on_victim and fragile_lost, "the victim node kept none of the results"
    del made[1::2]  # refs dropped: their lineage stays while a chained result needs it
    os.kill(victim["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    out = repartir.get(chained + twice, timeout=60)
    assert time.monotonic() - t0 < 30
    for i, a in enumerate(out[:9]):
        assert a.shape == (BIG,) and np.all(a == i + 1.0)
    for i, a in enumerate(out[9:]):
        assert np.all(a == 100 + i + 2.0)
    assert all(np.all(a == i) for i, a in zip(range(0, 9, 2), repartir.get(made, timeout=60)))
    for r in fragile:
        if r in fragile_lost:
            with pytest.raises(ObjectLostError, match="max_retries are used up"):
                repartir.get(r, timeout=30)
        else:
            assert repartir.get(r, timeout=30)[0] == 200 + fragile.index(r)
    client = cluster_client.active()
    assert client._lineage.rebuilt >= len(on_victim)
    # no chained or rebuilt result is ever taken for another: a new task on them still works
    assert repartir.get(add_one.remote(chained[0]), timeout=60)[0] == 2.0
    del out, made, chained, twice, fragile, every, on_victim, fragile_lost, r
    for i in range(3):
        make.remote(i)  # its ref dropped at once, before the result is kept on a node
    assert wait_until(lambda: not client.inflight, 30)
    assert wait_until(lambda: not client._lineage.specs, 10), [
        (s.ref, s.users) for s in client._lineage.specs.values()]
    _sweep()


def test_a_rebuilt_task_takes_its_arguments_where_they_are_kept_now(cluster):
    """Two nodes with {"s": 1}; ``a`` kept on the head, ``b = add_one(a)`` on an "s" node
    (``a`` pulled node to node, a RemoteArg), ``c = add_one(b)`` next to ``b``.  Killing
    the node of ``b`` and ``c`` rebuilds ``b`` on the other "s" node (pulling ``a`` again)
    and then ``c`` there."""
    s1, s2 = _join(cluster["address"], '{"s": 1}'), _join(cluster["address"], '{"s": 1}')
    ids = {_node_id(s1): s1, _node_id(s2): s2}
    a = make.options(resources={"on_head": 1}).remote(40)
    b = add_one.options(resources={"s": 1}).remote(a)
    c = add_one.options(resources={"s": 1}).remote(b)
    assert len(repartir.wait([a, b, c], num_returns=3, timeout=60)[0]) == 3
    client = cluster_client.active()
    with client._lock:
        where_b, where_c = (client.results[r.binary()][1] for r in (b, c))
    assert where_b == where_c and where_b in ids
    victim = ids.pop(where_b)
    os.kill(victim["pid"], signal.SIGKILL)
    assert np.all(repartir.get(c, timeout=60) == 42.0)
    assert np.all(repartir.get(b, timeout=60) == 41.0)
    with client._lock:  # both made again on the other "s" node (and pulled here since)
        kept = [client.results[r.binary()] for r in (b, c)]
    assert {res[2] if res[0] == "fetched" else res[1] for res in kept} == set(ids)
    for rec in ids.values():
        os.kill(rec["pid"], signal.SIGTERM)
        assert wait_until(lambda: not alive(rec["pid"]), 30)
    _sweep()


def test_lineage_past_its_bound_is_dropped_and_says_so(cluster):
    victim = _join(cluster["address"])
    vid = _node_id(victim)
    client = cluster_client.active()
    probe = make.remote(-1)
    repartir.get(probe, timeout=60)
    with client._lock:
        per_task = client._lineage.nbytes  # the pickled arguments of one task
        bound, client._lineage.max_bytes = client._lineage.max_bytes, 2 * per_task
    try:
        refs = [make.remote(i) for i in range(12)]
        assert len(repartir.wait(refs, num_returns=12, timeout=60)[0]) == 12
        with client._lock:
            assert client._lineage.nbytes <= 2 * per_task and client._lineage.evicted >= 10
            evicted = {r for r in refs if r.binary() not in client._lineage.specs}
        on_victim = _kept_on(refs, vid)
        assert set(on_victim) & evicted
        os.kill(victim["pid"], signal.SIGKILL)
        for i, r in enumerate(refs):
            if r in on_victim and r in evicted:
                with pytest.raises(ObjectLostError, match="no lineage was kept"):
                    repartir.get(r, timeout=30)
            else:
                assert repartir.get(r, timeout=30)[0] == i
    finally:
        with client._lock:
            client._lineage.max_bytes = bound
    _sweep()


def test_a_frozen_node_is_dead_in_time_and_comes_back_as_a_new_incarnation(cluster):
    """SIGSTOP, as a node cut off: no heartbeat, no answer, connections stay open."""
    frozen = _join(cluster["address"], '{"cold": 1}')
    fid = _node_id(frozen)
    kept = [make.remote(300 + i) for i in range(6)]
    assert len(repartir.wait(kept, num_returns=6, timeout=60)[0]) == 6
    holder = Holder.options(resources={"cold": 0.5}).remote()
    assert repartir.get(holder.node.remote(), timeout=60) == fid
    stuck = [slow.options(max_retries=2).remote(i, 3.0) for i in range(6)]
    only_there = slow.options(resources={"cold": 1}, max_retries=0).remote(-1, 30.0)
    client = cluster_client.active()
    assert _kept_on(kept, fid)
    time.sleep(0.3)
    os.kill(frozen["pid"], signal.SIGSTOP)
    with client._lock:  # not done when it froze (3 s tasks): they must run elsewhere
        on_frozen = [i for i, r in enumerate(stuck)
                     if r.binary() in client.inflight and client.inflight[r.binary()].node == fid]
    assert on_frozen
    try:
        t0 = time.monotonic()
        with pytest.raises(repartir.GetTimeoutError):
            repartir.get(only_there, timeout=0.5)
        assert time.monotonic() - t0 < 2.0  # no get waits past its timeout
        with pytest.raises(NodeDiedError, match=fid[:12]):
            repartir.get(only_there, timeout=30)
        assert time.monotonic() - t0 < NODE_TIMEOUT + 6
        # a driver that exits while a node is cut off does not hang
        code = textwrap.dedent(f"""
            import time, repartir
            repartir.init(address={cluster['address']!r})
            t0 = time.monotonic()
            repartir.shutdown()
            print(time.monotonic() - t0)
        """)
        d = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60)
        assert d.returncode == 0, d.stderr
        assert float(d.stdout.split()[-1]) < 5.0
        out = repartir.get(stuck + kept, timeout=60)
    finally:
        os.kill(frozen["pid"], signal.SIGCONT)
    assert [i for _, i in out[:6]] == list(range(6))
    assert fid not in {out[i][0] for i in on_frozen}  # resubmitted elsewhere
    assert all(np.all(a == 300 + i) for i, a in enumerate(out[6:]))
    # thawed: the head says it was dead, it drops its state and joins again
    assert wait_until(lambda: "joined again (incarnation 1)" in _log(cluster["tmp"],
                                                                     cluster["address"]), 15)
    assert "declared dead by the head" in _log(cluster["tmp"], frozen["address"])
    assert "killed 1 actor(s)" in _log(cluster["tmp"], frozen["address"])
    with pytest.raises(repartir.ActorDiedError):  # it could not be restarted elsewhere
        repartir.get(holder.node.remote(), timeout=30)
    assert wait_until(lambda: any(n["NodeID"] == fid and n["Alive"] for n in repartir.nodes()),
                      10)
    nid, _ = repartir.get(slow.options(resources={"cold": 1}).remote(0, 0.0), timeout=30)
    assert nid == fid
    # no stale completion replaced a result: everything reads the same again
    again = repartir.get(stuck + kept, timeout=60)
    assert [i for _, i in again[:6]] == list(range(6))
    assert all(np.all(a == 300 + i) for i, a in enumerate(again[6:]))
    os.kill(frozen["pid"], signal.SIGTERM)
    assert wait_until(lambda: not alive(frozen["pid"]), 30)


class _SmallQueue(Endpoint):
    """An endpoint whose queue to its peer holds one message (ZeroMQ's high-water mark)
    over small kernel buffers, so that a few 1 MiB messages to a peer that reads nothing
    fill it."""

    @classmethod
    def connect(cls, address, *, token=None, **options):
        ep = cls("dealer", token=token)
        ep.socket.setsockopt(zmq.SNDHWM, 1)
        ep.socket.setsockopt(zmq.SNDBUF, 4096)
        ep.socket.connect(address)
        ep.address = address
        return ep


def test_a_node_that_takes_nothing_never_blocks_the_driver(cluster, monkeypatch):
    """The driver's connection to a frozen node (as cut off) fills up; the driver's thread
    must not block in a send: other work goes on, and the node's tasks fail clearly once it
    is declared dead."""
    monkeypatch.setattr(client_nodes, "Endpoint", _SmallQueue)  # for this node only
    frozen = _join(cluster["address"], '{"numb": 1}')
    fid = _node_id(frozen)
    monkeypatch.undo()
    client = cluster_client.active()
    assert type(client._eps[fid]) is _SmallQueue
    os.kill(frozen["pid"], signal.SIGSTOP)
    try:
        big = np.ones(1 << 17)  # 1 MiB
        numb = []
        for _ in range(40):  # one by one: several batches
            numb.append(ident.options(resources={"numb": 1}, max_retries=1).remote(big))
            time.sleep(0.005)
        with client._lock:  # the queue is full: the rest waits in the driver
            assert client._outbox.get(fid)
        t0 = time.monotonic()
        on_head = slow.options(resources={"on_head": 1}).remote(5, 0.0)
        assert repartir.get(on_head, timeout=20)[1] == 5  # the driver goes on
        assert time.monotonic() - t0 < 5
        for r in numb:
            with pytest.raises(NodeDiedError, match=fid[:12]):
                repartir.get(r, timeout=30)
    finally:
        os.kill(frozen["pid"], signal.SIGKILL)
        os.kill(frozen["pid"], signal.SIGCONT)
    assert wait_until(lambda: not alive(frozen["pid"]), 30)
    _sweep()


@repartir.remote
def ident(a):
    return a


def _head_pid() -> int:
    return [r["pid"] for r in recorded() if r["role"] == "head"][-1]


def test_a_driver_rides_out_a_quick_head_restart(cluster):
    """The head (also a node) restarted within the driver's node timeout: the driver carries
    on; the task that ran on the old head's node runs again on the new one."""
    client = cluster_client.active()
    client.timeout = 10.0  # this driver's REPARTIR_NODE_TIMEOUT: the restart fits in it
    try:
        old_id = [n["NodeID"] for n in repartir.nodes() if "on_head" in n["Resources"]
                  and n["Alive"]][0]
        repartir.get(slow.options(resources={"on_head": 1}).remote(0, 0.0), timeout=60)  # heard
        on_head = slow.options(resources={"on_head": 1}, max_retries=2).remote(7, 3.0)
        elsewhere = [slow.options(resources={"on_head": 0}).remote(i, 0.2) for i in range(4)]
        time.sleep(0.5)
        old_head = _head_pid()
        os.kill(old_head, signal.SIGTERM)
        assert wait_until(lambda: not alive(old_head), 30)
        # placed on the old head's node, the only one with "on_head" now, and sent into the
        # connection to its address while nothing listens there: once the new head's node
        # shows up at that address, the driver closes that connection, holds the old node
        # for dead and runs the task again on the new one (ClusterClient._replaced_at)
        late = slow.options(resources={"on_head": 1}).remote(8, 0.0)
        with client._lock:
            assert client.inflight[late.binary()].node == old_id
        _start_head(int(cluster["address"].rsplit(":", 1)[1]))
        t_late = time.monotonic()
        assert repartir.get(late, timeout=60)[1] == 8
        # without waiting for this driver's node timeout: the registry names the new node
        assert time.monotonic() - t_late < client.timeout
        nid, i = repartir.get(on_head, timeout=60)
        assert i == 7 and nid != old_id
        assert [i for _, i in repartir.get(elsewhere, timeout=60)] == list(range(4))
        alive_ids = {n["NodeID"] for n in repartir.nodes() if n["Alive"]}
        assert nid in alive_ids and old_id not in alive_ids and len(alive_ids) == 2
    finally:
        client.timeout = NODE_TIMEOUT


def test_nodes_rejoin_a_restarted_head(cluster):
    address = cluster["address"]
    node = [r for r in recorded() if r["role"] != "head" and alive(r["pid"])][0]
    nid = _node_id(node)
    old_head = _head_pid()
    os.kill(old_head, signal.SIGTERM)
    assert wait_until(lambda: not alive(old_head), 30)
    # the driver whose head is gone: a clear error, once REPARTIR_NODE_TIMEOUT has passed
    time.sleep(NODE_TIMEOUT + 1.5)
    with pytest.raises(NodeDiedError, match=r"has not answered .*shutdown\(\) and init"):
        slow.remote(0, 0.0)
    repartir.shutdown()
    _start_head(int(address.rsplit(":", 1)[1]))
    repartir.init(address=address)
    assert wait_until(lambda: any(n["NodeID"] == nid and n["Alive"]
                                  for n in repartir.nodes()), 15), repartir.nodes()
    assert "registering again" in _log(cluster["tmp"], node["address"])
    out = repartir.get([slow.options(resources={"on_head": 0}).remote(i, 0.3)
                        for i in range(6)], timeout=60)
    assert {n for n, _ in out} == {n["NodeID"] for n in repartir.nodes() if n["Alive"]}
    status = cli("status")
    assert status.returncode == 0 and "2 node(s) alive" in status.stdout, status.stdout

