"""A cluster on loopback (docs/cluster.md): a head and a node started with the CLI, a driver
connected with ``init(address=...)``.

Each daemon is a process of its own (``repartir start`` detaches it), on 127.0.0.1 with ports
chosen by the OS; the state directory, the token file and the node timeout are this module's
own (``REPARTIR_CLUSTER_DIR``, ``REPARTIR_TOKEN_FILE``, ``REPARTIR_NODE_TIMEOUT=3``).  At the
end ``repartir stop`` stops them, and the test checks that they are gone.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import repartir
from repartir.cluster import client as cluster_client
from repartir.errors import NodeDiedError, TokenError
from repartir.runtime.session import sweep_dead_sessions
from repartir.config import CLUSTER_HEARTBEAT_S, resolve
from rtsupport import wait_until

STORE = str(256 << 20)
NODE_TIMEOUT = 3.0


def cli(*args: str, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "repartir", *args], capture_output=True,
                          text=True, timeout=timeout, env=env or dict(os.environ))


def recorded() -> list[dict]:
    with open(os.path.join(os.environ["REPARTIR_CLUSTER_DIR"], "processes.json")) as f:
        return json.load(f)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


ENV_NAMES = ("REPARTIR_CLUSTER_DIR", "REPARTIR_TOKEN_FILE", "REPARTIR_TOKEN", "REPARTIR_ADDRESS",
             "REPARTIR_SERVER_KEY", "REPARTIR_NODE_TIMEOUT")


@contextlib.contextmanager
def cluster_env(tmp, node_timeout: float):
    """A test module's own cluster: its state directory and token file under ``tmp``, its
    ``REPARTIR_NODE_TIMEOUT`` (seconds), no token, address or server key from outside, and
    no driver connected.  At the end: the driver disconnected, every daemon that ``start``
    recorded stopped (``repartir stop``) and checked gone, what killed daemons left in
    /dev/shm swept, and the environment as it was."""
    saved = {k: os.environ.get(k) for k in ENV_NAMES}
    for k in ENV_NAMES:
        os.environ.pop(k, None)
    os.environ.update(REPARTIR_CLUSTER_DIR=str(tmp / "state"),
                      REPARTIR_TOKEN_FILE=str(tmp / "token"),
                      REPARTIR_NODE_TIMEOUT=str(node_timeout))
    if repartir.is_initialized():
        repartir.shutdown()
    try:
        yield
    finally:
        repartir.shutdown()
        try:
            pids = [r["pid"] for r in recorded()]  # the nodes the tests started too
        except OSError:
            pids = []
        stopped = cli("stop")
        sweep_dead_sessions(resolve(num_cpus=1, object_store_memory=64 << 20,
                                    num_gpus=0).temp_dir, "/dev/shm")
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        left = [pid for pid in pids if alive(pid)]
        assert not left, f"daemons left running: {left}\n{stopped.stdout}{stopped.stderr}"


def start_head_and_node(store: str = STORE) -> dict:
    """Start (inside :func:`cluster_env`) a head (1 CPU, ``on_head: 1``) and a node (1 CPU,
    ``big_mem: 1``), each with ``store`` bytes of object store, and connect this process's
    driver: the head's address, its ``start`` output and the daemons' pids."""
    head = cli("start", "--head", "--port", "0", "--num-cpus", "1",
               "--resources", '{"on_head": 1}', "--object-store-memory", store)
    assert head.returncode == 0, head.stderr
    address = recorded()[0]["address"]
    node = cli("start", "--address", address, "--num-cpus", "1",
               "--resources", '{"big_mem": 1}', "--object-store-memory", store)
    assert node.returncode == 0, node.stderr
    repartir.init(address="auto")
    return {"address": address, "head_out": head.stdout,
            "pids": [r["pid"] for r in recorded()]}


def join_node(address: str, resources: str, store: str = STORE) -> tuple[dict, int]:
    """Join a node (1 CPU, ``resources`` as JSON, ``store`` bytes of object store) to the
    head at ``address`` and wait until the connected driver sees it alive: its record
    (``pid``, ``address``) and its port."""
    r = cli("start", "--address", address, "--num-cpus", "1", "--resources", resources,
            "--object-store-memory", store)
    assert r.returncode == 0, r.stderr
    rec = recorded()[-1]
    port = int(rec["address"].rsplit(":", 1)[1])
    assert wait_until(lambda: any(n["NodeManagerPort"] == port and n["Alive"]
                                  for n in repartir.nodes()), 20)
    return rec, port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, _leaves_nothing_behind):
    """A head (1 CPU, ``on_head: 1``) and a node (1 CPU, ``big_mem: 1``), a driver connected
    to them."""
    tmp = tmp_path_factory.mktemp("cluster")
    with cluster_env(tmp, NODE_TIMEOUT):
        yield {"tmp": tmp, **start_head_and_node()}


@repartir.remote
def where(x, delay=0.0):
    time.sleep(delay)
    return repartir.get_runtime_context().get_node_id(), x * 2


@repartir.remote
def ident(a):
    return a


def test_start_prints_address_token_file_and_commands(cluster):
    out = cluster["head_out"]
    token_file = os.environ["REPARTIR_TOKEN_FILE"]
    assert cluster["address"] in out
    assert token_file in out and "0600" in out
    assert f"repartir start --address {cluster['address']}" in out
    assert f'repartir.init(address="{cluster["address"]}")' in out
    assert os.stat(token_file).st_mode & 0o777 == 0o600


def test_tasks_run_on_both_nodes(cluster):
    ids = {n["NodeID"] for n in repartir.nodes() if n["Alive"]}
    assert len(ids) == 2
    out = repartir.get([where.remote(i, 0.2) for i in range(8)], timeout=60)
    assert [v for _, v in out] == [2 * i for i in range(8)]
    assert {nid for nid, _ in out} == ids


def test_custom_resources_attract_tasks(cluster):
    big = [n["NodeID"] for n in repartir.nodes() if n["Resources"].get("big_mem")]
    assert len(big) == 1
    out = repartir.get([where.options(resources={"big_mem": 1}).remote(i) for i in range(6)],
                       timeout=60)
    assert {nid for nid, _ in out} == set(big)
    with pytest.raises(repartir.InfeasibleTaskError, match="no node of the cluster"):
        where.options(resources={"huge_mem": 1}).remote(0)


def test_resources_cover_the_cluster(cluster):
    total = repartir.cluster_resources()
    assert total["CPU"] == 2.0 and total["big_mem"] == 1.0
    avail = repartir.available_resources()
    assert 0 <= avail["CPU"] <= 2.0 and avail["big_mem"] in (0.0, 1.0)


def test_large_array_round_trip(cluster):
    a = np.random.default_rng(1).random(8 << 20)  # 64 MiB
    b = repartir.get(ident.remote(a), timeout=90)
    assert b.nbytes == 64 << 20 and np.array_equal(a, b)
    ref = repartir.put(a)
    total = repartir.get(repartir.remote(lambda x: float(x.sum())).remote(ref), timeout=90)
    assert total == float(a.sum())


def test_a_result_kept_on_a_node_feeds_a_task_there(cluster):
    a = np.arange(1 << 20, dtype=np.float64)  # 8 MiB: kept on its node, not inline
    ref = ident.remote(a)
    s = repartir.get(repartir.remote(lambda x: float(x.sum())).remote(ref), timeout=60)
    assert s == float(a.sum())
    assert np.array_equal(repartir.get(ref, timeout=60), a)


def test_a_task_queued_on_the_node_of_its_argument_outlives_the_drivers_ref(cluster, tmp_path):
    """``r2 = f.remote(r1); del r1`` while r2's task waits in the queue of the node that
    keeps r1: the driver's release must not reach that node before the task took it."""
    a = np.arange(1 << 20, dtype=np.float64)  # 8 MiB: kept on the big_mem node
    r1 = ident.options(resources={"big_mem": 1}).remote(a)
    repartir.wait([r1], timeout=60)
    gate = tmp_path / "open"
    @repartir.remote(resources={"big_mem": 1})
    def waits(path):
        while not os.path.exists(path):
            time.sleep(0.02)
        return 0

    busy = [waits.remote(str(gate)) for _ in range(8)]  # the node's runtime, then its queue
    total = repartir.remote(resources={"big_mem": 1})(lambda x: float(x.sum()))
    r2 = total.remote(r1)
    del r1
    gc.collect()
    time.sleep(1.5)  # the release of r1 leaves the driver now (its loop runs meanwhile)
    gate.touch()
    assert repartir.get(busy, timeout=60) == [0] * 8
    assert repartir.get(r2, timeout=60) == float(a.sum())

def test_a_result_kept_on_one_node_feeds_a_task_on_the_other(cluster):
    a = np.arange(1 << 20, dtype=np.float64)  # 8 MiB: kept on the node that made it
    ref = ident.options(resources={"big_mem": 1}).remote(a)
    task = repartir.remote(resources={"on_head": 1})(
        lambda x: (repartir.get_runtime_context().get_node_id(), float(x.sum())))
    nid, s = repartir.get(task.remote(ref), timeout=60)
    assert s == float(a.sum())
    assert nid == [n["NodeID"] for n in repartir.nodes() if "on_head" in n["Resources"]][0]


def test_errors_and_wait(cluster):
    @repartir.remote(max_retries=0)
    def boom():
        raise KeyError("no such thing")

    with pytest.raises(KeyError, match="no such thing") as info:
        repartir.get(boom.remote(), timeout=60)
    # the remote traceback names this file and shows the line (not "<dynamic-code>")
    assert "test_cluster.py" in str(info.value) and 'raise KeyError("no such' in str(info.value)

    class PairError(Exception):  # its __init__ does not take its args: made from its state
        def __init__(self, a, b):
            super().__init__(f"{a}/{b}")
            self.pair = (a, b)

    @repartir.remote(max_retries=0)
    def pair_boom():
        raise PairError(3, 4)

    with pytest.raises(PairError, match="3/4") as info:
        repartir.get(pair_boom.remote(), timeout=60)
    assert info.value.pair == (3, 4) and isinstance(info.value, repartir.TaskError)
    fast, slow = where.remote(1), where.remote(2, 5.0)
    ready, not_ready = repartir.wait([slow, fast], num_returns=1, timeout=30)
    assert ready == [fast] and not_ready == [slow]
    with pytest.raises(repartir.GetTimeoutError):
        repartir.get(slow, timeout=0.2)
    assert repartir.get(slow, timeout=60)[1] == 4


def test_what_this_slice_refuses_says_so(cluster):
    import pickle

    ref = where.remote(1)
    with pytest.raises(repartir.RepartirError, match="get\\(\\) it first"):
        pickle.dumps(ref)
    assert repartir.get(ident.remote(ref), timeout=60)[1] == 2
    (back,) = repartir.get(ident.remote([ref]), timeout=60)  # nested: a ref, and back
    assert repartir.get(back, timeout=60)[1] == 2


def test_status_lists_the_nodes(cluster):
    r = cli("status")
    assert r.returncode == 0, r.stderr
    assert "2 node(s) alive, 0 dead" in r.stdout
    for n in repartir.nodes():
        assert n["NodeID"][:12] in r.stdout
    assert "big_mem=1" in r.stdout
    assert r.stdout.count(" s ago)") == 2  # the counts are those of each node's last heartbeat


def test_wrong_token_is_refused_on_both_sides(cluster):
    other = "f" * 64
    env = dict(os.environ, REPARTIR_TOKEN=other)
    r = cli("start", "--address", cluster["address"], "--num-cpus", "1", env=env)
    assert r.returncode == 1
    assert "refused" in r.stderr and "token" in r.stderr
    logs = [p for p in (cluster["tmp"] / "state").iterdir() if p.name.endswith(".log")]
    head_log = [p.read_text() for p in logs if "(head)" in p.read_text()][0]
    assert "does not verify" in head_log
    code = ("import repartir, sys\n"
            "try:\n"
            f"    repartir.init(address={cluster['address']!r})\n"
            "except repartir.errors.TokenError as e:\n"
            "    print('TokenError:', e); sys.exit(3)\n")
    d = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60)
    assert d.returncode == 3, d.stdout + d.stderr
    assert "refused" in d.stdout
    assert issubclass(TokenError, PermissionError)


def test_what_tasks_print_reaches_the_driver(cluster):
    """As Ray's ``log_to_driver``: the lines a task prints on a node reach the driver's
    stdout or stderr, prefixed with the worker's pid and the node's address."""
    code = textwrap.dedent(f"""
        import sys, time
        import repartir
        repartir.init(address={cluster["address"]!r})

        @repartir.remote
        def hello(i):
            print(f"hello from task {{i}}")
            print(f"oops {{i}}", file=sys.stderr)
            return i

        big = [hello.options(resources={{"big_mem": 1}}).remote(i) for i in range(3)]
        head = [hello.options(resources={{"on_head": 1}}).remote(i) for i in range(3, 5)]
        assert repartir.get(big + head, timeout=60) == list(range(5))
        time.sleep(2.0)  # the lines travel beside the results, not before them
    """)
    d = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert d.returncode == 0, d.stderr
    for i in range(5):
        assert re.search(rf"^\(worker pid=\d+, ip=127\.0\.0\.1\) hello from task {i}$",
                         d.stdout, re.MULTILINE), d.stdout
        assert re.search(rf"^\(worker pid=\d+, ip=127\.0\.0\.1\) oops {i}$", d.stderr,
                         re.MULTILINE), d.stderr

def _held() -> dict[str, int]:
    """The live nodes' results kept, and tasks queued or running, from the registry."""
    repartir.nodes()  # a fresh look at the registry
    recs = [r for r in cluster_client.active().nodes_seen.values() if r["Alive"]]
    return {k: sum(r[k] for r in recs) for k in ("Stored", "Queued", "Running")}


def test_what_a_killed_driver_kept_on_the_nodes_is_dropped(cluster):
    """A driver killed with SIGKILL cannot release what it kept: once the head has not
    heard from it for REPARTIR_NODE_TIMEOUT, the nodes drop the results they kept for it
    and its queued and running tasks (docs/cluster.md, "Failures"); another driver's are
    kept."""
    prior = _held()
    mine = ident.options(resources={"big_mem": 1}).remote(np.ones(1 << 20))  # kept there
    repartir.wait([mine], timeout=60)
    # the registry counts it once the node's next heartbeat has reached the head
    assert wait_until(lambda: _held()["Stored"] > prior["Stored"], 20), _held()
    before = _held()
    code = textwrap.dedent(f"""
        import time
        import numpy as np
        import repartir
        repartir.init(address={cluster["address"]!r})
        big = repartir.remote(lambda i: np.full(1 << 20, float(i)))  # 8 MiB: kept on a node
        refs = [big.remote(i) for i in range(4)]
        assert len(repartir.wait(refs, num_returns=4, timeout=60)[0]) == 4
        nap = repartir.remote(lambda: time.sleep(60))
        naps = [nap.remote() for _ in range(6)]  # running on both nodes, and queued
        print("READY", flush=True)
        time.sleep(120)
    """)
    d = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert d.stdout.readline().strip() == "READY"
        assert wait_until(lambda: _held()["Stored"] >= before["Stored"] + 4
                          and _held()["Running"] >= 2, 20), _held()
        d.kill()
        d.wait(30)
        t_kill = time.monotonic()
        assert wait_until(lambda: _held() == before, 4 * NODE_TIMEOUT + 10), _held()
        # not before its timeout, counted from its last registry request (a heartbeat at
        # most before the kill)
        assert time.monotonic() - t_kill > NODE_TIMEOUT - CLUSTER_HEARTBEAT_S - 0.5
    finally:
        d.kill()
        d.wait(30)
    assert float(repartir.get(mine, timeout=60).sum()) == float(1 << 20)
    logs = [p.read_text() for p in (cluster["tmp"] / "state").glob("node-*.log")]
    assert any("taken for gone; dropped" in t for t in logs)

def test_a_killed_node_tasks_are_retried_or_fail_clearly(cluster):
    """A third node, killed while it runs tasks: tasks that fit elsewhere are retried there,
    those that only it can run raise NodeDiedError within the node timeout."""
    r = cli("start", "--address", cluster["address"], "--num-cpus", "1",
            "--resources", '{"victim": 1}', "--object-store-memory", STORE)
    assert r.returncode == 0, r.stderr
    victim = recorded()[-1]
    deadline = time.monotonic() + 10
    while len([n for n in repartir.nodes() if n["Alive"]]) < 3:
        assert time.monotonic() < deadline, "the third node did not show up"
    victim_id = [n["NodeID"] for n in repartir.nodes()
                 if n["NodeManagerPort"] == int(victim["address"].rsplit(":", 1)[1])][0]
    only_there = where.options(resources={"victim": 1}, max_retries=3).remote(0, 30.0)
    anywhere = [where.remote(i, 2.0) for i in range(6)]
    client = cluster_client.active()
    with client._lock:
        placed = [client.inflight[r.binary()].node for r in anywhere]
    assert victim_id in placed  # so some of them must be retried elsewhere
    time.sleep(0.7)
    os.kill(victim["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(NodeDiedError, match=victim_id[:12]):
        repartir.get(only_there, timeout=60)
    assert time.monotonic() - t0 < 60
    out = repartir.get(anywhere, timeout=90)
    assert [v for _, v in out] == [2 * i for i in range(6)]
    assert victim_id not in {nid for nid, _ in out}
    dead = [n for n in repartir.nodes() if n["NodeID"] == victim_id]
    assert dead and dead[0]["Alive"] is False
    # what the killed daemon left in /dev/shm (its workers exit by themselves)
    sweep_dead_sessions(resolve(num_cpus=1, object_store_memory=64 << 20, num_gpus=0).temp_dir,
                        "/dev/shm")


def test_stop_stops_exactly_the_recorded_processes(cluster):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pids = [r["pid"] for r in recorded() if alive(r["pid"])]
        assert set(cluster["pids"]) <= set(pids)
        repartir.shutdown()
        r = cli("stop")
        assert r.returncode == 0, r.stderr
        for pid in pids:
            assert f"pid {pid}" in r.stdout
            assert not alive(pid)
        assert bystander.poll() is None
        assert recorded() == []
        assert "no repartir cluster process" in cli("stop").stdout
    finally:
        bystander.kill()
        bystander.wait()
