"""Tasks submitted by a task running on a node of a loopback cluster (docs/cluster.md,
"Tasks and actors that submit work"): a head (2 CPUs, ``{"a": 1}``) and, unless
``--workloads nested_local`` only, a node (1 CPU, ``{"b": 1000}``), started with the CLI in a
state directory of their own; a driver connected to them runs one task on the head that
submits tiny tasks and gathers them with one ``get``, timed inside that task.

- ``nested_local``: tasks that fit the head's node: they run on its local runtime (the fast
  path, as on a single machine); tasks per second;
- ``nested_far``: tasks that ask for ``{"b": 1}``: the task's worker sends them to the other
  node through its own connection to the cluster; tasks per second.

``python stress/cluster_inner_bench.py [--quick] [--workloads nested_local,nested_far]``
prints one line of JSON per workload (best of ``--repeat`` runs, and every run).

``--hook-ab`` measures instead what the cluster's hook costs a nested task on the fast path,
without a cluster and with less of the machine's noise: on a local node of 2 CPUs, the
``nested_local`` task run ``2 x --repeat`` times, alternately with and without the hook a
worker of a cluster's node has (``context.inner``, an ``InnerCluster`` that never connects:
every task fits), in the same session; median and best of each.
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

FULL = {"tasks": 5_000, "repeat": 5}
QUICK = {"tasks": 1_000, "repeat": 3}


def _noop(i):
    return i


def _submitter(n: int, far: bool):
    import repartir

    noop = repartir.remote(_noop)
    if far:
        noop = noop.options(resources={"b": 1}, num_cpus=0)
    repartir.get([noop.remote(i) for i in range(50)], timeout=120)  # warm up
    start = time.perf_counter()
    out = repartir.get([noop.remote(i) for i in range(n)], timeout=600)
    elapsed = time.perf_counter() - start
    assert out == list(range(n))
    return n / elapsed


def _hooked_submitter(n: int, hooked: bool):
    from repartir.cluster.inner import InnerCluster
    from repartir.runtime import context

    context.set_inner(InnerCluster("127.0.0.1:1") if hooked else None)
    try:
        return _submitter(n, False)
    finally:
        context.set_inner(None)


def hook_ab(tasks: int, repeat: int) -> dict:
    """Nested tasks per second with and without the hook (see the module's docstring)."""
    import statistics

    import repartir

    from stress.cluster_inner_bench import _hooked_submitter
    repartir.init(num_cpus=2)
    try:
        task = repartir.remote(_hooked_submitter)
        rates: dict[bool, list] = {False: [], True: []}
        for k in range(repeat):
            for hooked in ((False, True) if k % 2 else (True, False)):
                rates[hooked].append(repartir.get(task.remote(tasks, hooked), timeout=600))
    finally:
        repartir.shutdown()
    return {name: {"median": round(statistics.median(rates[h])), "best": round(max(rates[h])),
                   "runs": [round(r) for r in rates[h]]}
            for name, h in (("without_hook", False), ("with_hook", True))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer tasks and repeats")
    p.add_argument("--workloads", default="nested_local,nested_far")
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument("--hook-ab", action="store_true",
                   help="the hook's cost on a local node, with and without it (no cluster)")
    args = p.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    if args.repeat:
        sizes["repeat"] = args.repeat
    if args.hook_ab:
        print(json.dumps({"workload": "hook_ab", "tasks": sizes["tasks"],
                          **hook_ab(sizes["tasks"], 2 * sizes["repeat"])}), flush=True)
        return 0
    workloads = args.workloads.split(",")
    far = "nested_far" in workloads
    with loopback_cluster(head=["--num-cpus", "2", "--resources", '{"a": 1}'],
                          node=["--num-cpus", "1", "--resources", '{"b": 1000}'] if far
                          else None):
        import repartir

        from stress.cluster_inner_bench import _submitter
        task = repartir.remote(_submitter).options(resources={"a": 1})
        for w in workloads:
            rates = [repartir.get(task.remote(sizes["tasks"], w == "nested_far"),
                                  timeout=600) for _ in range(sizes["repeat"])]
            print(json.dumps({"workload": w, "tasks": sizes["tasks"],
                              "tasks_per_s": round(max(rates)),
                              "runs": [round(r) for r in rates]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
