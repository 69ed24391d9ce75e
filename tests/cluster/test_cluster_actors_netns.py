"""An actor on another host (``stress/netns.py``; marker ``netns``): the head in host A with
no CPU, a node in host B with ``far: 1``, a driver in A.  The actor is placed on B by its
resource; its calls run there in order, a large result crosses the veth pair (and feeds a
task on B where it is kept), and a second driver finds the actor by name."""

from __future__ import annotations

import sys
import textwrap

import pytest

from repartir.config import resolve
from repartir.runtime.session import sweep_dead_sessions
from stress import netns
from test_cluster_netns import head_and_nodes, run_driver

PY = sys.executable

DRIVER = textwrap.dedent("""
    import json, sys, time, numpy as np, repartir
    repartir.init(address=sys.argv[1])
    deadline = time.monotonic() + 60
    while sum(n["Alive"] for n in repartir.nodes()) < 2:
        assert time.monotonic() < deadline, repartir.nodes()

    @repartir.remote
    class Far:
        def __init__(self):
            self.calls = []
        def add(self, i):
            self.calls.append(i)
            return repartir.get_runtime_context().get_node_id()
        def calls_seen(self):
            return self.calls
        def big(self):
            return np.arange(4 << 20, dtype=np.float64)  # 32 MiB

    a = Far.options(resources={"far": 1}, name="far").remote()
    where = set(repartir.get([a.add.remote(i) for i in range(50)], timeout=60))
    order = repartir.get(a.calls_seen.remote(), timeout=60) == list(range(50))
    big = repartir.get(a.big.remote(), timeout=90)
    ok_big = bool(np.array_equal(big, np.arange(4 << 20, dtype=np.float64)))
    other = repartir.get(repartir.remote(lambda a: (repartir.get_runtime_context().get_node_id(),
                                                    float(a.sum()))).remote(a.big.remote()),
                         timeout=90)
    second = ("import repartir, sys\\n"
              "repartir.init(address=sys.argv[1])\\n"
              "h = repartir.get_actor('far')\\n"
              "print(repartir.get(h.add.remote('second'), timeout=60))\\n")
    import subprocess
    out = subprocess.run([sys.executable, "-c", second, sys.argv[1]], capture_output=True,
                         text=True, timeout=90)
    print(json.dumps({"where": sorted(where), "order": order, "big": ok_big, "far": other,
                      "second": out.stdout.strip(), "second_err": out.stderr[-2000:],
                      "nodes": repartir.nodes()}), flush=True)
    repartir.shutdown()
""")


@pytest.mark.netns
def test_an_actor_on_another_host(tmp_path):
    with head_and_nodes(tmp_path, [(1, '{"far": 1}')], n_hosts=2) as (hosts, head, env):
        b = hosts.hosts[1]
        report = run_driver(hosts, head, env, DRIVER, tmp_path, timeout=150)
    b_id = [n["NodeID"] for n in report["nodes"] if n["NodeManagerAddress"] == b.addr][0]
    assert report["where"] == [b_id]
    assert report["order"] and report["big"]
    assert report["far"] == [b_id, float(sum(range(4 << 20)))]
    assert report["second"] == b_id, report["second_err"]


@pytest.mark.netns
def test_the_actor_benchmark_runs():
    """``stress/cluster_actor_bench.py`` on two hosts, small sizes: it must run to the end
    (its figures are for docs/cluster.md, not checked here)."""
    from stress import cluster_actor_bench

    with netns.Cluster(2) as hosts:
        figures = cluster_actor_bench.repartir_actors(hosts, calls=300, round_trips=10)
    sweep_dead_sessions(resolve(num_cpus=1, object_store_memory=64 << 20, num_gpus=0).temp_dir,
                        "/dev/shm")
    assert set(figures) == {"actor_calls", "actor_round_trip"}
    assert all(value > 0 for value, _ in figures.values())
