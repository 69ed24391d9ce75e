"""Actors on a loopback cluster (docs/cluster.md, "Actors on a cluster"): a head
(``on_head: 1``) and a node (``big_mem: 1``) started with the CLI, a driver in the test
process, second drivers as subprocesses; the failure tests add nodes and SIGKILL them.
The cluster fixture is test_cluster.py's (its own instance for this module)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import repartir
from repartir.cluster import client as cluster_client
from repartir.config import cluster_state_dir, resolve
from repartir.errors import ActorDiedError
from repartir.runtime.session import sweep_dead_sessions
from test_cluster import STORE, alive, cli, cluster, recorded  # noqa: F401 (the fixture)

pytestmark = pytest.mark.usefixtures("cluster")


def node_of(resource: str) -> str:
    return [n["NodeID"] for n in repartir.nodes() if n["Alive"] and resource in n["Resources"]][0]


def wait_until(cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def driver(code: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """A second driver process on the same cluster (``init(address="auto")``)."""
    code = "import repartir, os, sys, time\nrepartir.init(address='auto')\n" + \
        textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


@repartir.remote
class Counter:
    def __init__(self, start=0):
        self.n = start
        self.seen = []

    def add(self, i):
        self.n += 1
        self.seen.append(i)
        return self.n

    def history(self):
        return self.seen

    def where(self):
        return repartir.get_runtime_context().get_node_id(), os.getpid()

    def big(self, n):
        return np.arange(n, dtype=np.float64)

    def total(self, a):
        return float(np.asarray(a).sum())

    def slow(self, s):
        time.sleep(s)
        return s


@repartir.remote
class Sleeper:
    def __init__(self):
        self.now = 0
        self.most = 0
        self.lock = threading.Lock()

    def nap(self, s):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(s)
        with self.lock:
            self.now -= 1
        return self.most


@repartir.remote
class AsyncWaiter:
    def __init__(self):
        self.now = 0
        self.most = 0

    async def nap(self, s):
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(s)
        self.now -= 1
        return self.most


@repartir.remote
def ident(a):
    return a


def test_actors_are_placed_by_custom_resource():
    on_head = Counter.options(resources={"on_head": 1}).remote()
    on_node = Counter.options(resources={"big_mem": 1}).remote()
    assert repartir.get(on_head.where.remote(), timeout=60)[0] == node_of("on_head")
    assert repartir.get(on_node.where.remote(), timeout=60)[0] == node_of("big_mem")
    with pytest.raises(repartir.InfeasibleTaskError, match="big_mem"):
        Counter.options(resources={"huge_mem": 1}).remote()


def test_calls_run_in_submission_order():
    c = Counter.remote(10)
    refs = [c.add.remote(i) for i in range(300)]
    assert repartir.get(refs, timeout=60) == list(range(11, 311))
    assert repartir.get(c.history.remote(), timeout=60) == list(range(300))


def test_threaded_and_async_actors_run_calls_concurrently():
    t = Sleeper.options(max_concurrency=4).remote()
    assert max(repartir.get([t.nap.remote(0.5) for _ in range(8)], timeout=60)) > 1
    a = AsyncWaiter.remote()
    assert max(repartir.get([a.nap.remote(0.5) for _ in range(20)], timeout=60)) > 1


def test_a_large_result_is_pulled_and_feeds_tasks_and_calls():
    c = Counter.options(resources={"big_mem": 1}).remote()
    other = Counter.options(resources={"on_head": 1}).remote()
    ref = c.big.remote(1 << 20)  # 8 MiB: kept on the actor's node
    expect = np.arange(1 << 20, dtype=np.float64)
    assert np.array_equal(repartir.get(ref, timeout=60), expect)
    client = cluster_client.active()
    with client._lock:
        assert client.results[ref.binary()][0] in ("stored", "fetched")
    assert repartir.get(c.total.remote(ref), timeout=60) == float(expect.sum())
    assert repartir.get(other.total.remote(ref), timeout=60) == float(expect.sum())
    assert np.array_equal(repartir.get(ident.remote(ref), timeout=60), expect)


def test_errors_and_what_is_refused():
    @repartir.remote
    class Broken:
        def __init__(self):
            raise KeyError("no constructor today")

        def f(self):
            return 1

    b = Broken.remote()
    with pytest.raises(ActorDiedError, match="no constructor today"):
        repartir.get(b.f.remote(), timeout=60)
    c = Counter.remote()
    with pytest.raises(TypeError, match="too many"):
        c.add.remote(1, 2)
    assert repartir.get(ident.remote(c), timeout=60) == c  # to a task and back
    with pytest.raises(repartir.RepartirError, match="'dynamic' is not"):
        c.add.options(num_returns="dynamic").remote(1)


def test_named_actor_from_a_second_driver():
    c = Counter.options(name="shared", namespace="team").remote()
    assert repartir.get(c.add.remote("driver 1"), timeout=60) == 1
    r = driver("""
        h = repartir.get_actor("shared", namespace="team")
        print("n", repartir.get(h.add.remote("driver 2"), timeout=60))
        try:
            repartir.remote(type("Counter", (), {"f": lambda self: 1})).options(
                name="shared", namespace="team").remote()
        except ValueError as e:
            print("duplicate:", e)
        g = repartir.get_actor("shared", namespace="team")
        print("same", g == h)
        try:
            repartir.get_actor("shared")
        except ValueError as e:
            print("other namespace:", e)
    """)
    assert r.returncode == 0, r.stderr
    assert "n 2" in r.stdout
    assert "duplicate: an actor named 'shared' already exists" in r.stdout
    assert "same True" in r.stdout
    assert "other namespace: no live actor named 'shared'" in r.stdout
    assert repartir.get(c.history.remote(), timeout=60) == ["driver 1", "driver 2"]
    again = Counter.options(name="shared", namespace="team", get_if_exists=True).remote(99)
    assert again == c and repartir.get(again.add.remote(3), timeout=60) == 3
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="shared", namespace="team").remote()


def test_kill_ends_the_actor_and_frees_its_name():
    c = Counter.options(name="victim").remote()
    _, pid = repartir.get(c.where.remote(), timeout=60)
    slow = c.slow.remote(30)
    repartir.kill(c)
    wait_until(lambda: not alive(pid), "the killed actor's process to be gone")
    with pytest.raises(ActorDiedError):
        repartir.get(slow, timeout=60)
    with pytest.raises(ActorDiedError, match="killed"):
        repartir.get(c.add.remote(1), timeout=60)
    with pytest.raises(ValueError, match="no live actor"):
        repartir.get_actor("victim")
    d = Counter.options(name="victim").remote()  # the name is free again
    assert repartir.get(d.add.remote(0), timeout=60) == 1
    repartir.kill(d)
    r = Counter.options(max_restarts=1).remote()
    _, pid = repartir.get(r.where.remote(), timeout=60)
    repartir.kill(r, no_restart=False)  # its node restarts its process
    assert repartir.get(r.where.remote(), timeout=60)[1] != pid
    e = Counter.remote()
    _, pid = repartir.get(e.where.remote(), timeout=60)
    before = e.add.remote(1)
    e.__ray_terminate__.remote()  # ends it after the calls made before
    assert repartir.get(before, timeout=60) == 1
    with pytest.raises(ActorDiedError):
        repartir.get(e.add.remote(1), timeout=60)
    wait_until(lambda: not alive(pid), "the terminated actor's process to end")


def test_dropping_the_last_handle_ends_the_actor():
    client = cluster_client.active()
    nid = node_of("big_mem")

    def actors_on_node():
        client.nodes()  # a fresh registry (the node's heartbeat counts its actors)
        return client.nodes_seen[nid].get("Actors")

    gc.collect()  # the handles earlier tests dropped: their actors end first
    wait_until(lambda: actors_on_node() == client.actors._per_node.get(nid, 0),
               "the node to count only this driver's live actors")
    before = actors_on_node()
    c = Counter.options(resources={"big_mem": 1}).remote()
    _, pid = repartir.get(c.where.remote(), timeout=60)
    ref = c.add.remote(5)
    wait_until(lambda: actors_on_node() == before + 1, "the node to count the actor")
    del c
    assert repartir.get(ref, timeout=60) == 1  # a call made before still ran
    wait_until(lambda: not alive(pid), "the actor's process to end")
    wait_until(lambda: actors_on_node() == before, "the node's actor count to go back")


def test_a_driver_exit_ends_its_actors_but_not_detached_ones():
    r = driver("""
        c = repartir.remote(type("C", (), {"pid": lambda self: os.getpid()})).remote()
        d = repartir.remote(type("D", (), {"pid": lambda self: os.getpid()})).options(
            name="keeper", lifetime="detached").remote()
        print(repartir.get(c.pid.remote(), timeout=60), repartir.get(d.pid.remote(), timeout=60))
    """)
    assert r.returncode == 0, r.stderr
    plain, detached = map(int, r.stdout.split())
    wait_until(lambda: not alive(plain), "the driver's actor to end after its exit")
    assert alive(detached)
    keeper = repartir.get_actor("keeper")
    assert repartir.get(keeper.pid.remote(), timeout=60) == detached
    repartir.kill(keeper)
    wait_until(lambda: not alive(detached), "the killed actor's process to be gone")


def _extra_node(resources: str) -> tuple[str, int]:
    r = cli("start", "--address", recorded()[0]["address"], "--num-cpus", "1",
            "--resources", resources, "--object-store-memory", STORE)
    assert r.returncode == 0, r.stderr
    rec = recorded()[-1]
    port = int(rec["address"].rsplit(":", 1)[1])
    wait_until(lambda: any(n["NodeManagerPort"] == port and n["Alive"]
                           for n in repartir.nodes()), "the new node to join")
    return [n["NodeID"] for n in repartir.nodes() if n["NodeManagerPort"] == port][0], rec["pid"]


def test_an_actor_restarts_on_another_node_when_its_node_dies():
    """Two nodes with ``spare: 2``; the actor's is SIGKILLed: the actor comes back on the
    other one (constructor re-run, state lost), the call in flight is sent again
    (max_task_retries=1), and a second driver's handle (from get_actor) follows it; then,
    with max_restarts=0, the survivor's death makes an actor dead for good: its call in
    flight and later calls raise ActorDiedError naming the node."""
    nodes = dict([_extra_node('{"spare": 2}'), _extra_node('{"spare": 2}')])
    c = Counter.options(resources={"spare": 1}, max_restarts=1, max_task_retries=1,
                        name="mover").remote(100)
    assert repartir.get(c.add.remote(0), timeout=60) == 101
    first, _ = repartir.get(c.where.remote(), timeout=60)
    go = cluster_state_dir() + "/go"
    other = subprocess.Popen(  # a second driver with a handle from get_actor
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, sys, time, repartir
            repartir.init(address="auto")
            h = repartir.get_actor("mover")
            print(repartir.get(h.where.remote(), timeout=60)[0], flush=True)
            while not os.path.exists({go!r}):
                time.sleep(0.05)
            deadline = time.monotonic() + 30
            while True:  # until its owner has restarted it
                try:
                    print(repartir.get(h.where.remote(), timeout=60)[0], flush=True)
                    break
                except repartir.ActorDiedError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
        """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert other.stdout.readline().strip() == first
        in_flight = c.slow.remote(3)
        time.sleep(0.5)
        os.kill(nodes[first], signal.SIGKILL)
        assert repartir.get(in_flight, timeout=60) == 3  # run again on the other node
        second, _ = repartir.get(c.where.remote(), timeout=60)
        assert second != first and second in nodes
        assert repartir.get(c.add.remote(1), timeout=60) == 101  # a new instance
        open(go, "w").close()
        out, err = other.communicate(timeout=90)
        assert other.returncode == 0, err
        assert out.strip() == second  # the other driver followed it
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()

    last = Counter.options(resources={"spare": 1}, max_restarts=0).remote()
    assert repartir.get(last.where.remote(), timeout=60)[0] == second
    os.kill(nodes[second], signal.SIGKILL)
    with pytest.raises(ActorDiedError, match=second[:12]):
        repartir.get(last.slow.remote(60), timeout=60)
    with pytest.raises(ActorDiedError, match=second[:12]):
        repartir.get(last.add.remote(1), timeout=60)
    with pytest.raises(ActorDiedError, match="used up"):  # c has no restart left
        repartir.get(c.add.remote(2), timeout=60)
    sweep_dead_sessions(resolve(num_cpus=1, object_store_memory=64 << 20, num_gpus=0).temp_dir,
                        "/dev/shm")
