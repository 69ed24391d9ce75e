"""repartir's own cluster workloads on hosts made by :mod:`stress.netns`, next to the
references of :mod:`stress.netns_reference` (same shape: ``{workload: (value, extra)}``), for
``stress/bench.py`` to call:

- ``remote_tiny``: tiny tasks per second from a driver on the head's host (the head runs no
  task: ``--num-cpus 0``) to nodes on two other hosts (one CPU each), all gathered with one
  ``get``;
- ``transfer``: GB/s (1e9 B/s) of a task on node C whose argument is a result kept on node B
  (``mib`` MiB of float64) and returns its size, timed from submit to result: C pulls the
  array from B directly (docs/cluster.md, "Objects between nodes").  A second task on C,
  submitted with it, sums the array (untimed) to check every element.  One warm-up and
  ``reps`` rounds, median.  Around the rounds the hosts' link counters must show that B sent
  every round's bytes and the head's host (where the driver is) received less than one
  round's, and the driver must have pulled nothing: the array went from B to C directly
  (``RuntimeError`` otherwise).

``python stress/cluster_bench.py [--quick]`` makes three hosts and prints the figures (root
and iproute2 needed).  The driver runs this file inside host A (subcommand ``_driver``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from stress import netns  # noqa: E402

PY = sys.executable
FULL = {"mib": 256, "tiny_tasks": 10_000, "reps": 3}
QUICK = {"mib": 32, "tiny_tasks": 2_000, "reps": 3}
PORT = 6380


def _driver(address: str, tiny_tasks: int, mib: int, reps: int) -> None:
    import numpy as np
    import repartir

    repartir.init(address=address)
    deadline = time.monotonic() + 60
    while sum(n["Alive"] for n in repartir.nodes()) < 3:
        if time.monotonic() > deadline:
            raise SystemExit(f"nodes missing: {repartir.nodes()}")

    @repartir.remote
    def tiny(i):
        return i

    @repartir.remote(resources={"b": 1})
    def make(n):
        return np.ones(n // 8)

    @repartir.remote(resources={"c": 1})
    def size(a):
        return a.nbytes

    @repartir.remote(resources={"c": 1})
    def total(a):
        return float(a.sum())

    repartir.get([tiny.remote(i) for i in range(200)], timeout=60)  # warm the workers
    t = time.perf_counter()
    out = repartir.get([tiny.remote(i) for i in range(tiny_tasks)], timeout=300)
    tiny_s = time.perf_counter() - t
    assert out == list(range(tiny_tasks))
    n = mib << 20
    seconds = []
    print("transfer", flush=True)  # the parent reads the link counters now
    sys.stdin.readline()
    for _ in range(reps + 1):
        ref = make.remote(n)
        repartir.wait([ref], timeout=120)
        t = time.perf_counter()
        timed = size.remote(ref)
        check = total.remote(ref)  # waits for the same pull, runs after: untimed
        nbytes = repartir.get(timed, timeout=300)
        seconds.append(time.perf_counter() - t)
        s = repartir.get(check, timeout=300)
        assert nbytes == n and s == n // 8, (nbytes, s)
        del ref, timed, check
    from repartir.cluster import client as cluster_client

    print(json.dumps({"tiny_per_s": tiny_tasks / tiny_s, "tiny_tasks": tiny_tasks,
                      "transfer_s": seconds, "mib": mib,
                      "driver_pulled": cluster_client.active().pulled_bytes}), flush=True)
    repartir.shutdown()


def _wait_for_head(address_file: str, proc: subprocess.Popen, started: float,
                   timeout: float = 120.0) -> None:
    """Wait until the head started by ``proc`` at ``started`` (``time.time()``) recorded its
    address (it listens then): on a loaded machine its start can take longer than a node's
    or driver's patience."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(address_file) or os.path.getmtime(address_file) < started:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the head did not start (exit status {proc.poll()})")
        time.sleep(0.05)


def repartir_cluster(cluster: netns.Cluster, *, tiny_tasks: int = FULL["tiny_tasks"],
                     mib: int = FULL["mib"], reps: int = FULL["reps"],
                     state_dir: str | None = None) -> dict[str, Any]:
    """Head on host 0 (no CPU), nodes on hosts 1 and 2 (one CPU each; resources ``b`` and
    ``c``), a driver on host 0.  Returns ``{"remote_tiny": (tasks/s, extra), "transfer":
    (GB/s, extra)}``.

    Raises:
        RuntimeError: a process failed (its output in the message).
    """
    token = secrets.token_hex(32)
    own_state_dir = state_dir is None
    state_dir = state_dir or tempfile.mkdtemp(prefix="repartir-cluster-bench-")
    env = dict(os.environ, REPARTIR_TOKEN=token, PYTHONPATH=ROOT)
    env.pop("REPARTIR_ADDRESS", None)
    a, b, c = cluster.hosts[:3]
    head = f"{a.addr}:{PORT}"
    procs = []

    def start(host, args):
        e = dict(env, REPARTIR_CLUSTER_DIR=f"{state_dir}/h{host.index}")
        procs.append(cluster.run_in(host, [PY, "-m", "repartir", "start", *args, "--block",
                                           "--object-store-memory", str(max(4 * mib, 256) << 20)],
                                    env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    try:
        started = time.time() - 1.0  # the file's mtime may be rounded down
        start(a, ["--head", "--bind", a.addr, "--port", str(PORT), "--num-cpus", "0"])
        _wait_for_head(f"{state_dir}/h{a.index}/address.json", procs[0], started)
        start(b, ["--address", head, "--bind", b.addr, "--num-cpus", "1",
                  "--resources", '{"b": 1}'])
        start(c, ["--address", head, "--bind", c.addr, "--num-cpus", "1",
                  "--resources", '{"c": 1}'])
        d = cluster.run_in(a, [PY, os.path.abspath(__file__), "_driver", head,
                               str(tiny_tasks), str(mib), str(reps)],
                           env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        assert d.stdin is not None and d.stdout is not None
        first = d.stdout.readline()
        before = {h.addr: cluster.link_bytes(h) for h in (a, b, c)}
        if first.strip() == "transfer":
            d.stdin.write("go\n")
            d.stdin.flush()
        out, err = d.communicate(timeout=600)
        after = {h.addr: cluster.link_bytes(h) for h in (a, b, c)}
        if d.returncode != 0:
            raise RuntimeError(f"the driver failed: {err[-2000:]}")
        r = json.loads(out.strip().splitlines()[-1])
    finally:
        for p in reversed(procs):
            cluster.stop(p, grace_s=20)
        if own_state_dir:
            shutil.rmtree(state_dir, ignore_errors=True)
    n, rounds = mib << 20, reps + 1
    b_sent = after[b.addr][1] - before[b.addr][1]
    a_received = after[a.addr][0] - before[a.addr][0]
    if b_sent < rounds * n or a_received >= n or r["driver_pulled"]:
        raise RuntimeError(
            f"the array did not go from node B to node C directly: B sent {b_sent} B, the "
            f"driver's host received {a_received} B, the driver pulled {r['driver_pulled']} "
            f"B over {rounds} rounds of {n} B")
    gbps = [n / t / 1e9 for t in r["transfer_s"][1:]]
    return {"remote_tiny": (r["tiny_per_s"], {"tasks": tiny_tasks, "nodes": 2,
                                              "checked": "every result"}),
            "transfer": (statistics.median(gbps),
                         {"bytes": n, "rounds_GBps": [round(g, 3) for g in gbps],
                          "warmup_s": r["transfer_s"][0], "path": "node B -> node C",
                          "checked": "the sum of every element on C",
                          "B_sent_bytes": b_sent, "driver_host_received_bytes": a_received})}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_driver"]:
        _driver(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    with netns.Cluster(3) as cluster:
        figures = repartir_cluster(cluster, **sizes)
    for name, (value, extra) in figures.items():
        print(f"{name}: {value:,.2f}  {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
