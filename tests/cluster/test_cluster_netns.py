"""The two-node cluster across network namespaces (``stress/netns.py``; marker ``netns``):
the head in host A (no CPU of its own, so it runs no task), nodes in hosts B and C, a driver in
A; every task runs on B or C, both are used, and the registry lists the three nodes with
their private addresses.  Each process binds its host's private address, so the cluster
token is required (``REPARTIR_TOKEN``)."""

from __future__ import annotations

import contextlib
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


def logs(tmp) -> str:
    """The ``repartir start`` logs of the hosts (for an assertion's message)."""
    return "".join(p.read_text() for p in tmp.iterdir() if p.suffix == ".log")


@contextlib.contextmanager
def head_and_nodes(tmp, nodes: list[tuple[int, str | None]], n_hosts: int = 3):
    """``n_hosts`` hosts; the head in host A (index 0: port 6380, no CPU, bound to A's
    address), and for each ``(host index, resources JSON or None)`` of ``nodes`` a node of
    one CPU bound to that host's address.  Yields ``(hosts, head address, env)``, ``env``
    carrying the cluster token for a driver.  Stops the nodes, then the head, and sweeps
    the sessions they left in /dev/shm, even when the block fails."""
    token = secrets.token_hex(32)
    with netns.Cluster(n_hosts) as hosts:
        head = f"{hosts.hosts[0].addr}:6380"
        procs = [_start(hosts, 0, ["--head", "--bind", hosts.hosts[0].addr, "--port", "6380",
                                   "--num-cpus", "0"], tmp, token)]
        try:
            for index, resources in nodes:
                extra = ["--resources", resources] if resources else []
                procs.append(_start(hosts, index, ["--address", head, "--bind",
                                                   hosts.hosts[index].addr, "--num-cpus", "1",
                                                   *extra], tmp, token))
            yield hosts, head, dict(os.environ, REPARTIR_TOKEN=token)
        finally:
            for p in reversed(procs):  # nodes first; each shuts its local node down cleanly
                hosts.stop(p, grace_s=20)
            sweep_dead_sessions(resolve(num_cpus=1, object_store_memory=64 << 20,
                                        num_gpus=0).temp_dir, "/dev/shm")


def run_driver(hosts: netns.Cluster, head: str, env: dict, script: str, tmp,
               timeout: float) -> dict:
    """Run ``script`` (``python -c``, argument: the head's address) in host A; it must exit
    0 and print a JSON report as its last line, which is returned."""
    driver = hosts.run_in(0, [PY, "-c", script, head], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    out, err = driver.communicate(timeout=timeout)
    assert driver.returncode == 0, err + logs(tmp)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.netns
def test_tasks_run_on_the_other_hosts_only(tmp_path):
    with head_and_nodes(tmp_path, [(1, None), (2, None)]) as (hosts, head, env):
        a, b, c = hosts.hosts
        report = run_driver(hosts, head, env, DRIVER, tmp_path, timeout=100)
    by_addr = {n["NodeManagerAddress"]: n["NodeID"] for n in report["nodes"]}
    assert set(by_addr) == {a.addr, b.addr, c.addr}
    assert all(n["Alive"] for n in report["nodes"])
    assert "CPU" not in [n for n in report["nodes"] if n["NodeManagerAddress"] == a.addr][0][
        "Resources"]
    used = {nid for nid, _ in report["out"]}
    assert used == {by_addr[b.addr], by_addr[c.addr]}
    assert [v for _, v in report["out"]] == [i * i for i in range(20)]
