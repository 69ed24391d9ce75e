"""Liveness of drivers and of the head, on loopback (docs/cluster.md, "Failures";
repartir/cluster/leases.py and liveness.py): a driver that ends says goodbye and the nodes
drop what they held for it at once; a killed driver's holdings go within about the node
timeout plus a heartbeat; a driver whose own process was paused carries on, and what the
nodes dropped meanwhile fails clearly; ``nodes()`` is one round trip to the head; a lost
head is named as the reason of the failures, and ``nodes()`` raises then.

A head (1 CPU, ``on_head: 1``) and a node (1 CPU, ``big_mem: 1``) started with the CLI,
``REPARTIR_NODE_TIMEOUT=6``; the drivers under test are processes of their own.  The last
test stops the head.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import repartir
from repartir.cluster import client as cluster_client
from repartir.config import CLUSTER_HEARTBEAT_S, CLUSTER_PULL_TIMEOUT_S
from repartir.errors import NodeDiedError, ObjectLostError
from rtsupport import wait_until
from test_cluster import alive, cluster_env, join_node, recorded, start_head_and_node

STORE = str(256 << 20)
NODE_TIMEOUT = 6.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, _leaves_nothing_behind):
    tmp = tmp_path_factory.mktemp("liveness")
    with cluster_env(tmp, NODE_TIMEOUT):
        info = start_head_and_node(STORE)
        yield {"tmp": tmp, "address": info["address"]}


@repartir.remote
def double(x):
    return x * 2


@repartir.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


def _held() -> dict[str, int]:
    """The live nodes' results kept, and tasks queued or running, as of their last
    heartbeats."""
    repartir.nodes()
    recs = [r for r in cluster_client.active().nodes_seen.values() if r["Alive"]]
    return {k: sum(r[k] for r in recs) for k in ("Stored", "Queued", "Running")}


def _logs(cluster) -> str:
    return "".join(p.read_text() for p in (cluster["tmp"] / "state").glob("node-*.log"))


# a driver that keeps two 8 MiB results on the nodes and runs or queues four naps, then
# prints READY and its driver id and waits for a line on stdin
HOLDER = """
    import sys, time
    import numpy as np
    import repartir
    from repartir.cluster import client as cluster_client
    repartir.init(address={address!r})
    big = repartir.remote(lambda i: np.full(1 << 20, float(i)))  # 8 MiB: kept on a node
    refs = [big.remote(i) for i in range(2)]
    assert len(repartir.wait(refs, num_returns=2, timeout=60)[0]) == 2
    nap = repartir.remote(lambda: time.sleep(60))
    naps = [nap.remote() for _ in range(4)]  # running on both nodes, and queued
    print("READY", cluster_client.active()._driver_id.hex(), flush=True)
    sys.stdin.readline()
"""


def _holder(cluster, then: str) -> subprocess.Popen:
    code = textwrap.dedent(HOLDER.format(address=cluster["address"])) + textwrap.dedent(then)
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _settled() -> dict[str, int]:
    """What the nodes hold with no other driver there, once a heartbeat has counted it."""
    first = _held()
    assert wait_until(lambda: _held() == first, 10)
    return first


@pytest.mark.parametrize("how", ["shutdown", "exit", "ctrl-c"])
def test_a_driver_that_ends_says_goodbye(cluster, how):
    """repartir.shutdown(), the end of the script and Ctrl-C: the nodes drop the driver's
    results, queued and running tasks at once (not after the node timeout), and do not log
    it as taken for gone."""
    before = _settled()
    then = {"shutdown": "repartir.shutdown()\nprint('DOWN', flush=True)\ntime.sleep(60)\n",
            "exit": "sys.exit(0)\n", "ctrl-c": ""}[how]
    d = _holder(cluster, then)
    try:
        ready, driver_id = d.stdout.readline().split()
        assert ready == "READY"
        assert wait_until(lambda: _held()["Stored"] >= before["Stored"] + 2
                          and _held()["Running"] >= 2, 20), _held()
        t0 = time.monotonic()
        if how == "ctrl-c":
            d.send_signal(signal.SIGINT)
        else:
            d.stdin.write("\n")
            d.stdin.flush()
        if how == "shutdown":
            assert d.stdout.readline().strip() == "DOWN"
        else:
            d.wait(30)
            if how == "exit":
                assert d.returncode == 0, d.stderr.read()
            else:
                assert "KeyboardInterrupt" in d.stderr.read()
        assert wait_until(lambda: _held() == before, 3 * NODE_TIMEOUT), _held()
        # dropped at once: the nodes' next heartbeats, well inside the timeout
        assert time.monotonic() - t0 < NODE_TIMEOUT - 1
    finally:
        d.kill()
        d.wait(30)
    assert f"driver {driver_id[:12]}" not in _logs(cluster)  # not "taken for gone"


def test_a_killed_driver_holdings_go_within_the_timeout_and_a_heartbeat(cluster):
    """SIGKILL: the head lists the driver until it has not heard it for the timeout; the
    nodes drop its holdings at that list, not after waiting a timeout of their own."""
    before = _settled()
    d = _holder(cluster, "")
    try:
        ready, driver_id = d.stdout.readline().split()
        assert wait_until(lambda: _held()["Stored"] >= before["Stored"] + 2
                          and _held()["Running"] >= 2, 20), _held()
        d.kill()
        d.wait(30)
        t_kill = time.monotonic()
        assert wait_until(lambda: f"driver {driver_id[:12]}" in _logs(cluster),
                          4 * NODE_TIMEOUT), _logs(cluster)
        took = time.monotonic() - t_kill
        assert NODE_TIMEOUT - 1.5 < took < NODE_TIMEOUT + 3 * CLUSTER_HEARTBEAT_S, took
        assert wait_until(lambda: _held() == before, 10), _held()
    finally:
        d.kill()
        d.wait(30)
    lines = [ln for ln in _logs(cluster).splitlines() if f"driver {driver_id[:12]}" in ln]
    assert lines and all("taken for gone" in ln for ln in lines), lines


def test_a_paused_driver_carries_on(cluster):
    """SIGSTOP for longer than the node timeout: on resume the driver does not blame the
    head (new tasks run, nodes() answers); the nodes took it for gone meanwhile and dropped
    its results and tasks, and those refs fail with a clear error."""
    then = """
        import json
        out = {}
        def outcome(ref):
            try:
                repartir.get(ref, timeout=20)
                return "value"
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
        out["kept"] = outcome(refs[0])
        out["running"] = outcome(naps[0])
        try:
            out["new"] = repartir.get(repartir.remote(lambda x: x + 1).remote(41), timeout=60)
        except Exception as exc:
            out["new"] = f"{type(exc).__name__}: {exc}"
        out["alive"] = sum(n["Alive"] for n in repartir.nodes())
        print(json.dumps(out), flush=True)
    """
    before = _settled()
    d = _holder(cluster, then)
    try:
        ready, driver_id = d.stdout.readline().split()
        assert wait_until(lambda: _held()["Stored"] >= before["Stored"] + 2
                          and _held()["Running"] >= 2, 20), _held()
        os.kill(d.pid, signal.SIGSTOP)
        try:  # the nodes drop what they held for it once the head's list leaves it out
            assert wait_until(lambda: f"driver {driver_id[:12]}" in _logs(cluster),
                              4 * NODE_TIMEOUT), _logs(cluster)
            time.sleep(1.5 * CLUSTER_HEARTBEAT_S)  # its loop is stopped past a heartbeat
        finally:
            os.kill(d.pid, signal.SIGCONT)
        d.stdin.write("\n")
        d.stdin.flush()
        line = d.stdout.readline()
        assert line, d.stderr.read()
        out = json.loads(line)
    finally:
        d.kill()
        d.wait(30)
    assert out["new"] == 42 and out["alive"] == 2, out
    for what in ("kept", "running"):
        assert out[what].startswith("ObjectLostError"), out
        assert "was this process paused" in out[what], out


def test_nodes_is_one_round_trip_to_the_head(cluster):
    """nodes() asks the head at once and returns with its answer (it used to wait for the
    answers to two periodic requests, one to two heartbeats)."""
    took = []
    for _ in range(5):
        t0 = time.monotonic()
        assert sum(n["Alive"] for n in repartir.nodes()) == 2
        took.append(time.monotonic() - t0)
    assert statistics.median(took) < CLUSTER_HEARTBEAT_S / 2, took


@repartir.remote
def ones(n):
    return np.ones(n)


def test_a_result_whose_only_fitting_node_froze_is_rebuilt_when_it_comes_back(cluster):
    """The only node with resource "side" keeps a result and freezes past the timeout: the
    rebuild finds no node that fits and waits (up to the timeout) instead of failing at once;
    the node thaws, comes back as a new incarnation, and the result is rebuilt there."""
    side, port = join_node(cluster["address"], '{"side": 1}', STORE)
    kept = ones.options(resources={"side": 1}, max_retries=2).remote(1 << 17)  # 1 MiB
    assert repartir.wait([kept], timeout=60)[0]
    os.kill(side["pid"], signal.SIGSTOP)
    try:
        assert wait_until(lambda: not any(n["NodeManagerPort"] == port and n["Alive"]
                                          for n in repartir.nodes()), 4 * NODE_TIMEOUT)
    finally:
        os.kill(side["pid"], signal.SIGCONT)
    got = repartir.get(kept, timeout=4 * NODE_TIMEOUT)
    assert got.shape == (1 << 17,) and float(got.sum()) == float(1 << 17)
    assert any(n["NodeManagerPort"] == port and n["Alive"] for n in repartir.nodes())


@repartir.remote
def total(a):
    return float(a.sum())


def test_a_pull_from_a_node_declared_dead_fails_when_it_is(cluster):
    """A task on one node takes a result kept on another node, frozen before it could serve
    the pull: the task fails once the head declares that node dead, not after
    CLUSTER_PULL_TIMEOUT_S (30 s)."""
    src, port = join_node(cluster["address"], '{"src": 1}', STORE)
    kept = ones.options(resources={"src": 1}, max_retries=0).remote(1 << 17)  # 1 MiB
    assert repartir.wait([kept], timeout=60)[0]
    os.kill(src["pid"], signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        pulling = total.options(resources={"big_mem": 1}).remote(kept)
        with pytest.raises(ObjectLostError, match="declared it dead"):
            repartir.get(pulling, timeout=CLUSTER_PULL_TIMEOUT_S + 30)
        assert time.monotonic() - t0 < NODE_TIMEOUT + 3 * CLUSTER_HEARTBEAT_S
    finally:
        os.kill(src["pid"], signal.SIGCONT)


def test_a_lost_head_is_named_and_nodes_raises(cluster):
    """The head stops: a running task fails with NodeDiedError naming the head (not used-up
    retries), and nodes(), cluster_resources() raise what .remote() raises."""
    running = nap.options(resources={"big_mem": 1}, max_retries=3).remote(30)
    client = cluster_client.active()
    assert wait_until(lambda: _held()["Running"] >= 1, 20)
    head = [r["pid"] for r in recorded() if r["role"] == "head"][-1]
    os.kill(head, signal.SIGTERM)
    assert wait_until(lambda: not alive(head), 30)
    with pytest.raises(NodeDiedError) as info:
        repartir.get(running, timeout=NODE_TIMEOUT + 30)
    text = str(info.value)
    assert "max_retries" not in text and "has not answered" in text, text
    assert client._failed is not None
    for call in (repartir.nodes, repartir.cluster_resources, repartir.available_resources,
                 lambda: double.remote(1)):
        with pytest.raises(NodeDiedError, match=r"has not answered .*shutdown\(\) and init"):
            call()
    repartir.shutdown()


def test_a_second_ctrl_c_during_the_exit_goodbye_is_quiet(monkeypatch):
    """The goodbye at the interpreter's exit interrupted by a second Ctrl-C ends without a
    traceback ("Exception ignored in atexit callback" before); the lease does the rest."""
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster_client, "disconnect", interrupted)
    cluster_client._disconnect_at_exit()  # returns, raising nothing
