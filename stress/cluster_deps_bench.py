"""Chains of dependent tiny tasks on a loopback cluster (docs/cluster.md, "Dependent
tasks"): a head and a node (1 CPU each), started with the CLI in a state directory of their
own; a driver connected to them submits ``x = inc.remote(x)`` ``--tasks`` times from
``inc.remote(0)`` and gets the last ref.

``python stress/cluster_deps_bench.py [--tasks 1000] [--repeat 3]`` prints one line of JSON:
for each run, the seconds ``.remote()`` took for the whole chain (``submit_s``) and until the
last result was back (``total_s``); the best run first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from stress.loopback import loopback_cluster  # noqa: E402


def _inc(x):
    return x + 1


def chain(n: int) -> dict:
    """One chain of ``n`` dependent tasks on the connected cluster: its timings (seconds)."""
    import repartir

    inc = repartir.remote(_inc)
    start = time.perf_counter()
    x = inc.remote(0)
    for _ in range(n - 1):
        x = inc.remote(x)
    submitted = time.perf_counter() - start
    value = repartir.get(x, timeout=600)
    total = time.perf_counter() - start
    if value != n:
        raise SystemExit(f"the chain of {n} tasks gave {value}")
    return {"submit_s": round(submitted, 3), "total_s": round(total, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=1000, help="tasks in the chain (1000)")
    p.add_argument("--repeat", type=int, default=3, help="chains run (3)")
    args = p.parse_args(argv)
    if args.tasks < 1 or args.repeat < 1:
        raise SystemExit("--tasks and --repeat must be at least 1")
    with loopback_cluster(head=["--num-cpus", "1"], node=["--num-cpus", "1"]):
        chain(20)  # warm up: the workers import the function
        runs = [chain(args.tasks) for _ in range(args.repeat)]
        runs.sort(key=lambda r: r["total_s"])
        print(json.dumps({"workload": "chain", "tasks": args.tasks, "best": runs[0],
                          "runs": runs}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
