"""The benchmark harness of repartir: every workload of ``BENCHMARKS.md``, side by side with the peers.

::

    parent (python stress/bench.py ...)                      one child per system
    ┌───────────────────────────────┐  argv: --_child SYSTEM  ┌─────────────────────────────┐
    │ pick systems, workloads, sizes│ ──────────────────────▶ │ import, start (timed: init) │
    │ watch each child's event file │                         │ run each workload from      │
    │  (per-workload + per-system   │ ◀────────────────────── │  REGISTRY[SYSTEM]           │
    │   timeouts: kill, restart     │   JSON lines: start,    │ stop (repartir.shutdown())  │
    │   with the workloads left)    │   record, error, skip   └─────────────────────────────┘
    │ table on stdout, --json FILE  │
    └───────────────────────────────┘

**Systems.** ``repartir`` always; ``multiprocessing`` (``multiprocessing.Pool``, ``spawn`` start
method unless ``--mp-start``); ``ray``, ``dask`` (``distributed.LocalCluster`` with processes,
``threads_per_worker=1``) and ``loky`` (``get_reusable_executor``) when importable; ``memcpy``, the
physical reference for ``put`` (added whenever ``put`` is measured). Every system gets the same
number of workers (``--workers``, default ``os.cpu_count()``), runs in its own process group, and is
killed when one workload exceeds ``--workload-timeout`` or the system exceeds ``--timeout``; the
child is then restarted with the workloads left, so one hang costs one cell, not the run.

**Workloads** (the full sizes; ``--quick`` in brackets). Before each timed loop a short warm-up runs
the same operation untimed.

========== ================================================================== ==================
id          what is timed                                                      unit (JSON)
========== ================================================================== ==================
init        creation of the runtime/pool/cluster until the first no-op task's  ``s``
            result is back (imports are done before the clock starts)
tiny_async  submit 20,000 [2,000] no-op tasks, then get all                    ``tasks/s``
tiny_rtt    2,000 [200] × (submit one no-op, get it); mean, p50/p99 in extra   ``us`` per trip
put         ``put`` of a 256 MiB [32 MiB] float64 array, median of 5, store    ``GB/s`` (1e9 B/s)
            warm, each ref released before the next put; extra:
            ``fraction_of_memcpy``. memcpy: ``np.copyto`` into a warm,
            preallocated destination, median of 5. Dask: ``client.scatter``
            (``hash=False``, so a new key each time).
get         inside a task running in a worker process, the time of ``get`` on  ``us``
            a ref to that array (the ref travels nested in a list, so the
            task receives the ref, not the value); median of 7 after a warm-up;
            extra: the same at 1 MiB (the goal is: no growth with size).
            Dask: the array is scattered to worker A, the task runs on worker
            B and times ``Future(key, get_client(), state="memory").result()``
            through its worker client, i.e. the transfer to another process
            (the task receives the key: Dask resolves futures nested in lists).
bigarg      20 [5] tasks, each receiving the array as a top-level argument by  ``s``
            ref (resolved to the value) and returning ``float(a[0] + a[-1])``;
            from the first submit to all results. The ref is made (``put``,
            ``scatter``) before the clock starts. multiprocessing and loky
            receive the array itself (pickled for every task).
========== ================================================================== ==================

``put`` and ``get`` make no sense without an object store and are skipped for multiprocessing and
loky (``–`` in the table).

**Adding a workload** is one small function per system (or one generic function over the
:class:`Adapter` interface): decorate it with ``@workload("id", systems=(...))``, return
``value`` or ``(value, extra_dict)``, and add the id to :data:`WORKLOADS` with its unit.

**Output.** A table on stdout (rows: workloads, columns: systems) and with ``--json FILE`` a list of
records ``{"system", "workload", "value", "unit", "extra"}`` for every value measured (failed or
skipped cells are not records; they are shown in the table and on stderr). Exit status 0, or 1 when
a repartir workload failed or timed out. Child logs and event files stay in ``--logdir``.

Self-test of the harness: ``REPARTIR_BENCH_FAULT=multiprocessing/tiny_rtt=crash,loky/init=hang``
(``crash``: ``os._exit(3)``, ``hang``: sleep, anything else: raise) at the start of that workload.

Examples::

    python stress/bench.py --quick                      # < 1 min: repartir + multiprocessing
    python stress/bench.py --json bench.json            # all installed systems, full sizes
    python stress/bench.py --systems repartir,ray --workloads tiny_async,tiny_rtt
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS_FILE = os.path.abspath(__file__)

#: Workload ids in table order, with the unit written to JSON and the one shown in the table.
WORKLOADS: dict[str, tuple[str, str]] = {
    "init": ("s", "s"),
    "tiny_async": ("tasks/s", "tasks/s"),
    "tiny_rtt": ("us", "µs/trip"),
    "put": ("GB/s", "GB/s"),
    "get": ("us", "µs"),
    "bigarg": ("s", "s"),
}

#: Goals from BENCHMARKS.md, shown in the table's last column.
GOALS: dict[str, str] = {
    "init": "≤ 0.3 s",
    "tiny_async": "≥ 3×mp, ≥ 50×ray",
    "tiny_rtt": "≤ 50 µs",
    "put": "≥ 0.8×memcpy",
    "get": "≤ 50 µs",
    "bigarg": "≤ 0.5×ray",
}

#: Systems in column order; ``memcpy`` is a physical reference, not a peer.
SYSTEM_ORDER = ("repartir", "memcpy", "multiprocessing", "ray", "dask", "loky")
#: The module whose presence makes a system available.
SYSTEM_MODULE = {"repartir": "repartir", "ray": "ray", "dask": "distributed", "loky": "loky"}
#: What a system is called in the table header.
SYSTEM_TITLE = {"multiprocessing": "mp.Pool"}

MIB = 1 << 20


@dataclass(frozen=True)
class Config:
    """Sizes and counts of one run; ``quick()`` gives the small ones."""

    workers: int
    tiny_tasks: int = 20_000
    rtt_trips: int = 2_000
    array_mib: int = 256
    bigarg_tasks: int = 20
    put_reps: int = 5
    get_reps: int = 7
    mp_start: str = "spawn"
    quick: bool = False

    @classmethod
    def quick_sizes(cls, workers: int, **kw: Any) -> "Config":
        return cls(workers=workers, tiny_tasks=2_000, rtt_trips=200, array_mib=32,
                   bigarg_tasks=5, quick=True, **kw)

    @property
    def array_len(self) -> int:
        return self.array_mib * MIB // 8


# ---------------------------------------------------------------------------------------------
# Task bodies. They live in this module, which is ``__main__`` in the child: cloudpickle-based
# systems (repartir, Ray, Dask, loky) ship them by value; multiprocessing's spawn re-imports this
# file as ``__mp_main__`` in its workers, so nothing below runs at import time but definitions.
# ---------------------------------------------------------------------------------------------

def noop() -> None:
    return None


def read_ends(a: "np.ndarray") -> float:
    return float(a[0] + a[-1])


def repartir_timed_get(refs: list) -> tuple[float, float]:
    """Runs in a repartir worker: (seconds spent in ``repartir.get``, a[0] + a[-1])."""
    import repartir

    t0 = time.perf_counter()
    a = repartir.get(refs[0])
    dt = time.perf_counter() - t0
    return dt, float(a[0] + a[-1])


def ray_timed_get(refs: list) -> tuple[float, float]:
    """Runs in a Ray worker: (seconds spent in ``ray.get``, a[0] + a[-1])."""
    import ray

    t0 = time.perf_counter()
    a = ray.get(refs[0])
    dt = time.perf_counter() - t0
    return dt, float(a[0] + a[-1])


def dask_timed_get(key: str) -> tuple[float, float]:
    """Runs in a Dask worker: (seconds to fetch the scattered ``key`` through the worker client)."""
    from distributed import Future, get_client

    # A Future rebuilt from its key (state "memory": the scatter has finished) and bound to this
    # worker's client; result() gathers the value from the worker that holds it.
    fut = Future(key, get_client(), state="memory")
    t0 = time.perf_counter()
    a = fut.result()
    dt = time.perf_counter() - t0
    return dt, float(a[0] + a[-1])


# ---------------------------------------------------------------------------------------------
# Adapters: one per system, the small common surface that the generic workloads use.
# ---------------------------------------------------------------------------------------------

class Adapter:
    """How the generic workloads drive one system.

    ``prepare()`` imports (untimed), ``start()`` creates the runtime (timed together with the
    first no-op task as ``init``), ``submit``/``get``/``get_all`` run tasks, ``by_ref`` turns an
    array into what a task receives as its top-level argument, ``stop()`` tears everything down.
    """

    name = ""
    has_tasks = True

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.workers = cfg.workers
        self.init_time: float | None = None
        self.extra: dict[str, Any] = {}

    def prepare(self) -> None:
        pass

    def start(self) -> None:
        pass

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def get(self, handle: Any) -> Any:
        raise NotImplementedError

    def get_all(self, handles: list) -> list:
        return [self.get(h) for h in handles]

    def by_ref(self, arr: np.ndarray) -> Any:
        return arr

    def stop(self) -> None:
        pass


class RepartirAdapter(Adapter):
    name = "repartir"

    def prepare(self) -> None:
        import repartir

        self.rp = repartir
        self._remote: dict[Callable[..., Any], Any] = {}

    def start(self) -> None:
        self.rp.init(num_cpus=self.workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        r = self._remote.get(fn)
        if r is None:
            r = self._remote[fn] = self.rp.remote(fn)
        return r.remote(*args)

    def get(self, handle: Any) -> Any:
        return self.rp.get(handle)

    def get_all(self, handles: list) -> list:
        return self.rp.get(handles)

    def by_ref(self, arr: np.ndarray) -> Any:
        return self.rp.put(arr)

    def stop(self) -> None:
        self.rp.shutdown()


class RayAdapter(Adapter):
    name = "ray"

    def prepare(self) -> None:
        import ray

        self.ray = ray
        self._remote: dict[Callable[..., Any], Any] = {}

    def start(self) -> None:
        self.ray.init(num_cpus=self.workers, include_dashboard=False, logging_level="ERROR",
                      log_to_driver=False)
        self.extra["version"] = self.ray.__version__

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        r = self._remote.get(fn)
        if r is None:
            r = self._remote[fn] = self.ray.remote(fn)
        return r.remote(*args)

    def get(self, handle: Any) -> Any:
        return self.ray.get(handle)

    def get_all(self, handles: list) -> list:
        return self.ray.get(handles)

    def by_ref(self, arr: np.ndarray) -> Any:
        return self.ray.put(arr)

    def stop(self) -> None:
        self.ray.shutdown()


class DaskAdapter(Adapter):
    name = "dask"

    def prepare(self) -> None:
        import distributed

        self.distributed = distributed

    def start(self) -> None:
        d = self.distributed
        self.cluster = d.LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=40)
        self.client = d.Client(self.cluster)
        self.extra["version"] = d.__version__

    def submit(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self.client.submit(fn, *args, pure=False, **kw)

    def get(self, handle: Any) -> Any:
        return handle.result()

    def get_all(self, handles: list) -> list:
        return self.client.gather(handles)

    def by_ref(self, arr: np.ndarray) -> Any:
        return self.client.scatter(arr, hash=False)

    def worker_addresses(self) -> list[str]:
        return sorted(self.client.scheduler_info()["workers"])

    def stop(self) -> None:
        self.client.close()
        self.cluster.close()


class MultiprocessingAdapter(Adapter):
    name = "multiprocessing"

    def prepare(self) -> None:
        import multiprocessing

        self.ctx = multiprocessing.get_context(self.cfg.mp_start)
        self.extra["start_method"] = self.cfg.mp_start

    def start(self) -> None:
        self.pool = self.ctx.Pool(self.workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.apply_async(fn, args)

    def get(self, handle: Any) -> Any:
        return handle.get()

    def stop(self) -> None:
        self.pool.close()
        self.pool.join()


class LokyAdapter(Adapter):
    name = "loky"

    def prepare(self) -> None:
        import loky

        self.loky = loky

    def start(self) -> None:
        self.executor = self.loky.get_reusable_executor(max_workers=self.workers)
        self.extra["version"] = self.loky.__version__

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.executor.submit(fn, *args)

    def get(self, handle: Any) -> Any:
        return handle.result()

    def stop(self) -> None:
        self.executor.shutdown(wait=True, kill_workers=True)


class MemcpyAdapter(Adapter):
    """No runtime: the physical reference for ``put``."""

    name = "memcpy"
    has_tasks = False


ADAPTERS: dict[str, type[Adapter]] = {
    a.name: a for a in (RepartirAdapter, MemcpyAdapter, MultiprocessingAdapter, RayAdapter,
                        DaskAdapter, LokyAdapter)
}

# ---------------------------------------------------------------------------------------------
# Workload registry: REGISTRY[system][workload] -> fn(adapter, cfg) -> value | (value, extra)
# ---------------------------------------------------------------------------------------------

WorkloadFn = Callable[[Any, Config], Any]
REGISTRY: dict[str, dict[str, WorkloadFn]] = {name: {} for name in ADAPTERS}
TASK_SYSTEMS = ("repartir", "multiprocessing", "ray", "dask", "loky")


def workload(name: str, systems: Iterable[str]) -> Callable[[WorkloadFn], WorkloadFn]:
    """Register ``fn`` as workload ``name`` for each of ``systems`` (a later one overrides)."""
    assert name in WORKLOADS, f"add {name!r} to WORKLOADS with its unit first"

    def deco(fn: WorkloadFn) -> WorkloadFn:
        for s in systems:
            REGISTRY[s][name] = fn
        return fn

    return deco


def _array(cfg: Config, n: int | None = None) -> np.ndarray:
    return np.random.default_rng(0).random(cfg.array_len if n is None else n)


def _warm_tasks(s: Adapter, n: int) -> None:
    s.get_all([s.submit(noop) for _ in range(n)])


@workload("init", TASK_SYSTEMS)
def w_init(s: Adapter, cfg: Config) -> Any:
    """Measured by the child runner when it starts the system: see :func:`child_main`."""
    return s.init_time, dict(s.extra)


@workload("tiny_async", TASK_SYSTEMS)
def w_tiny_async(s: Adapter, cfg: Config) -> Any:
    _warm_tasks(s, max(50, 4 * cfg.workers))
    n = cfg.tiny_tasks
    t0 = time.perf_counter()
    handles = [s.submit(noop) for _ in range(n)]
    t_submit = time.perf_counter() - t0
    s.get_all(handles)
    dt = time.perf_counter() - t0
    return n / dt, {"tasks": n, "submit_s": round(t_submit, 4), "total_s": round(dt, 4)}


@workload("tiny_rtt", TASK_SYSTEMS)
def w_tiny_rtt(s: Adapter, cfg: Config) -> Any:
    for _ in range(max(20, cfg.rtt_trips // 10)):
        s.get(s.submit(noop))
    n = cfg.rtt_trips
    trips = np.empty(n)
    pc = time.perf_counter
    t0 = pc()
    for i in range(n):
        t = pc()
        s.get(s.submit(noop))
        trips[i] = pc() - t
    dt = pc() - t0
    return dt / n * 1e6, {"trips": n, "p50_us": round(float(np.percentile(trips, 50)) * 1e6, 1),
                          "p99_us": round(float(np.percentile(trips, 99)) * 1e6, 1)}


def _median_put(put: Callable[[np.ndarray], Any], release: Callable[[Any], None],
                arr: np.ndarray, reps: int) -> Any:
    release(put(arr))                           # warm the store
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        ref = put(arr)
        times.append(time.perf_counter() - t0)
        release(ref)
        del ref
    med = statistics.median(times)
    return arr.nbytes / med / 1e9, {"bytes": arr.nbytes, "median_s": round(med, 5),
                                   "min_s": round(min(times), 5), "reps": reps}


@workload("put", ("memcpy",))
def w_put_memcpy(s: Adapter, cfg: Config) -> Any:
    arr = _array(cfg)
    dst = np.empty_like(arr)
    return _median_put(lambda a: np.copyto(dst, a), lambda _: None, arr, cfg.put_reps)


@workload("put", ("repartir",))
def w_put_repartir(s: RepartirAdapter, cfg: Config) -> Any:
    return _median_put(s.rp.put, lambda ref: None, _array(cfg), cfg.put_reps)


@workload("put", ("ray",))
def w_put_ray(s: RayAdapter, cfg: Config) -> Any:
    return _median_put(s.ray.put, lambda ref: None, _array(cfg), cfg.put_reps)


@workload("put", ("dask",))
def w_put_dask(s: DaskAdapter, cfg: Config) -> Any:
    def release(fut: Any) -> None:
        s.client.cancel(fut)
    value, extra = _median_put(lambda a: s.client.scatter(a, hash=False), release, _array(cfg),
                               cfg.put_reps)
    extra["measured"] = "client.scatter(hash=False) to one worker"
    return value, extra


def _median_get(run_one: Callable[[np.ndarray], tuple[float, float]], arr: np.ndarray,
                reps: int) -> tuple[float, float]:
    """Median seconds of ``reps`` timed gets after one warm-up; checks the value came through."""
    expect = float(arr[0] + arr[-1])
    run_one(arr)
    times = []
    for _ in range(reps):
        dt, got = run_one(arr)
        if got != expect:
            raise AssertionError(f"get returned a wrong array: a[0]+a[-1] = {got}, expected {expect}")
        times.append(dt)
    return statistics.median(times), min(times)


def _get_workload(run_one: Callable[[np.ndarray], tuple[float, float]], cfg: Config) -> Any:
    big = _array(cfg)
    med, best = _median_get(run_one, big, cfg.get_reps)
    small_med, _ = _median_get(run_one, _array(cfg, MIB // 8), cfg.get_reps)
    return med * 1e6, {"bytes": big.nbytes, "min_us": round(best * 1e6, 1),
                       "us_at_1MiB": round(small_med * 1e6, 1), "reps": cfg.get_reps}


@workload("get", ("repartir",))
def w_get_repartir(s: RepartirAdapter, cfg: Config) -> Any:
    def run_one(arr: np.ndarray) -> tuple[float, float]:
        ref = s.rp.put(arr)
        out = s.rp.get(s.submit(repartir_timed_get, [ref]))
        del ref
        return out
    return _get_workload(run_one, cfg)


@workload("get", ("ray",))
def w_get_ray(s: RayAdapter, cfg: Config) -> Any:
    def run_one(arr: np.ndarray) -> tuple[float, float]:
        ref = s.ray.put(arr)
        out = s.ray.get(s.submit(ray_timed_get, [ref]))
        del ref
        return out
    return _get_workload(run_one, cfg)


@workload("get", ("dask",))
def w_get_dask(s: DaskAdapter, cfg: Config) -> Any:
    workers = s.worker_addresses()
    holder, reader = workers[0], workers[-1]

    def run_one(arr: np.ndarray) -> tuple[float, float]:
        fut = s.client.scatter(arr, workers=[holder], hash=False)
        out = s.submit(dask_timed_get, fut.key, workers=[reader]).result()
        s.client.cancel(fut)
        return out
    value, extra = _get_workload(run_one, cfg)
    extra["measured"] = ("scatter to worker A; task on worker B times Future(key).result() "
                         "via its worker client" + ("" if holder != reader else " (1 worker: same)"))
    return value, extra


@workload("bigarg", TASK_SYSTEMS)
def w_bigarg(s: Adapter, cfg: Config) -> Any:
    arr = _array(cfg)
    expect = read_ends(arr)
    ref = s.by_ref(arr)                 # the array itself for multiprocessing and loky
    n = cfg.bigarg_tasks
    t0 = time.perf_counter()
    out = s.get_all([s.submit(read_ends, ref) for _ in range(n)])
    dt = time.perf_counter() - t0
    if any(v != expect for v in out):
        raise AssertionError(f"bigarg: tasks returned {set(out)}, expected {expect}")
    return dt, {"tasks": n, "bytes": arr.nbytes,
                "passed": "by value (pickled)" if ref is arr else "by ref"}


# ---------------------------------------------------------------------------------------------
# Child: one system, events as JSON lines in --_out.
# ---------------------------------------------------------------------------------------------

def child_main(system: str, workloads: list[str], cfg: Config, out_path: str) -> int:
    """Run ``workloads`` on ``system`` in this process; every event goes to ``out_path`` at once."""
    out = open(out_path, "a", buffering=1)

    def emit(**ev: Any) -> None:
        ev["t"] = time.time()
        out.write(json.dumps(ev) + "\n")
        out.flush()

    s = ADAPTERS[system](cfg)
    reg = REGISTRY[system]
    emit(event="start", workload="__start__")
    try:
        s.prepare()
        gc.collect()
        t0 = time.perf_counter()
        s.start()
        if s.has_tasks:
            s.get(s.submit(noop))
        s.init_time = time.perf_counter() - t0
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then exit
        emit(event="fatal", workload="__start__", error=_one_line(e), tb=traceback.format_exc())
        try:
            s.stop()
        except BaseException:  # noqa: BLE001
            pass
        return 2
    status = 0
    try:
        for w in workloads:
            fn = reg.get(w)
            if fn is None:
                emit(event="skip", workload=w, reason="not applicable")
                continue
            emit(event="start", workload=w)
            try:
                _inject_fault(system, w)
                res = fn(s, cfg)
                value, extra = res if isinstance(res, tuple) else (res, {})
                emit(event="record", workload=w, value=float(value), extra=extra or {})
            except Exception as e:  # noqa: BLE001 - one workload's failure is one cell
                status = 1
                emit(event="error", workload=w, error=_one_line(e), tb=traceback.format_exc())
            gc.collect()
    finally:
        emit(event="start", workload="__stop__")
        s.stop()
        emit(event="stopped", workload="__stop__")
    return status


def _inject_fault(system: str, w: str) -> None:
    """Self-test of the harness: ``REPARTIR_BENCH_FAULT=system/workload=crash|hang|raise``."""
    for spec in filter(None, os.environ.get("REPARTIR_BENCH_FAULT", "").split(",")):
        where, _, what = spec.partition("=")
        if where == f"{system}/{w}":
            if what == "crash":
                os._exit(3)
            if what == "hang":
                time.sleep(1e9)
            raise RuntimeError(f"injected fault in {where}")


def _one_line(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip().replace("\n", " ")
    return msg if len(msg) <= 200 else msg[:197] + "..."


# ---------------------------------------------------------------------------------------------
# Parent: launch, watch, restart, tabulate.
# ---------------------------------------------------------------------------------------------

@dataclass
class Cell:
    """The outcome of one (system, workload): a value, or a status with a reason."""

    status: str                   # "ok", "skip", "error", "timeout", "crash", "missing"
    value: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _wait_group(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until no process of the child's group is left; True when it emptied in time."""
    end = time.monotonic() + timeout
    proc.poll()                                 # reap the leader: a zombie still counts
    while _group_alive(proc.pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
        proc.poll()
    return True


def _kill_group(proc: subprocess.Popen, term_grace: float = 5.0) -> None:
    """End the child's own process group (it was started with ``start_new_session``).

    SIGTERM to the group, then SIGKILL to whatever is left after ``term_grace`` seconds. The
    group outlives its leader for a moment while resource trackers unlink semaphores and workers
    notice their parent is gone, so the leader's exit alone is not waited for.
    """
    pgid = proc.pid
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not _wait_group(proc, term_grace):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _read_events(path: str, pos: int) -> tuple[list[dict[str, Any]], int]:
    with open(path) as f:
        f.seek(pos)
        data = f.read()
    lines = data.split("\n")
    complete, rest = lines[:-1], lines[-1]
    events = [json.loads(line) for line in complete if line.strip()]
    return events, pos + len(data) - len(rest)


def run_system(system: str, workloads: list[str], cfg: Config, workload_timeout: float,
               system_timeout: float, logdir: str, verbose: bool) -> dict[str, Cell]:
    """Run ``workloads`` on ``system`` in child processes; returns one :class:`Cell` per workload."""
    cells: dict[str, Cell] = {}
    runnable = [w for w in workloads if w in REGISTRY[system]]
    for w in workloads:
        if w not in REGISTRY[system]:
            cells[w] = Cell("skip", reason="not applicable")
    deadline = time.monotonic() + system_timeout
    remaining = list(runnable)
    attempt = 0
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("RAY_DEDUP_LOGS", "0")
    while remaining:
        attempt += 1
        if attempt > 3:
            for w in remaining:
                cells[w] = Cell("error", reason="not run: the child failed 3 times")
            break
        out_path = os.path.join(logdir, f"{system}.{attempt}.events")
        log_path = os.path.join(logdir, f"{system}.{attempt}.log")
        open(out_path, "w").close()
        cmd = [sys.executable, THIS_FILE, "--_child", system, "--workloads", ",".join(remaining),
               "--_cfg", json.dumps(cfg.__dict__), "--_out", out_path]
        log = open(log_path, "w")
        proc = subprocess.Popen(cmd, stdout=None if verbose else log, stderr=None if verbose else log,
                                stdin=subprocess.DEVNULL, env=env, cwd=ROOT, start_new_session=True)
        pos = 0
        current, current_t0 = "__start__", time.monotonic()
        killed_for = ""
        while True:
            try:
                rc: int | None = proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                rc = None
            events, pos = _read_events(out_path, pos)
            for ev in events:
                w = ev["workload"]
                kind = ev["event"]
                if kind == "start":
                    current, current_t0 = w, time.monotonic()
                    if w not in ("__start__", "__stop__"):
                        _log(f"{system}: {w} ...")
                elif kind == "record":
                    cells[w] = Cell("ok", ev["value"], ev.get("extra", {}))
                    _log(f"{system}: {w} = {_fmt(ev['value'])} {WORKLOADS[w][1]}")
                    current = "__between__"
                elif kind == "skip":
                    cells[w] = Cell("skip", reason=ev.get("reason", ""))
                elif kind in ("error", "fatal"):
                    _log(f"{system}: {w} failed: {ev['error']}\n{ev.get('tb', '')}")
                    if kind == "error":
                        cells[w] = Cell("error", reason=ev["error"])
                        current = "__between__"
                    else:
                        for r in remaining:
                            cells.setdefault(r, Cell("error", reason="start failed: " + ev["error"]))
                        remaining = []
                elif kind == "stopped":
                    current = "__stopped__"
            if rc is not None:
                break
            now = time.monotonic()
            limit = workload_timeout if current not in ("__start__", "__stop__") else max(
                workload_timeout, 120.0)
            if now - current_t0 > limit:
                killed_for = f"{current} exceeded {limit:.0f} s"
            elif now > deadline:
                killed_for = f"system timeout ({system_timeout:.0f} s) during {current}"
            if killed_for:
                _log(f"{system}: {killed_for}; killing the child's process group")
                _kill_group(proc)
                break
        # stragglers of the group (workers, raylets, nannies, resource trackers): let them finish
        # their own clean-up first, then end them
        if not _wait_group(proc, 10.0):
            _note(system, "processes of the child's group were still alive 10 s after it ended; "
                  "the harness ended them")
            _kill_group(proc)
        log.close()
        if current == "__stop__":
            _note(system, f"stop ({'shutdown' if system == 'repartir' else 'teardown'}) "
                  + (f"hung: {killed_for}" if killed_for else f"failed, exit {proc.returncode}")
                  + f"; log tail:\n{_tail(log_path, 8)}")
        if system == "repartir":
            _check_shm_leaks(proc.pid)
        remaining = [w for w in remaining if w not in cells]
        if current in remaining:
            status = "timeout" if killed_for else "crash"
            why = killed_for or f"child exited with {proc.returncode} during {current}"
            cells[current] = Cell(status, reason=why)
            remaining.remove(current)
            if not killed_for:
                _log(f"{system}: {why}; log tail:\n{_tail(log_path)}")
        elif remaining and not killed_for:
            why = f"child exited with {proc.returncode} ({current})"
            _log(f"{system}: {why}; log tail:\n{_tail(log_path)}")
        if killed_for and time.monotonic() > deadline:
            for w in remaining:
                cells[w] = Cell("timeout", reason="not run: " + killed_for)
            remaining = []
        if current == "__start__" and remaining:
            for w in remaining:
                cells[w] = Cell("crash" if not killed_for else "timeout",
                                reason="start failed: " + (killed_for or f"exit {proc.returncode}"))
            _log(f"{system}: start failed; log tail:\n{_tail(log_path)}")
            remaining = []
    return cells


#: Harness-level observations (leaks, hung shutdowns), printed under the table.
NOTES: list[str] = []


def _note(system: str, msg: str) -> None:
    NOTES.append(f"{system}: {msg}")
    _log(f"{system}: {msg}")


def _check_shm_leaks(driver_pid: int, wait: float = 5.0) -> None:
    """Note what the repartir session of ``driver_pid`` left in /dev/shm (DESIGN §2: nothing)."""
    def left() -> list[str]:
        try:
            names = os.listdir("/dev/shm")
        except OSError:
            return []
        return [n for n in names if "repartir" in n and f"_{driver_pid}" in n]
    end = time.monotonic() + wait
    while left() and time.monotonic() < end:
        time.sleep(0.2)
    names = left()
    if names:
        size = sum(os.path.getsize(os.path.join("/dev/shm", n)) for n in names
                   if os.path.exists(os.path.join("/dev/shm", n)))
        _note("repartir", f"{len(names)} /dev/shm entries of session pid {driver_pid} left "
              f"{wait:.0f} s after the child ended ({size / MIB:.0f} MiB): {names[:4]}")


def _tail(path: str, n: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def _available(system: str) -> bool:
    mod = SYSTEM_MODULE.get(system)
    if mod is None:
        return True
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def _fmt(v: float) -> str:
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _cell_text(w: str, c: Cell | None) -> str:
    if c is None:
        return ""
    if c.status == "ok":
        assert c.value is not None
        text = _fmt(c.value)
        frac = c.extra.get("fraction_of_memcpy")
        if frac is not None:
            text += f" ({frac:.2f}×)"
        return text
    return {"skip": "–", "missing": "n/a"}.get(c.status, c.status.upper())


def render_table(results: dict[str, dict[str, Cell]], workloads: list[str], cfg: Config) -> str:
    systems = [s for s in SYSTEM_ORDER if s in results] + [s for s in results if s not in SYSTEM_ORDER]
    header = ["workload (unit)"] + [SYSTEM_TITLE.get(s, s) for s in systems] + ["goal"]
    rows = []
    for w in workloads:
        row = [f"{w} ({WORKLOADS[w][1]})"]
        row += [_cell_text(w, results[s].get(w)) for s in systems]
        row.append(GOALS.get(w, ""))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(r[0].ljust(widths[0]) if i == 0 else
                         (r[i].ljust(widths[i]) if i == len(r) - 1 else r[i].rjust(widths[i]))
                         for i in range(len(r))).rstrip()

    sizes = (f"workers={cfg.workers}, tiny={cfg.tiny_tasks:,}, rtt={cfg.rtt_trips:,}, "
             f"array={cfg.array_mib} MiB, bigarg={cfg.bigarg_tasks} tasks"
             + (" [--quick]" if cfg.quick else ""))
    out = [sizes, line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    notes = []
    for s in systems:
        for w in workloads:
            c = results[s].get(w)
            if c is not None and c.status not in ("ok", "skip"):
                notes.append(f"  {s}/{w}: {c.status}: {c.reason}")
    if notes:
        out += ["failures:"] + notes
    if NOTES:
        out += ["notes:"] + ["  " + n.split("\n")[0] for n in NOTES]
    if "put" in workloads and "memcpy" in results:
        out.append("put: value in () is the fraction of memcpy measured in the same run")
    return "\n".join(out)


def records(results: dict[str, dict[str, Cell]], cfg: Config) -> list[dict[str, Any]]:
    out = []
    for s, cells in results.items():
        for w, c in cells.items():
            if c.status == "ok":
                extra = {"workers": cfg.workers, "quick": cfg.quick, **c.extra}
                out.append({"system": s, "workload": w, "value": c.value, "unit": WORKLOADS[w][0],
                            "extra": extra})
    return out


def _add_memcpy_fractions(results: dict[str, dict[str, Cell]]) -> None:
    ref = results.get("memcpy", {}).get("put")
    if ref is None or ref.status != "ok" or not ref.value:
        return
    for s, cells in results.items():
        c = cells.get("put")
        if s != "memcpy" and c is not None and c.status == "ok" and c.value is not None:
            c.extra["fraction_of_memcpy"] = round(c.value / ref.value, 4)
            c.extra["memcpy_GBps"] = round(ref.value, 3)


def _split(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small sizes, repartir + multiprocessing only (under a minute)")
    p.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEM_ORDER)} "
                   "(default: repartir and every installed peer; quick: repartir,multiprocessing)")
    p.add_argument("--workloads", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="workers for every system (default: os.cpu_count())")
    p.add_argument("--json", metavar="FILE", help="write the records as a JSON list to FILE")
    p.add_argument("--tiny-tasks", type=int)
    p.add_argument("--rtt-trips", type=int)
    p.add_argument("--array-mib", type=int)
    p.add_argument("--bigarg-tasks", type=int)
    p.add_argument("--mp-start", default="spawn", choices=("spawn", "forkserver", "fork"),
                   help="multiprocessing start method (default spawn, like repartir's workers)")
    p.add_argument("--timeout", type=float, help="seconds per system (default 1200; quick 120)")
    p.add_argument("--workload-timeout", type=float,
                   help="seconds per workload before the child is killed (default 300; quick 45)")
    p.add_argument("--no-memcpy", action="store_true", help="do not measure the memcpy reference")
    p.add_argument("--verbose", action="store_true", help="let the children print to this terminal")
    p.add_argument("--logdir", help="keep child logs and event files here (default: a temp dir)")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_cfg", help=argparse.SUPPRESS)
    p.add_argument("--_out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    workloads = _split(a.workloads) or list(WORKLOADS)
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; known: {list(WORKLOADS)}")

    if a._child:
        return child_main(a._child, workloads, Config(**json.loads(a._cfg)), a._out)

    kw = {"mp_start": a.mp_start}
    cfg = Config.quick_sizes(a.workers, **kw) if a.quick else Config(workers=a.workers, **kw)
    over = {k: v for k, v in (("tiny_tasks", a.tiny_tasks), ("rtt_trips", a.rtt_trips),
                              ("array_mib", a.array_mib), ("bigarg_tasks", a.bigarg_tasks))
            if v is not None}
    if over:
        cfg = Config(**{**cfg.__dict__, **over})

    explicit = _split(a.systems)
    if explicit:
        bad = [s for s in explicit if s not in ADAPTERS]
        if bad:
            p.error(f"unknown system(s) {bad}; known: {list(SYSTEM_ORDER)}")
        systems = list(explicit)
    elif a.quick:
        systems = ["repartir", "multiprocessing"]
    else:
        systems = [s for s in SYSTEM_ORDER if s != "memcpy" and (s == "repartir" or _available(s))]
    if "put" in workloads and "memcpy" not in systems and not a.no_memcpy:
        systems.insert(1 if systems and systems[0] == "repartir" else 0, "memcpy")
    systems = [s for s in SYSTEM_ORDER if s in systems] + [s for s in systems if s not in SYSTEM_ORDER]

    system_timeout = a.timeout or (120.0 if a.quick else 1200.0)
    workload_timeout = a.workload_timeout or (45.0 if a.quick else 300.0)
    logdir = a.logdir or tempfile.mkdtemp(prefix="repartir-bench-")
    os.makedirs(logdir, exist_ok=True)
    _log(f"systems={','.join(systems)} workloads={','.join(workloads)} workers={cfg.workers} "
         f"logs={logdir}")

    results: dict[str, dict[str, Cell]] = {}
    for s in systems:
        if not _available(s):
            _log(f"{s}: not installed ({SYSTEM_MODULE[s]} is not importable)")
            results[s] = {w: Cell("missing", reason="not installed") for w in workloads}
            if s == "repartir":
                for w in workloads:
                    results[s][w] = Cell("error", reason="repartir is not importable")
            continue
        t0 = time.monotonic()
        results[s] = run_system(s, workloads, cfg, workload_timeout, system_timeout, logdir,
                                a.verbose)
        _log(f"{s}: done in {time.monotonic() - t0:.1f} s")
    _add_memcpy_fractions(results)

    print(render_table(results, workloads, cfg), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(records(results, cfg), f, indent=1, ensure_ascii=False)
            f.write("\n")
        _log(f"wrote {a.json}")
    failed = [w for w, c in results.get("repartir", {}).items() if c.status not in ("ok", "skip")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
