"""A node that comes back at its own address as another node (docs/cluster.md, "Failures"),
before the head and the driver have timed the old one out.

The head and the driver here have ``REPARTIR_NODE_TIMEOUT=8``: longer than a node takes to
start again (``repartir start`` takes 2-3 s on a loaded 2-core machine), so the registry
lists the old node, alive, beside the new one at the same address for a while.  One address
serves one daemon at a time: the driver holds the old node for dead as soon as the registry
names another one there, and never connects to it again.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

import repartir
from repartir.cluster import client as cluster_client
from rtsupport import wait_until
from test_cluster import alive, cli, cluster_env, recorded

STORE = str(128 << 20)
NODE_TIMEOUT = 8.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, _leaves_nothing_behind):
    """A head (1 CPU) and a driver connected to it; the test adds the nodes it kills."""
    tmp = tmp_path_factory.mktemp("restarts")
    with cluster_env(tmp, NODE_TIMEOUT):
        head = cli("start", "--head", "--port", "0", "--num-cpus", "1",
                   "--object-store-memory", STORE)
        assert head.returncode == 0, head.stderr
        address = recorded()[0]["address"]
        repartir.init(address=address)
        yield {"address": address}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(address: str, port: int) -> tuple[int, str]:
    """Start a node (1 CPU, ``spot: 1``) listening on ``port``: its pid and node id."""
    r = cli("start", "--address", address, "--port", str(port), "--num-cpus", "1",
            "--resources", '{"spot": 1}', "--object-store-memory", STORE)
    assert r.returncode == 0, r.stderr
    pid = recorded()[-1]["pid"]
    found: list[str] = []
    assert wait_until(lambda: found.extend(
        n["NodeID"] for n in repartir.nodes()
        if n["NodeManagerPort"] == port and n["Alive"] and n["NodeID"] not in found)
        or found, 15), f"the node on port {port} did not show up"
    return pid, found[-1]


@repartir.remote
def slow(i, seconds):
    time.sleep(seconds)
    return repartir.get_runtime_context().get_node_id(), i


def test_a_node_restarted_at_its_port_takes_over_its_tasks(cluster):
    """A node killed and started again at its port (a new node id) while the head and the
    driver still list the old one as alive: the tasks the driver gave the old one, the one
    running and the one sent while nothing listened, run on the new one, well before the
    node timeout; the old node is dead to the driver, which does not connect to it again."""
    client = cluster_client.active()
    port = _free_port()
    old_pid, old_id = _join(cluster["address"], port)
    assert repartir.get(slow.options(resources={"spot": 1}).remote(1, 0.0),
                        timeout=60) == (old_id, 1)
    running = slow.options(resources={"spot": 1}, max_retries=2).remote(2, 3.0)
    time.sleep(0.5)
    os.kill(old_pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(old_pid), 30)
    t_kill = time.monotonic()
    late = slow.options(resources={"spot": 1}).remote(3, 0.0)
    with client._lock:
        assert client.inflight[late.binary()].node == old_id
    _, new_id = _join(cluster["address"], port)
    assert new_id != old_id
    assert repartir.get([running, late], timeout=60) == [(new_id, 2), (new_id, 3)]
    assert time.monotonic() - t_kill < NODE_TIMEOUT
    assert repartir.get(slow.options(resources={"spot": 1}).remote(4, 0.0),
                        timeout=60) == (new_id, 4)
    assert old_id not in client._eps
    assert [n["Alive"] for n in repartir.nodes() if n["NodeID"] == old_id] == [False]
