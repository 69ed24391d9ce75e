"""Work stealing between nodes (docs/cluster.md, "Work stealing"; repartir/cluster/stealing.py).

First the victim's choice, fed plain values (no sockets): the oldest tasks, up to half,
only those the thief can run.  Then a cluster on 127.0.0.1 started with the CLI: a driver
whose tasks all went to the head, the only node when it submitted them, sees them run on a
node that joined later too, each exactly once; and when a thief is killed, the tasks it
had stolen are resubmitted and every result arrives.
"""

from __future__ import annotations

import collections
import os
import signal
import time

import pytest

import repartir
from repartir.cluster import client as cluster_client
from repartir.cluster.state import StoredArg
from repartir.cluster.stealing import NodeStealing, QueuedTask, capacity_for, demand_of, fits
from repartir.config import resolve
from repartir.runtime.session import sweep_dead_sessions
from test_cluster import cli, cluster_env, recorded

STORE = str(256 << 20)


# --------------------------------------------------------------------------- the victim


class Victim(NodeStealing):
    """The queue part of a node daemon alone."""

    def __init__(self, cpus: float) -> None:
        self.total = {"CPU": cpus}
        self.pending: dict = {}
        self.node_id = "victim"
        self._init_stealing()


def queued(i: int, owner: bytes = b"d1", demand: dict | None = None,
           stealable: bool = True) -> QueuedTask:
    return QueuedTask(owner, bytes([i]), "f", [b""], [], {}, demand or {"CPU": 1.0}, stealable)


def test_a_victim_gives_the_oldest_half_of_what_the_thief_can_run():
    v = Victim(cpus=1)
    v.queue.extend(queued(i) for i in range(10))
    taken = v._take({"CPU": 4.0}, want=100, drivers={b"d1"}, nodes=2)
    assert [t.tid[0] for t in taken] == [0, 1, 2, 3, 4]  # steal-half, oldest first
    assert [t.tid[0] for t in v.queue] == [5, 6, 7, 8, 9]
    assert [t.tid[0] for t in v._take({"CPU": 4.0}, want=1, drivers={b"d1"}, nodes=2)] == [5]


def test_a_victim_keeps_what_the_thief_cannot_run_in_its_order():
    v = Victim(cpus=1)
    v.queue.extend([queued(0, demand={"CPU": 1.0, "big_mem": 1.0}),  # does not fit
                    queued(1, stealable=False),                       # a StoredArg
                    queued(2, owner=b"d2"),                           # a driver not there
                    queued(3), queued(4), queued(5), queued(6), queued(7)])
    taken = v._take({"CPU": 1.0}, want=100, drivers={b"d1"}, nodes=2)
    assert [t.tid[0] for t in taken] == [3, 4, 5, 6]
    assert [t.tid[0] for t in v.queue] == [0, 1, 2, 7]


def test_demand_and_fit():
    d = demand_of({"num_cpus": 2, "resources": {"big_mem": 1}})
    assert d == {"CPU": 2.0, "GPU": 0.0, "memory": 0.0, "big_mem": 1.0}
    assert fits(d, {"CPU": 2.0, "big_mem": 1.0}) and not fits(d, {"CPU": 8.0})


def test_a_task_with_a_stored_argument_is_not_stealable():
    v = Victim(cpus=1)

    class RF:
        _options: dict = {}

    v._enqueue(b"d1", b"t", "f", [b""], RF(), [StoredArg(b"x" * 16)], {})
    v._enqueue(b"d1", b"u", "f", [b""], RF(), [1], {"k": 2})
    assert [t.stealable for t in v.queue] == [False, True]


# --------------------------------------------------------------------------- a cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, _leaves_nothing_behind):
    """A head of one CPU alone, and a driver connected to it; tests add nodes."""
    tmp = tmp_path_factory.mktemp("stealing")
    info = {"tmp": tmp}
    with cluster_env(tmp, 3):
        head = cli("start", "--head", "--port", "0", "--num-cpus", "1",
                   "--object-store-memory", STORE)
        assert head.returncode == 0, head.stderr
        info["address"] = recorded()[0]["address"]
        repartir.init(address="auto")
        yield info


@repartir.remote(max_retries=3)
def work(i, runs_dir, delay):
    """Leaves a file per run in ``runs_dir``, waits for the file ``runs_dir/../gate`` (so
    that the test decides when tasks may end, whatever the machine's load), sleeps
    ``delay`` s."""
    node = repartir.get_runtime_context().get_node_id()
    with open(os.path.join(runs_dir, f"{i}-{os.getpid()}-{time.monotonic_ns()}"), "w") as f:
        f.write(node)
    gate = os.path.join(os.path.dirname(runs_dir), "gate")
    while not os.path.exists(gate):
        time.sleep(0.01)
    time.sleep(delay)
    return node, i


def on_node(refs, nid: str) -> list:
    """The refs whose tasks the driver knows to be on node ``nid``."""
    client = cluster_client.active()
    with client._lock:
        return [r for r in refs if r.binary() in client.inflight
                and client.inflight[r.binary()].node == nid]


def wait_for_steal(refs, thief: str) -> list:
    """Until the driver knows the thief holds some of ``refs`` (bounded): those."""
    deadline = time.monotonic() + 60
    while not (stolen := on_node(refs, thief)):
        assert time.monotonic() < deadline, "the new node stole nothing"
        time.sleep(0.05)
    return stolen


def join(cluster) -> tuple[int, str]:
    """Start a node of one CPU; wait until the driver knows it: (pid, node id)."""
    before = {n["NodeID"] for n in repartir.nodes()}
    r = cli("start", "--address", cluster["address"], "--num-cpus", "1",
            "--object-store-memory", STORE)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 30
    while True:
        new = [n["NodeID"] for n in repartir.nodes() if n["Alive"]
               and n["NodeID"] not in before]
        if new:
            return recorded()[-1]["pid"], new[0]
        assert time.monotonic() < deadline, "the new node did not show up"
        time.sleep(0.1)


def test_a_node_that_joins_later_steals_and_each_task_runs_once(cluster, tmp_path):
    (head,) = [n["NodeID"] for n in repartir.nodes() if n["Alive"]]
    runs = tmp_path / "runs"
    runs.mkdir()
    refs = [work.remote(i, str(runs), 0.1) for i in range(24)]  # all on the head
    assert len(on_node(refs, head)) == 24
    _, new = join(cluster)
    wait_for_steal(refs, new)
    (tmp_path / "gate").touch()
    out = repartir.get(refs, timeout=120)
    assert [i for _, i in out] == list(range(24))
    ran_on = collections.Counter(node for node, _ in out)
    assert set(ran_on) == {head, new}, ran_on
    ran = collections.Counter(name.split("-")[0] for name in os.listdir(runs))
    assert ran == {str(i): 1 for i in range(24)}  # no task ran twice
    client = cluster_client.active()
    with client._lock:
        assert client._used[head] == 0 and client._used[new] == 0  # moves were counted


def test_tasks_a_killed_thief_had_stolen_are_resubmitted(cluster, tmp_path):
    live = {n["NodeID"] for n in repartir.nodes() if n["Alive"]}
    runs = tmp_path / "runs"
    runs.mkdir()
    refs = [work.remote(i, str(runs), 0.05) for i in range(30)]
    pid, thief = join(cluster)
    on_thief = wait_for_steal(refs, thief)
    os.kill(pid, signal.SIGKILL)
    (tmp_path / "gate").touch()  # the thief ran none of them to the end
    out = repartir.get(refs, timeout=120)
    assert [i for _, i in out] == list(range(30))  # none lost
    assert {node for node, _ in out} <= live  # those it had stolen ran elsewhere
    assert {node for node, _ in repartir.get(on_thief, timeout=5)} <= live
    assert [n for n in repartir.nodes() if n["NodeID"] == thief][0]["Alive"] is False
    sweep_dead_sessions(resolve(num_cpus=1, object_store_memory=64 << 20, num_gpus=0).temp_dir,
                        "/dev/shm")


def test_capacity_follows_the_service_time():
    assert capacity_for(4, None) == 8  # unknown: the minimum, two per CPU
    assert capacity_for(4, 0.5) == 8  # long tasks: the minimum too
    assert capacity_for(1, 0.001) == 50  # 50 ms of 1 ms tasks
    assert capacity_for(2, 1e-5) == 1024  # tiny ones: capped at 512 per CPU
    assert capacity_for(0, None) == 1


def test_a_node_learns_the_service_time_of_its_tasks():
    v = Victim(cpus=2)
    t = 1000.0

    def run(k: int, latency: float) -> None:  # k tasks admitted at t, done at t + latency
        tids = [os.urandom(8) for _ in range(k)]
        for i, tid in enumerate(tids):
            v._admitted[tid] = (t, i + 1)
        for tid in tids:
            v._finished(tid, t + latency)

    run(4, 0.004)  # the last admitted with 4 in flight: 4 ms x 2 CPUs / 4 = 2 ms
    assert v.service_s == pytest.approx(0.002)
    assert v.capacity == capacity_for(2, v.service_s) and 49 <= v.capacity <= 50
    t += 0.1
    run(1, 0.05)  # a stall (50 ms for one task): an upper bound, the window keeps 2 ms
    assert v.service_s == pytest.approx(0.002)
    t += 2.0  # past the window: long tasks now (1 s each, 2 in flight)
    run(2, 1.0)
    assert v.service_s == pytest.approx(1.0) and v.capacity == 2 * 2


def test_a_node_forgets_old_service_times_when_no_task_finishes():
    """Tiny tasks a while ago, none since: the next batch meets the minimum capacity, not
    hundreds per CPU (so that idle nodes can steal long tasks from its queue)."""
    v = Victim(cpus=2)
    tid = os.urandom(8)
    v._admitted[tid] = (100.0, 1)
    v._finished(tid, 100.0001)
    high = v.capacity
    assert high == capacity_for(2, v.service_s) and high > 400  # 0.2 ms a task
    v._refresh_capacity(100.5)  # within the window: kept
    assert v.capacity == high
    v._refresh_capacity(101.5)  # past it, with no completion since
    assert v.service_s is None and v.capacity == capacity_for(2, None) == 4
