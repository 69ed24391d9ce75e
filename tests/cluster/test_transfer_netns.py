"""A node-to-node pull across network namespaces (marker ``netns``): the head in host A with no
CPU, nodes in hosts B and C, the driver in A.  A 64 MiB result made on B and taken by a task
on C goes from B to C directly: C's counters show it pulled the bytes, B's that it served
them, the driver pulled nothing, and A's link received far less than the array; once the
driver drops its ref, nothing of it is left on B or C."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest


from test_cluster_netns import head_and_nodes, logs  # noqa: E402

PY = sys.executable
MIB = 1 << 20
N = 64 * MIB

DRIVER = textwrap.dedent("""
    import gc, json, sys, time
    import numpy as np
    import repartir
    from repartir.cluster import client as cluster_client
    repartir.init(address=sys.argv[1])
    client = cluster_client.active()
    n = int(sys.argv[2])
    deadline = time.monotonic() + 60
    while sum(n["Alive"] for n in repartir.nodes()) < 3:
        assert time.monotonic() < deadline, repartir.nodes()

    @repartir.remote(resources={"b": 1})
    def make(n):
        return np.arange(n // 8, dtype=np.float64)

    @repartir.remote(resources={"c": 1})
    def total(a):
        return repartir.get_runtime_context().get_node_id(), float(a.sum())

    def records():
        repartir.nodes()
        with client._lock:
            return {r["NodeManagerAddress"].rsplit(":", 1)[0]: dict(r)
                    for r in client.nodes_seen.values()}

    ref = make.remote(n)
    repartir.wait([ref], timeout=60)
    print("made", flush=True)
    sys.stdin.readline()  # the test reads the link counters
    out = repartir.get(total.remote(ref), timeout=120)
    print(json.dumps({"out": out, "driver_pulled": client.pulled_bytes}), flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + 30
    while True:  # C's and B's counters reach the head with their next heartbeats
        recs = records()
        if (any(r["PulledBytes"] >= n for r in recs.values())
                and any(r["ServedBytes"] >= n for r in recs.values())) \\
                or time.monotonic() > deadline:
            break
    during = recs
    del ref
    gc.collect()
    while True:
        recs = records()
        if all(r["Stored"] == 0 and r["Cached"] == 0 for r in recs.values()) \\
                or time.monotonic() > deadline + 30:
            break
    print(json.dumps({"during": during, "after": recs}), flush=True)
    repartir.shutdown()
""")


@pytest.mark.netns
def test_a_pull_goes_node_to_node_not_through_the_driver(tmp_path):

    with head_and_nodes(tmp_path, [(1, '{"b": 1}'), (2, '{"c": 1}')]) as (hosts, head, env):
        a, b, c = hosts.hosts
        driver = hosts.run_in(0, [PY, "-c", DRIVER, head, str(N)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        try:
            assert driver.stdout.readline().strip() == "made"
            before = {h.addr: hosts.link_bytes(h) for h in (a, b, c)}
            driver.stdin.write("go\n")
            driver.stdin.flush()
            result = json.loads(driver.stdout.readline())
            after = {h.addr: hosts.link_bytes(h) for h in (a, b, c)}
            driver.stdin.write("go\n")
            driver.stdin.flush()
            out, err = driver.communicate(timeout=100)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.communicate()
        assert driver.returncode == 0, err + logs(tmp_path)
        counters = json.loads(out.strip().splitlines()[-1])
    k = N // 8
    during, final = counters["during"], counters["after"]
    assert result["out"] == [during[c.addr]["NodeID"], float(k * (k - 1) // 2)]
    assert result["driver_pulled"] == 0
    assert N <= during[c.addr]["PulledBytes"] < N + MIB
    assert during[b.addr]["ServedBytes"] == during[c.addr]["PulledBytes"]
    assert during[a.addr]["PulledBytes"] == during[a.addr]["ServedBytes"] == 0
    b_sent = after[b.addr][1] - before[b.addr][1]
    c_received = after[c.addr][0] - before[c.addr][0]
    a_received = after[a.addr][0] - before[a.addr][0]
    assert b_sent >= N and c_received >= N
    assert a_received < N // 8, f"the driver's host received {a_received} B of {N}"
    assert all(r["Stored"] == 0 and r["Cached"] == 0 for r in final.values()), final
