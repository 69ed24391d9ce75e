"""The two-node cluster across network namespaces (``stress/netns.py``; marker ``netns``):
the head in host A (no CPU of its own, so it runs no task), nodes in hosts B and C, a driver in
A; every task runs on B or C, both are used, and the registry lists the three nodes with
their private addresses.  Each process binds its host's private address, so the cluster
token is required (``REPARTIR_TOKEN``)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap

import pytest

from repartir.config import resolve
from repartir.runtime.session import sweep_dead_sessions
from stress import netns

PY = sys.executable

DRIVER = textwrap.dedent("""
    import json, sys, time, repartir
    repartir.init(address=sys.argv[1])
    deadline = time.monotonic() + 60
    while sum(n["Alive"] for n in repartir.nodes()) < 3:
        assert time.monotonic() < deadline, repartir.nodes()
    @repartir.remote
    def where(i):
        time.sleep(0.1)
        return repartir.get_runtime_context().get_node_id(), i * i
    out = repartir.get([where.remote(i) for i in range(20)], timeout=60)
    print(json.dumps({"out": out, "nodes": repartir.nodes()}), flush=True)
    repartir.shutdown()
""")


def _start(hosts: netns.Cluster, which: int, args: list[str], tmp, token: str):
    env = dict(os.environ, REPARTIR_TOKEN=token, REPARTIR_CLUSTER_DIR=str(tmp / f"h{which}"),
               REPARTIR_NODE_TIMEOUT="5")
    env.pop("REPARTIR_ADDRESS", None)
    log = open(tmp / f"cli-h{which}.log", "w")
    return hosts.run_in(which, [PY, "-m", "repartir", "start", *args, "--block",
                                "--object-store-memory", str(128 << 20)],
                        env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.netns
def test_tasks_run_on_the_other_hosts_only(tmp_path):
    token = secrets.token_hex(32)
    with netns.Cluster(3) as hosts:
        a, b, c = hosts.hosts
        head_addr = f"{a.addr}:6380"
        procs = [_start(hosts, 0, ["--head", "--bind", a.addr, "--port", "6380",
                                   "--num-cpus", "0"], tmp_path, token)]
        try:
            for h in (b, c):
                procs.append(_start(hosts, h.index, ["--address", head_addr, "--bind", h.addr,
                                                     "--num-cpus", "1"], tmp_path, token))
            env = dict(os.environ, REPARTIR_TOKEN=token)
            driver = hosts.run_in(0, [PY, "-c", DRIVER, head_addr], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = driver.communicate(timeout=100)
            assert driver.returncode == 0, err + "".join(
                p.read_text() for p in tmp_path.iterdir() if p.suffix == ".log")
            report = json.loads(out.strip().splitlines()[-1])
        finally:
            for p in reversed(procs):  # nodes first; each shuts its local node down cleanly
                hosts.stop(p, grace_s=20)
            sweep_dead_sessions(resolve(num_cpus=1, object_store_memory=64 << 20,
                                        num_gpus=0).temp_dir, "/dev/shm")
    by_addr = {n["NodeManagerAddress"]: n["NodeID"] for n in report["nodes"]}
    assert set(by_addr) == {a.addr, b.addr, c.addr}
    assert all(n["Alive"] for n in report["nodes"])
    assert "CPU" not in [n for n in report["nodes"] if n["NodeManagerAddress"] == a.addr][0][
        "Resources"]
    used = {nid for nid, _ in report["out"]}
    assert used == {by_addr[b.addr], by_addr[c.addr]}
    assert [v for _, v in report["out"]] == [i * i for i in range(20)]
