"""A node cut off from the cluster (its link down, ``stress/netns.py``; marker ``netns``;
docs/cluster.md, "Failures"): the head on host A (no CPU), nodes on B (``{"b": 1}``) and C,
a driver on A.  With B's link down, a ``get`` with a timeout returns at its timeout, B is
declared dead within ``REPARTIR_NODE_TIMEOUT``, its tasks run again on C and its kept results
are rebuilt there; a driver that shuts down meanwhile returns at once.  With the link back,
B drops what it held, joins again as a new incarnation and runs tasks, and no stale result
of its first life replaces one the driver has."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from test_cluster_netns import head_and_nodes

PY = sys.executable
NODE_TIMEOUT = 5.0  # what _start gives the daemons

DRIVER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import repartir
    from repartir.errors import GetTimeoutError, NodeDiedError
    repartir.init(address=sys.argv[1])
    deadline = time.monotonic() + 60
    while sum(n["Alive"] for n in repartir.nodes()) < 3:
        assert time.monotonic() < deadline, repartir.nodes()
    bid = [n["NodeID"] for n in repartir.nodes() if n["NodeManagerAddress"] == sys.argv[2]][0]

    @repartir.remote
    def where(i, seconds):
        time.sleep(seconds)
        return repartir.get_runtime_context().get_node_id(), i

    @repartir.remote
    def full(i):
        return np.full(1 << 16, float(i))

    client = repartir.cluster.client.active()
    kept = [full.remote(i) for i in range(6)]
    repartir.wait(kept, num_returns=6, timeout=60)
    with client._lock:
        kept_on_b = sum(client.results[r.binary()][1] == bid for r in kept)
    only_b = where.options(resources={"b": 1}, max_retries=0).remote(-1, 60.0)
    stuck = [where.remote(i, 1.0) for i in range(4)]
    with client._lock:
        stuck_on_b = [i for i, r in enumerate(stuck) if client.inflight[r.binary()].node == bid]
    time.sleep(0.3)
    print("cut", flush=True)
    sys.stdin.readline()
    t0 = time.monotonic()
    try:
        repartir.get(only_b, timeout=0.5)
        timed_out = False
    except GetTimeoutError:
        timed_out = True
    t_timeout = time.monotonic() - t0
    try:
        repartir.get(only_b, timeout=60)
        died = ""
    except NodeDiedError as exc:
        died = str(exc)
    t_dead = time.monotonic() - t0
    first = repartir.get(stuck, timeout=60)
    values = [float(a[0]) for a in repartir.get(kept, timeout=60)]
    print(json.dumps({"timed_out": timed_out, "t_timeout": t_timeout, "died": died,
                      "t_dead": t_dead, "first": first, "values": values,
                      "kept_on_b": kept_on_b, "stuck_on_b": stuck_on_b, "bid": bid,
                      "rebuilt": client._lineage.rebuilt}), flush=True)
    sys.stdin.readline()
    t1 = time.monotonic()
    deadline = time.monotonic() + 30
    while not any(n["NodeID"] == bid and n["Alive"] for n in repartir.nodes()):
        assert time.monotonic() < deadline, "B did not come back"
    again = where.options(resources={"b": 1}).remote(0, 0.0)
    print(json.dumps({"back_on": repartir.get(again, timeout=60)[0],
                      "t_back": time.monotonic() - t1,
                      "first": repartir.get(stuck, timeout=60),
                      "values": [float(a[0]) for a in repartir.get(kept, timeout=60)]}),
          flush=True)
    repartir.shutdown()
""")


@pytest.mark.netns
def test_a_node_cut_off_is_dead_in_time_and_comes_back_as_a_new_incarnation(tmp_path):
    with head_and_nodes(tmp_path, [(1, '{"b": 1}'), (2, None)]) as (hosts, head_addr, env):
        a, b, c = hosts.hosts
        env = dict(env, REPARTIR_NODE_TIMEOUT=str(NODE_TIMEOUT))
        driver = hosts.run_in(0, [PY, "-c", DRIVER, head_addr, b.addr], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        assert driver.stdout.readline().strip() == "cut", driver.stderr.read()
        hosts.link_down(1)
        # a second driver, while B is cut off: it sends tasks (some to B) and exits
        quick = hosts.run_in(0, [PY, "-c", "import sys, time, repartir\n"
                                 "repartir.init(address=sys.argv[1])\n"
                                 "refs = [repartir.remote(lambda i: i).remote(i) "
                                 "for i in range(4)]\n"
                                 "t0 = time.monotonic(); repartir.shutdown()\n"
                                 "print(time.monotonic() - t0)", head_addr], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        driver.stdin.write("\n")
        driver.stdin.flush()
        line = driver.stdout.readline()
        assert line.startswith("{"), driver.stderr.read()
        cut = json.loads(line)
        qout, qerr = quick.communicate(timeout=60)
        assert quick.returncode == 0, qerr
        hosts.link_up(1)
        driver.stdin.write("\n")
        driver.stdin.flush()
        out, err = driver.communicate(timeout=90)
        assert driver.returncode == 0, err
        back = json.loads(out.strip().splitlines()[-1])
        b_log = "".join(p.read_text() for p in (tmp_path / "h1").glob("node-*.log"))
    assert float(qout.split()[-1]) < 5.0  # a driver's shutdown with a node cut off
    assert cut["timed_out"] and cut["t_timeout"] < 1.5
    assert cut["bid"][:12] in cut["died"]
    assert cut["t_dead"] < NODE_TIMEOUT + 3.0
    assert [i for _, i in cut["first"]] == list(range(4))
    assert cut["stuck_on_b"] and all(cut["first"][i][0] != cut["bid"]
                                     for i in cut["stuck_on_b"])
    assert cut["values"] == [float(i) for i in range(6)]
    assert cut["kept_on_b"] >= 1 and cut["rebuilt"] >= cut["kept_on_b"]
    assert "declared dead by the head" in b_log and "as incarnation 1" in b_log
    assert back["back_on"] == cut["bid"]
    assert back["t_back"] < 20.0  # its task cut off was cancelled there: B's CPU is free
    assert back["first"] == cut["first"] and back["values"] == cut["values"]
