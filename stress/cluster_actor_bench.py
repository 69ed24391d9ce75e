"""Actor calls across hosts made by :mod:`stress.netns` (docs/cluster.md, "Actors on a
cluster"): the head on host A with no CPU, one node on host B (``--resources '{"b": 1}'``),
a driver on A calling an actor placed on B by that resource.

- ``actor_calls``: calls per second, ``calls`` calls of a method that returns its argument
  submitted at once, then gathered with one ``get`` (after 200 to warm up);
- ``actor_round_trip``: milliseconds per call, one call at a time (``.remote`` then ``get``),
  median of ``round_trips``.

``python stress/cluster_actor_bench.py [--quick]`` prints the figures (root and iproute2
needed).  The driver runs this file inside host A (subcommand ``_driver``).
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
FULL = {"calls": 10_000, "round_trips": 500}
QUICK = {"calls": 2_000, "round_trips": 100}
PORT = 6380


def _driver(address: str, calls: int, round_trips: int) -> None:
    import repartir

    repartir.init(address=address)
    deadline = time.monotonic() + 60
    while sum(n["Alive"] for n in repartir.nodes()) < 2:
        if time.monotonic() > deadline:
            raise SystemExit(f"nodes missing: {repartir.nodes()}")

    @repartir.remote(resources={"b": 1})
    class Echo:
        def echo(self, x):
            return x

    a = Echo.remote()
    repartir.get([a.echo.remote(i) for i in range(200)], timeout=60)  # warm up
    t = time.perf_counter()
    out = repartir.get([a.echo.remote(i) for i in range(calls)], timeout=300)
    calls_s = time.perf_counter() - t
    assert out == list(range(calls))
    times = []
    for i in range(round_trips):
        t = time.perf_counter()
        assert repartir.get(a.echo.remote(i), timeout=60) == i
        times.append(time.perf_counter() - t)
    print(json.dumps({"calls_per_s": calls / calls_s, "calls": calls,
                      "round_trip_ms": statistics.median(times) * 1e3,
                      "round_trips": round_trips}), flush=True)
    repartir.shutdown()


def repartir_actors(cluster: netns.Cluster, *, calls: int = FULL["calls"],
                    round_trips: int = FULL["round_trips"]) -> dict[str, Any]:
    """Head on host 0 (no CPU), a node on host 1 (one CPU, resource ``b``), a driver on
    host 0.  Returns ``{"actor_calls": (calls/s, extra), "actor_round_trip": (ms, extra)}``.

    Raises:
        RuntimeError: the driver failed (its output in the message).
    """
    token = secrets.token_hex(32)
    state_dir = tempfile.mkdtemp(prefix="repartir-actor-bench-")
    env = dict(os.environ, REPARTIR_TOKEN=token, PYTHONPATH=ROOT)
    env.pop("REPARTIR_ADDRESS", None)
    a, b = cluster.hosts[:2]
    head = f"{a.addr}:{PORT}"
    procs = []

    def start(host, args):
        e = dict(env, REPARTIR_CLUSTER_DIR=f"{state_dir}/h{host.index}")
        procs.append(cluster.run_in(host, [PY, "-m", "repartir", "start", *args, "--block",
                                           "--object-store-memory", str(256 << 20)],
                                    env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    try:
        start(a, ["--head", "--bind", a.addr, "--port", str(PORT), "--num-cpus", "0"])
        start(b, ["--address", head, "--bind", b.addr, "--num-cpus", "1",
                  "--resources", '{"b": 1}'])
        d = cluster.run_in(a, [PY, os.path.abspath(__file__), "_driver", head, str(calls),
                               str(round_trips)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = d.communicate(timeout=600)
        if d.returncode != 0:
            raise RuntimeError(f"the driver failed: {err[-2000:]}")
        r = json.loads(out.strip().splitlines()[-1])
    finally:
        for p in reversed(procs):
            cluster.stop(p, grace_s=20)
        shutil.rmtree(state_dir, ignore_errors=True)
    return {"actor_calls": (r["calls_per_s"], {"calls": calls}),
            "actor_round_trip": (r["round_trip_ms"], {"unit": "ms", "median of": round_trips})}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_driver"]:
        _driver(argv[1], int(argv[2]), int(argv[3]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    with netns.Cluster(2) as cluster:
        figures = repartir_actors(cluster, **sizes)
    for name, (value, extra) in figures.items():
        print(f"{name}: {value:,.2f}  {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
