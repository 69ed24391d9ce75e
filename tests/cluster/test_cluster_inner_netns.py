"""Tasks and actors on nodes that use the cluster, across hosts (``stress/netns.py``; marker
``netns``; docs/cluster.md, "Tasks and actors that submit work"): the head in host A with no
CPU, nodes in hosts B (``b: 1``) and C (``c: 4``), each bound to its host's address (so a
token is required, which the workers take from their daemon), a driver in A.  What the
loopback tests cannot show: a worker in B reaches the head in A and the node in C over the
veth pairs, as a driver would."""

from __future__ import annotations

import sys
import textwrap

import pytest

from test_cluster_netns import head_and_nodes, run_driver

PY = sys.executable

DRIVER = textwrap.dedent("""
    import json, sys, time, repartir
    repartir.init(address=sys.argv[1])
    deadline = time.monotonic() + 60
    while sum(n["Alive"] for n in repartir.nodes()) < 3:
        assert time.monotonic() < deadline, repartir.nodes()

    def here():
        return repartir.get_runtime_context().get_node_id()

    @repartir.remote
    class Counter:
        def __init__(self):
            self.seen = []
        def add(self, item):
            self.seen.append(item)
            return here()
        def history(self):
            return self.seen

    @repartir.remote(num_cpus=0)
    def where():
        return here()

    @repartir.remote(resources={"b": 1})
    def on_b():
        far = repartir.get(where.options(resources={"c": 1}).remote(), timeout=60)
        c = Counter.options(resources={"c": 1}).remote()
        repartir.get(c.add.remote("made on b"), timeout=60)
        return here(), far, c

    @repartir.remote(resources={"b": 1})
    def use(c, name):
        named = repartir.get_actor(name)
        return repartir.get([c.add.remote("task on b"), named.add.remote("task on b")],
                            timeout=60)

    b, far, c = repartir.get(on_b.remote(), timeout=120)
    named = Counter.options(name="on_c", resources={"c": 1}).remote()
    from_driver = repartir.get(c.add.remote("driver"), timeout=60)
    used = repartir.get(use.remote(c, "on_c"), timeout=120)
    print(json.dumps({"b": b, "far": far, "from_driver": from_driver, "used": used,
                      "history": repartir.get(c.history.remote(), timeout=60),
                      "named": repartir.get(named.history.remote(), timeout=60),
                      "nodes": repartir.nodes()}), flush=True)
    repartir.shutdown()
""")


@pytest.mark.netns
def test_a_task_on_one_host_uses_the_nodes_of_the_others(tmp_path):
    with head_and_nodes(tmp_path, [(1, '{"b": 1}'), (2, '{"c": 4}')]) as (hosts, head, env):
        a, b, c = hosts.hosts
        report = run_driver(hosts, head, env, DRIVER, tmp_path, timeout=200)
    ids = {n["NodeManagerAddress"]: n["NodeID"] for n in report["nodes"]}
    b_id, c_id = ids[b.addr], ids[c.addr]
    assert report["b"] == b_id and report["far"] == c_id
    assert report["from_driver"] == c_id and report["used"] == [c_id, c_id]
    assert report["history"] == ["made on b", "driver", "task on b"]
    assert report["named"] == ["task on b"]
