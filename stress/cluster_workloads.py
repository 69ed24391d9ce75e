"""The cluster workloads of ``stress/bench.py``: ``remote_tiny`` and ``transfer`` on three
hosts made by :mod:`stress.netns` (docs/benchmarks.md, "Workloads" and "Cluster reference
figures").

::

    host A (head / scheduler, the driver)     host B (one CPU)          host C (one CPU)
    ┌────────────────────────────────┐        ┌───────────────┐         ┌───────────────┐
    │ remote_tiny: tiny tasks to B,C │ ─────> │ node / worker │ <─────> │ node / worker │
    │ transfer: a task on C takes an │        │ keeps the     │  array  │ runs the task │
    │  array made (kept) on B        │        │ array         │ ──────> │ that takes it │
    └────────────────────────────────┘        └───────────────┘         └───────────────┘

Each system's child of ``stress/bench.py`` makes its own three hosts once, runs its
scenario, and answers both workloads from it (:func:`_figures`):

- ``repartir``: :func:`stress.cluster_bench.repartir_cluster` (``repartir start`` on each
  host, the head with no CPU);
- ``dask``: :func:`stress.netns_reference.dask_reference` (scheduler on A, one worker on each
  of B and C; worker to worker for ``transfer``), with fewer tiny tasks (about 250 a second
  would make 10,000 take 40 s);
- ``ray``: :func:`ray_reference` (``ray start --head`` on A with no CPU, ``ray start
  --address`` on B and C with resources ``b`` and ``c``; a driver on A);
- ``tcp``: :func:`stress.netns_reference.tcp_stream` from B to C, the physical reference of
  ``transfer`` (no ``remote_tiny``).

Where namespaces cannot be made (not root, no ``ip``), both workloads are skipped with the
reason (:class:`stress.workloads.WorkloadSkipped`).  ``python stress/cluster_workloads.py
_ray-driver ...`` is the Ray driver run inside host A.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from stress import cluster_bench, netns, netns_reference  # noqa: E402
from stress.adapters import ADAPTERS, Adapter, Config  # noqa: E402
from stress.workloads import (DOES, GOALS, REGISTRY, WORKLOADS, WorkloadSkipped,  # noqa: E402
                              workload)

PY = sys.executable
MIB = 1 << 20
#: Sizes of the bench's cluster workloads, full and ``--quick``: tiny tasks (Dask's own count:
#: it runs ~250 a second), MiB of the array, timed rounds of ``transfer`` after one warm-up.
SIZES = {False: {"tiny_tasks": 5_000, "dask_tiny_tasks": 1_000, "mib": 256, "reps": 3},
         True: {"tiny_tasks": 1_000, "dask_tiny_tasks": 300, "mib": 32, "reps": 2}}
RAY_PORT = 6379
#: The ``ray`` command of this interpreter's environment (so that ``VENV/bin/python
#: stress/bench.py`` runs the same Ray as its driver without the venv on PATH), else PATH's.
RAY = str(Path(PY).with_name("ray")) if Path(PY).with_name("ray").exists() else "ray"
#: Seconds the Ray nodes may take to join before the scenario gives up.
RAY_START_TIMEOUT_S = 90.0

WORKLOADS.update({"remote_tiny": ("tasks/s", "tasks/s"), "transfer": ("GB/s", "GB/s")})
GOALS.update({"remote_tiny": "≥ 5,000 tasks/s, ≥ 10×dask",
              "transfer": "≥ dask, ≥ 0.8×tcp"})
DOES.update({
    "remote_tiny": {
        "repartir": "driver on host A, `repartir start` nodes on B and C (head: no CPU): "
                    "no-op tasks, then one get",
        "dask": "scheduler and client on A, one worker on each of B and C: client.map of "
                "no-ops (a fifth as many), then gather",
        "ray": "`ray start` head on A (no CPU), nodes on B and C: no-op tasks, then one "
               "ray.get"},
    "transfer": {
        "repartir": "a task on C takes the array made and kept on B and returns its size: "
                    "C pulls it from B (link counters: not through A); submit to result, "
                    "median",
        "dask": "array scattered to worker B, a task pinned to worker C takes it (worker "
                "to worker); submit to result, median",
        "ray": "a task on node B makes the array, a task on node C takes it and returns "
               "its size (object manager B -> C); submit to result, median",
        "tcp": "one plain TCP stream B -> C (Python sockets, recv_into), median"},
})


class TcpAdapter(Adapter):
    """No runtime: the physical reference for ``transfer``."""

    name = "tcp"
    has_tasks = False


ADAPTERS["tcp"] = TcpAdapter
REGISTRY.setdefault("tcp", {})

_cache: dict[str, dict[str, tuple[float, dict]]] = {}


def sizes(cfg: Config) -> dict[str, int]:
    return SIZES[bool(cfg.quick)]


def _figures(system: str, cfg: Config, run: Callable[[netns.Cluster, dict], dict]) -> dict:
    """Both workloads' figures of ``system``, from one scenario on three new hosts."""
    if system not in _cache:
        reason = netns.unavailable_reason()
        if reason:
            raise WorkloadSkipped(f"network namespaces cannot be made here: {reason}")
        with netns.Cluster(3) as cluster:
            _cache[system] = run(cluster, sizes(cfg))
    return _cache[system]


def _answer(system: str, run: Callable[[netns.Cluster, dict], dict]) -> Callable:
    def fn(s: Adapter, cfg: Config, w: str) -> Any:
        figures = _figures(system, cfg, run)
        if w not in figures:
            raise WorkloadSkipped(f"{system} has no {w} figure")
        return figures[w]
    return fn


def _repartir(cluster: netns.Cluster, z: dict) -> dict:
    return cluster_bench.repartir_cluster(cluster, tiny_tasks=z["tiny_tasks"], mib=z["mib"],
                                          reps=z["reps"])


def _dask(cluster: netns.Cluster, z: dict) -> dict:
    return netns_reference.dask_reference(cluster, tiny_tasks=z["dask_tiny_tasks"],
                                          mib=z["mib"], reps=z["reps"])


def _tcp(cluster: netns.Cluster, z: dict) -> dict:
    return netns_reference.tcp_stream(cluster, 1, 2, mib=z["mib"], reps=z["reps"])


def ray_reference(cluster: netns.Cluster, *, tiny_tasks: int = 5_000, mib: int = 256,
                  reps: int = 3) -> dict[str, tuple[float, dict]]:
    """Ray across hosts: ``ray start --head`` on host 0 (no CPU), ``ray start --address`` on
    hosts 1 and 2 (one CPU each, resources ``b`` and ``c``), a driver on host 0.

    - ``remote_tiny``: after a warm-up of 200, ``tiny_tasks`` no-op tasks, one ``ray.get``;
      tasks per second, results checked.
    - ``transfer``: ``1 + reps`` rounds (the first a warm-up): a task on B returns a float64
      array of ``mib`` MiB (kept in B's store), then a task on C that takes it and returns its
      size is timed from submit to result; GB/s of the median round.  Untimed, a second task
      on C sums it (every element checked).

    Raises:
        RuntimeError: a Ray process failed or the nodes did not join (its logs in the
            message).
    """
    a, b, c = cluster.hosts[:3]
    head = f"{a.addr}:{RAY_PORT}"
    procs = []
    with tempfile.TemporaryDirectory(prefix="rpnet-ray-") as tmp:
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=ROOT)
        store = str(max(4 * mib, 256) * MIB)

        def start(host: netns.Host, args: list[str]) -> None:
            """``ray start`` on ``host``, and wait until it says it runs.  Ray gives a node
            30 s to register (a constant of ``ray._private.node``), which a loaded 2-core
            machine can exceed: a node that exits during startup is started once more, then
            the error names it and quotes its log."""
            path = os.path.join(tmp, f"ray-{host.index}.log")
            for attempt in (1, 2):
                with open(path, "a") as log:
                    proc = cluster.run_in(host, [RAY, "start", "--block", "--node-ip-address",
                                                 host.addr, "--object-store-memory", store,
                                                 "--disable-usage-stats", *args],
                                          env=env, stdout=log, stderr=subprocess.STDOUT)
                procs.append(proc)
                deadline = time.monotonic() + RAY_START_TIMEOUT_S
                while proc.poll() is None and time.monotonic() < deadline:
                    if "Ray runtime started" in Path(path).read_text():
                        return
                    time.sleep(0.2)
                if proc.poll() is None:
                    break  # still starting: the error below says so
            why = (f"exited with status {proc.returncode}" if proc.poll() is not None
                   else f"not up after {RAY_START_TIMEOUT_S:g} s")
            raise RuntimeError(f"`ray start` on host {'ABC'[host.index]} ({host.addr}) did not "
                               f"start ({why}; {attempt} attempt(s)): "
                               f"{Path(path).read_text()[-1500:]}")

        def logs() -> str:
            return "\n".join(f"--- {f}\n" + Path(tmp, f).read_text()[-1500:]
                             for f in sorted(os.listdir(tmp)) if f.endswith(".log"))

        try:
            start(a, ["--head", "--port", str(RAY_PORT), "--num-cpus", "0",
                      "--include-dashboard", "false", "--temp-dir", os.path.join(tmp, "r")])
            start(b, ["--address", head, "--num-cpus", "1", "--resources", '{"b": 1}'])
            start(c, ["--address", head, "--num-cpus", "1", "--resources", '{"c": 1}'])
            d = cluster.run_in(a, [PY, os.path.abspath(__file__), "_ray-driver", head,
                                   str(tiny_tasks), str(mib), str(reps)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
            try:
                out, err = d.communicate(timeout=RAY_START_TIMEOUT_S + 240)
            except subprocess.TimeoutExpired:
                d.kill()
                out, err = d.communicate()
            if d.returncode != 0 or not out.strip():
                raise RuntimeError(f"the Ray driver failed ({d.returncode}): "
                                   f"{err[-1500:]}\n{logs()}")
            r = json.loads(out.strip().splitlines()[-1])
        finally:
            for p in reversed(procs):
                cluster.stop(p, grace_s=10)
    n = mib * MIB
    gbps = [n / t / 1e9 for t in r["transfer_s"][1:]]
    return {"remote_tiny": (r["tiny_tasks"] / r["tiny_s"],
                            {"tasks": r["tiny_tasks"], "seconds": r["tiny_s"],
                             "checked": "every result"}),
            "transfer": (statistics.median(gbps),
                         {"bytes": n, "rounds_GBps": [round(g, 3) for g in gbps],
                          "warmup_s": r["transfer_s"][0],
                          "checked": "the sum of every element on C"})}


def _ray_driver(address: str, tiny_tasks: int, mib: int, reps: int) -> None:
    import numpy as np
    import ray

    ray.init(address=address, log_to_driver=False)
    deadline = time.monotonic() + RAY_START_TIMEOUT_S
    while ray.cluster_resources().get("CPU", 0) < 2:
        if time.monotonic() > deadline:
            raise SystemExit(f"the Ray nodes did not join: {ray.nodes()}")
        time.sleep(0.5)

    @ray.remote
    def tiny(i):
        return i

    @ray.remote(resources={"b": 1})
    def make(n):
        return np.ones(n // 8)

    @ray.remote(resources={"c": 1})
    def size(x):
        return x.nbytes

    @ray.remote(resources={"c": 1})
    def total(x):
        return float(x.sum())

    assert ray.get([tiny.remote(i) for i in range(200)]) == list(range(200))
    t = time.perf_counter()
    out = ray.get([tiny.remote(i) for i in range(tiny_tasks)])
    tiny_s = time.perf_counter() - t
    assert out == list(range(tiny_tasks))
    n = mib * MIB
    seconds = []
    for _ in range(reps + 1):
        ref = make.remote(n)
        ray.wait([ref], fetch_local=False)
        t = time.perf_counter()
        nbytes = ray.get(size.remote(ref))
        seconds.append(time.perf_counter() - t)
        s = ray.get(total.remote(ref))  # untimed: every element
        assert nbytes == n and s == n // 8
        del ref
    print(json.dumps({"tiny_tasks": tiny_tasks, "tiny_s": tiny_s, "transfer_s": seconds}),
          flush=True)
    ray.shutdown()


def _ray(cluster: netns.Cluster, z: dict) -> dict:
    return ray_reference(cluster, tiny_tasks=z["tiny_tasks"], mib=z["mib"], reps=z["reps"])


def _register() -> None:
    for system, run, names in (("repartir", _repartir, ("remote_tiny", "transfer")),
                               ("dask", _dask, ("remote_tiny", "transfer")),
                               ("ray", _ray, ("remote_tiny", "transfer")),
                               ("tcp", _tcp, ("transfer",))):
        answer = _answer(system, run)
        for w in names:
            workload(w, systems=(system,))(lambda s, cfg, answer=answer, w=w: answer(s, cfg, w))


_register()


if __name__ == "__main__":
    if sys.argv[1:2] == ["_ray-driver"]:
        _ray_driver(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit("run `python stress/bench.py --workloads remote_tiny,transfer`")
