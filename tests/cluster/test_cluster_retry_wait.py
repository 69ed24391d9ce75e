"""A task that only a dead node fitted waits in the driver for a node that fits
(docs/cluster.md, "Failures"; repartir/cluster/unplaced.py): a task retried after its
node's death, and a new ``.remote()`` of such a task, run once a node with the resource
joins within ``REPARTIR_NODE_TIMEOUT``, else fail with a clear error after it; a task with
``max_retries=0`` fails at once; cancel and shutdown end the wait; a frozen node thawed (a new
incarnation) runs the retry.

Each daemon is started with the CLI (``repartir start``) with ``REPARTIR_NODE_TIMEOUT=2``, the
driver's is 8 s (so a node started after a death is declared joins within its wait);
the module's head has 1 CPU and one node 1 CPU, none of them ``big_mem``; each test adds
the ``big_mem`` node it kills (SIGKILL), and the one that joins after its death.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import repartir
from repartir.cluster import client as cluster_client
from repartir.errors import NodeDiedError, TaskCancelledError
from rtsupport import wait_until
from test_cluster import alive, cli, cluster_env, recorded
from test_cluster_failures import _free_port, _sweep

STORE = str(64 << 20)
NODE_TIMEOUT = 2.0  # the daemons': a killed node is declared dead 2 s after its last beat
#: This driver's REPARTIR_NODE_TIMEOUT, so the bound of its wait for a node that fits: the
#: start of a new node (``repartir start``, a few seconds here) fits in it
DRIVER_TIMEOUT = 8.0


@pytest.fixture(scope="module")
def env(tmp_path_factory, _leaves_nothing_behind):
    tmp = tmp_path_factory.mktemp("retry_wait")
    with cluster_env(tmp, NODE_TIMEOUT):
        try:
            yield tmp
        finally:
            _sweep()


def _join(address: str, resources: str = "{}") -> dict:
    r = cli("start", "--address", address, "--num-cpus", "1", "--resources", resources,
            "--object-store-memory", STORE)
    assert r.returncode == 0, r.stderr
    return recorded()[-1]


@pytest.fixture(scope="module")
def cluster(env):
    port = _free_port()
    r = cli("start", "--head", "--port", str(port), "--num-cpus", "1",
            "--object-store-memory", STORE)
    assert r.returncode == 0, r.stderr
    address = f"127.0.0.1:{port}"
    _join(address)
    _connect(address)
    return {"address": address, "tmp": env}


def _connect(address: str) -> None:
    repartir.init(address=address)
    cluster_client.active().timeout = DRIVER_TIMEOUT


@repartir.remote
def counted(path, release):
    """Counts its runs in ``path``; its first run holds until ``release`` exists (its node
    is killed meanwhile)."""
    with open(path, "a") as f:
        f.write("run\n")
    with open(path) as f:
        n = len(f.read().splitlines())
    deadline = time.monotonic() + 60
    while n == 1 and not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


@repartir.remote
def counted_short(path, seconds):
    """Counts its runs in ``path``; its first run takes ``seconds``."""
    with open(path, "a") as f:
        f.write("run\n")
    with open(path) as f:
        n = len(f.read().splitlines())
    if n == 1:
        time.sleep(seconds)
    return n


@repartir.remote
def big_bytes(n):
    return b"x" * n  # over CLUSTER_INLINE_RESULT_BYTES: kept on its node


@repartir.remote(resources={"big_mem": 1})
def length_of_first(refs):
    return len(repartir.get(refs[0]))

@repartir.remote(resources={"big_mem": 1})
def on_big(i):
    return i + 1


def _runs(path) -> int:
    try:
        with open(path) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


def _node_id(rec: dict) -> str:
    port = int(rec["address"].rsplit(":", 1)[1])
    found = []
    assert wait_until(lambda: found.extend(
        n["NodeID"] for n in repartir.nodes() if n["NodeManagerPort"] == port and n["Alive"])
        or found, 20), f"node {rec['address']} did not show up"
    return found[0]


def _connected(nid: str) -> bool:
    client = cluster_client.active()
    with client._lock:
        return nid in client._eps


def _kill_and_see_it_dead(rec: dict, nid: str) -> float:
    """SIGKILL node ``rec``; returns once this driver has handled its death (when)."""
    os.kill(rec["pid"], signal.SIGKILL)
    client = cluster_client.active()

    def dead() -> bool:
        with client._lock:
            return not client.nodes_seen[nid]["Alive"]
    assert wait_until(dead, 4 * NODE_TIMEOUT + 10), "the killed node was not declared dead"
    return time.monotonic()


def _no_big_mem_alive() -> None:
    """Wait until this driver holds every big_mem node of the tests before dead (one stopped
    at a test's end may be alive to it a moment longer: a retry would go there)."""
    client = cluster_client.active()

    def none() -> bool:
        with client._lock:
            return not any(r["Alive"] and r["Resources"].get("big_mem")
                           for r in client.nodes_seen.values())
    assert wait_until(none, 4 * NODE_TIMEOUT + 10), "a big_mem node is still alive"


def _big_mem_node(address: str) -> tuple[dict, str]:
    """A new big_mem node, the only one alive, connected to this driver: (record, id)."""
    _no_big_mem_alive()
    rec = _join(address, '{"big_mem": 1}')
    nid = _node_id(rec)
    assert wait_until(lambda: _connected(nid), 10)
    return rec, nid


def _started(address: str, tmp, name: str, retries: int):
    """A big_mem node; a ``counted`` task on it, running (its first run holds)."""
    victim, vid = _big_mem_node(address)
    path, release = str(tmp / f"{name}.runs"), str(tmp / f"{name}.release")
    ref = counted.options(resources={"big_mem": 1}, max_retries=retries).remote(path, release)
    assert wait_until(lambda: _runs(path) == 1, 30), "the task did not start"
    return victim, vid, ref, path, release


def test_a_retry_waits_for_a_node_that_joins_after_the_death(cluster, tmp_path):
    victim, vid, ref, path, release = _started(cluster["address"], tmp_path, "retried", 1)
    once = counted.options(resources={"big_mem": 1}, max_retries=0).remote(
        str(tmp_path / "once.runs"), release)  # queued behind it on the victim
    _kill_and_see_it_dead(victim, vid)
    t0 = time.monotonic()
    with pytest.raises(NodeDiedError, match="max_retries are used up"):
        repartir.get(once, timeout=30)  # no retry: it fails at once, as before
    assert time.monotonic() - t0 < DRIVER_TIMEOUT / 2
    with pytest.raises(repartir.GetTimeoutError):  # it waits for a node that fits
        repartir.get(ref, timeout=0.3)
    # a new task no live node fits, while a node that fitted it is dead: it waits too
    later = on_big.remote(41)
    # and one whose argument is not ready yet (deps.py): it waits for both
    after = on_big.remote(counted_short.remote(str(tmp_path / "plain.runs"), 0.5))
    kept = big_bytes.remote(1 << 19)
    assert repartir.wait([kept], timeout=30)[0]
    nested = length_of_first.remote([kept])  # a ref kept on a node, nested in an argument
    heir = _join(cluster["address"], '{"big_mem": 1}')
    assert repartir.get(ref, timeout=60) == 2
    assert repartir.get(later, timeout=60) == 42
    assert repartir.get(after, timeout=60) == 2
    assert repartir.get(nested, timeout=60) == 1 << 19
    assert _runs(path) == 2  # it ran again exactly once
    assert _runs(str(tmp_path / "once.runs")) == 0  # it waited behind the first
    # a resource no node ever had still raises at once
    with pytest.raises(repartir.InfeasibleTaskError, match="no node of the cluster"):
        on_big.options(resources={"huge_mem": 1}).remote(0)
    open(release, "w").close()
    os.kill(heir["pid"], signal.SIGTERM)
    assert wait_until(lambda: not alive(heir["pid"]), 30)
    _sweep()


def test_no_node_fits_in_time_the_clear_error(cluster, tmp_path):
    victim, vid, ref, path, release = _started(cluster["address"], tmp_path, "alone", 2)
    dead_at = _kill_and_see_it_dead(victim, vid)
    later = on_big.remote(0)
    with pytest.raises(NodeDiedError) as info:
        repartir.get(ref, timeout=60)
    waited = time.monotonic() - dead_at
    assert DRIVER_TIMEOUT * 0.9 <= waited < DRIVER_TIMEOUT + 10, waited
    text = str(info.value)
    assert vid[:12] in text and "was declared dead" in text, text
    assert "it cannot run again: no live node fitted it for 8 s (REPARTIR_NODE_TIMEOUT)" in \
        text, text
    assert "big_mem" in text and "the live nodes have" in text, text
    with pytest.raises(repartir.InfeasibleTaskError, match="never ran: no live node fitted"):
        repartir.get(later, timeout=60)
    assert _runs(path) == 1
    open(release, "w").close()
    client = cluster_client.active()
    assert wait_until(lambda: not client.inflight and not client._lineage.waiting, 10)
    _sweep()


def test_cancel_and_shutdown_end_the_wait(cluster, tmp_path):
    victim, vid, ref, path, release = _started(cluster["address"], tmp_path, "cancelled", 2)
    other = counted.options(resources={"big_mem": 1}, max_retries=2).remote(
        str(tmp_path / "other.runs"), release)
    _kill_and_see_it_dead(victim, vid)
    with pytest.raises(repartir.GetTimeoutError):  # waiting for a node that fits
        repartir.get(other, timeout=0.3)
    t0 = time.monotonic()
    repartir.cancel(ref)
    with pytest.raises(TaskCancelledError):
        repartir.get(ref, timeout=30)
    assert time.monotonic() - t0 < DRIVER_TIMEOUT / 2
    t0 = time.monotonic()
    repartir.shutdown()  # ``other`` still waits: the driver ends all the same
    assert time.monotonic() - t0 < 5.0
    _connect(cluster["address"])
    open(release, "w").close()
    assert _runs(path) == 1
    _sweep()


def test_a_frozen_node_back_as_a_new_incarnation_runs_the_retry(cluster, tmp_path):
    """SIGSTOP, as a node cut off: declared dead while it runs the task, then thawed, it
    joins again (a new incarnation of the same node id) and the task runs there again."""
    frozen, fid = _big_mem_node(cluster["address"])
    path = str(tmp_path / "frozen.runs")
    ref = counted_short.options(resources={"big_mem": 1}, max_retries=1).remote(path, 1.0)
    assert wait_until(lambda: _runs(path) == 1, 30), "the task did not start"
    os.kill(frozen["pid"], signal.SIGSTOP)
    try:
        client = cluster_client.active()

        def dead() -> bool:
            with client._lock:
                return not client.nodes_seen[fid]["Alive"] or fid not in client._eps
        assert wait_until(dead, 4 * NODE_TIMEOUT + 10), "the frozen node was not declared dead"
        with pytest.raises(repartir.GetTimeoutError):  # it waits for a node that fits
            repartir.get(ref, timeout=0.3)
    finally:
        os.kill(frozen["pid"], signal.SIGCONT)
    assert repartir.get(ref, timeout=60) == 2  # the retry's result, not the stale one
    assert _runs(path) == 2
    nid, = {n["NodeID"] for n in repartir.nodes() if n["Alive"]
            and n["Resources"].get("big_mem")}
    assert nid == fid
    os.kill(frozen["pid"], signal.SIGTERM)
    assert wait_until(lambda: not alive(frozen["pid"]), 30)
    _sweep()


@repartir.remote
def held(path, release):
    """Counts its runs in ``path``; every run holds until ``release`` exists."""
    with open(path, "a") as f:
        f.write("run\n")
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    return 0


def test_the_node_of_the_retry_dying_too_fails_it_as_a_retry(cluster, tmp_path):
    victim, vid = _big_mem_node(cluster["address"])
    path, release = str(tmp_path / "twice.runs"), str(tmp_path / "twice.release")
    ref = held.options(resources={"big_mem": 1}, max_retries=2).remote(path, release)
    assert wait_until(lambda: _runs(path) == 1, 30), "the task did not start"
    _kill_and_see_it_dead(victim, vid)
    heir = _join(cluster["address"], '{"big_mem": 1}')
    hid = _node_id(heir)
    assert wait_until(lambda: _runs(path) == 2, 30), "the retry did not start on the new node"
    dead_at = _kill_and_see_it_dead(heir, hid)
    with pytest.raises(NodeDiedError, match="it cannot run again: no live node fitted it"):
        repartir.get(ref, timeout=60)
    assert time.monotonic() - dead_at >= DRIVER_TIMEOUT * 0.9
    assert _runs(path) == 2
    open(release, "w").close()
    _sweep()
