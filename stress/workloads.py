"""The workloads of the benchmark harness: ``REGISTRY[system][workload] -> fn(adapter, cfg)``.

What each workload times, its sizes, how each system does it and the goals are defined in
``docs/benchmarks.md``; :data:`DOES` is the one line per system that the table prints under it,
:data:`GOALS` the goal column. Task bodies live in :mod:`stress.tasks`; systems in
:mod:`stress.adapters`. ``init`` is timed by the child runner (``stress.bench.child_main``):
from creating the runtime until one :func:`~stress.tasks.rendezvous` task runs on every worker
at once.

Every array a workload moves is checked whole (:func:`~stress.tasks.checksum`, a CRC-32 of every
byte), outside the timed window.

``put`` and ``get`` make no sense without an object store and are skipped for multiprocessing and
loky, the actor workloads without actors (everything but repartir and Ray), ``fib`` without tasks
that submit tasks (multiprocessing, loky); ``–`` in the table.

**Adding a workload** is one small function per system (or one generic function over the
:class:`~stress.adapters.Adapter` interface): decorate it with ``@workload("id", systems=(...))``,
return ``value`` or ``(value, extra_dict)``, add the id to :data:`WORKLOADS` with its unit, its
goal to :data:`GOALS`, its sizes to :class:`~stress.adapters.Config`, and the task bodies it
ships to workers to :mod:`stress.tasks`.
"""

from __future__ import annotations

import os
import pickle
import statistics
import time
from typing import Any, Callable, Iterable

import numpy as np

from stress.adapters import (ADAPTERS, MIB, Adapter, Config, DaskAdapter, PeakWorkers,
                             RayAdapter, RepartirAdapter)
from stress.tasks import (NoopActor, checksum, dask_fib, dask_timed_get, fib_serial, noop,
                          ray_fib, ray_timed_get, read_ends, repartir_timed_get, rp_fib,
                          sleep_s, spin)

#: Workload ids in table order, with the unit written to JSON and the one shown in the table.
WORKLOADS: dict[str, tuple[str, str]] = {
    "init": ("s", "s"),
    "tiny_async": ("tasks/s", "tasks/s"),
    "tiny_rtt": ("us", "µs/trip"),
    "actor_sync": ("calls/s", "calls/s"),
    "actor_async": ("calls/s", "calls/s"),
    "put": ("GB/s", "GB/s"),
    "get": ("us", "µs"),
    "bigarg": ("s", "s"),
    "fib": ("s", "s"),
    "unbalanced": ("ratio", "× ideal"),
    "ctrl_c": ("ms", "ms"),
    "spill": ("GB/s", "GB/s"),
}

#: Goals from docs/benchmarks.md (its Goals table), shown in the table's last column.
GOALS: dict[str, str] = {
    "init": "≤ 0.3 s",
    "tiny_async": "≥ 3×mp, ≥ 50×ray",
    "tiny_rtt": "≤ 50 µs",
    "actor_sync": "≥ 20,000 calls/s",
    "actor_async": "≥ 50,000 calls/s",
    "put": "≥ 0.8×memcpy",
    "get": "≤ 50 µs",
    "bigarg": "≤ 0.5×ray",
    "fib": "≤ 0.1 s, ≤ 2×cores procs",
    "unbalanced": "≤ 1.1",
    "ctrl_c": "≤ 100 ms",
    "spill": "≥ ray, ≥ 0.5×disk write",
}

#: Shown in () after a value in the table: workload -> (key of its extra, format).
CELL_SUFFIX: dict[str, tuple[str, str]] = {
    "put": ("fraction_of_memcpy", "{:.2f}×"),
    "fib": ("peak_workers", "{} procs"),
    "spill": ("put_GBps", "put {:.2f}"),
}

#: Printed under the table when the workload has a value with a suffix.
FOOTNOTES: dict[str, str] = {
    "put": "put: value in () is the fraction of memcpy measured in the same run",
    "fib": "fib: value in () is the peak number of worker processes alive during the run",
    "spill": "spill: value in () is the GB/s of the puts alone; the record has the reads' too",
}

#: What each system does in a workload, printed under the table for the workloads run
#: (``"*"``: every system the workload runs on). The full definitions: docs/benchmarks.md.
DOES: dict[str, dict[str, str]] = {
    "init": {"*": "from creating the runtime until N rendezvous tasks run at once on all N "
                  "workers (imports untimed)"},
    "tiny_async": {"*": "submit all no-op tasks, then get all"},
    "tiny_rtt": {"*": "submit one no-op task, get it; repeated"},
    "actor_sync": {"*": "call a no-op actor method, get it; repeated"},
    "actor_async": {"*": "all calls in flight, then get all"},
    "put": {"memcpy": "np.copyto into a warm buffer, best of 1..{threads} threads",
            "repartir": "repartir.put: one copy into the shared-memory arena",
            "ray": "ray.put: one copy into the plasma store",
            "dask": "client.scatter: serialize and send to one worker process"},
    "get": {"repartir": "zero-copy view: unpickle the ref (lookup + pin) and get, in a worker",
            "ray": "zero-copy view: ray.get of a nested ref (lookup + pin), in a worker",
            "dask": "transfer: worker B fetches the array from worker A (a copy)"},
    "bigarg": {"repartir": "tasks get the put array by ref (zero-copy view)",
               "ray": "tasks get the put array by ref (zero-copy view)",
               "dask": "tasks get the scattered array by ref (copied once to each worker using it)",
               "multiprocessing": "the array is pickled into every task",
               "loky": "the array is pickled into every task"},
    "fib": {"repartir": "the @remote function submits two children and gets them",
            "ray": "the @remote function submits two children and gets them",
            "dask": "get_client().submit two children; secede while waiting"},
    "unbalanced": {"*": "all busy-loop tasks submitted at once; makespan over ideal"},
    "ctrl_c": {"repartir": "SIGINT to the driver waiting in get(): until KeyboardInterrupt"},
    "spill": {"repartir": "put 2x the store (the oldest objects spill to disk), then get and "
                          "sum each (restored from disk: a mapping of its file)",
              "ray": "put 2x the store (the oldest objects spill to disk), then get and sum "
                     "each (restored from disk into the store)"},
}


def does(workload_id: str, system: str) -> str | None:
    """The line :data:`DOES` has for ``system`` in ``workload_id``, or ``None``."""
    d = DOES.get(workload_id, {})
    text = d.get(system, d.get("*") if system in REGISTRY and workload_id in REGISTRY[system]
                 else None)
    return text.format(threads=copy_threads()) if text and "{threads}" in text else text


class WorkloadSkipped(Exception):
    """Raised by a workload that cannot run here (no network namespaces, ...): its cell is
    ``–`` and the message, the reason, is printed under the table."""


WorkloadFn = Callable[[Any, Config], Any]
REGISTRY: dict[str, dict[str, WorkloadFn]] = {name: {} for name in ADAPTERS}
TASK_SYSTEMS = ("repartir", "multiprocessing", "ray", "dask", "loky")
ACTOR_SYSTEMS = ("repartir", "ray")


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


def _percentiles_us(times: np.ndarray) -> dict[str, float]:
    return {"p50_us": round(float(np.percentile(times, 50)) * 1e6, 1),
            "p99_us": round(float(np.percentile(times, 99)) * 1e6, 1)}


@workload("init", TASK_SYSTEMS)
def w_init(s: Adapter, cfg: Config) -> Any:
    """Measured by the child runner when it starts the system: see ``stress.bench.child_main``."""
    return s.init_time, {**s.extra, "definition": "all workers ready (rendezvous on every one)"}


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
    return dt / n * 1e6, {"trips": n, **_percentiles_us(trips)}


@workload("actor_sync", ACTOR_SYSTEMS)
def w_actor_sync(s: Adapter, cfg: Config) -> Any:
    h = s.actor(NoopActor)
    try:
        for _ in range(max(20, cfg.actor_sync_calls // 10)):
            s.get(h.m.remote())
        n = cfg.actor_sync_calls
        calls = np.empty(n)
        pc = time.perf_counter
        t0 = pc()
        for i in range(n):
            t = pc()
            s.get(h.m.remote())
            calls[i] = pc() - t
        dt = pc() - t0
    finally:
        s.kill_actor(h)
    return n / dt, {"calls": n, "mean_us": round(dt / n * 1e6, 1), **_percentiles_us(calls)}


@workload("actor_async", ACTOR_SYSTEMS)
def w_actor_async(s: Adapter, cfg: Config) -> Any:
    h = s.actor(NoopActor)
    try:
        s.get_all([h.m.remote() for _ in range(max(50, cfg.actor_async_calls // 20))])
        n = cfg.actor_async_calls
        t0 = time.perf_counter()
        refs = [h.m.remote() for _ in range(n)]
        t_submit = time.perf_counter() - t0
        s.get_all(refs)
        dt = time.perf_counter() - t0
    finally:
        s.kill_actor(h)
    return n / dt, {"calls": n, "submit_s": round(t_submit, 4), "total_s": round(dt, 4)}


def copy_threads() -> int:
    """The most threads repartir splits one copy over on this machine (``put``'s reference
    tries 1 to this many)."""
    try:
        from repartir.serialization import MAX_COPY_THREADS
    except ImportError:                         # the table of a run without repartir
        MAX_COPY_THREADS = 4
    return max(1, min(MAX_COPY_THREADS, os.cpu_count() or 1))


def _median_put(put: Callable[[np.ndarray], Any], release: Callable[[Any], None],
                arr: np.ndarray, reps: int, read_back: Callable[[Any], Any]) -> Any:
    """Median bandwidth of ``reps`` timed ``put(arr)``; after each one (untimed) the stored
    copy is read back and its checksum compared with ``arr``'s, every byte of it."""
    expect = checksum(arr)
    release(put(arr))                           # warm the store
    times = []
    for rep in range(reps):
        t0 = time.perf_counter()
        ref = put(arr)
        times.append(time.perf_counter() - t0)
        got = checksum(read_back(ref))
        if got != expect:
            raise AssertionError(f"put #{rep}: the stored copy differs from the array "
                                 f"(crc32 {got:#x}, expected {expect:#x})")
        release(ref)
        del ref
    med = statistics.median(times)
    return arr.nbytes / med / 1e9, {"bytes": arr.nbytes, "median_s": round(med, 5),
                                    "min_s": round(min(times), 5), "reps": reps,
                                    "checked": "crc32 of every byte, each rep"}


def _threaded_copy(pool: Any, dst: np.ndarray, src: np.ndarray, parts: int) -> None:
    """``np.copyto`` split into ``parts`` 64-byte-aligned chunks, one per thread (as
    repartir splits a large copy)."""
    if parts == 1:
        np.copyto(dst, src)
        return
    d, s = dst.view(np.uint8), src.view(np.uint8)
    n = d.nbytes
    step = -(-n // parts) + 63 & ~63
    for f in [pool.submit(np.copyto, d[i:i + step], s[i:i + step]) for i in range(0, n, step)]:
        f.result()


@workload("put", ("memcpy",))
def w_put_memcpy(s: Adapter, cfg: Config) -> Any:
    """The best copy this machine does: ``np.copyto`` into a warm, preallocated destination,
    split over 1, 2, ... up to :func:`copy_threads` threads; the best median wins."""
    from concurrent.futures import ThreadPoolExecutor

    arr = _array(cfg)
    dst = np.empty_like(arr)
    np.copyto(dst, arr)                         # warm the destination's pages
    by_threads = {}
    with ThreadPoolExecutor(copy_threads()) as pool:
        for k in range(1, copy_threads() + 1):
            value, extra = _median_put(lambda a: _threaded_copy(pool, dst, a, k), lambda _: None,
                                       arr, cfg.put_reps, lambda _: dst)
            by_threads[k] = (value, extra)
    best = max(by_threads, key=lambda k: by_threads[k][0])
    value, extra = by_threads[best]
    extra.update(threads=best, GBps_by_threads={str(k): round(v[0], 3)
                                                for k, v in by_threads.items()})
    return value, extra


@workload("put", ("repartir",))
def w_put_repartir(s: RepartirAdapter, cfg: Config) -> Any:
    return _median_put(s.rp.put, lambda ref: None, _array(cfg), cfg.put_reps, s.rp.get)


@workload("put", ("ray",))
def w_put_ray(s: RayAdapter, cfg: Config) -> Any:
    return _median_put(s.ray.put, lambda ref: None, _array(cfg), cfg.put_reps, s.ray.get)


@workload("put", ("dask",))
def w_put_dask(s: DaskAdapter, cfg: Config) -> Any:
    def release(fut: Any) -> None:
        s.client.cancel(fut)
    value, extra = _median_put(lambda a: s.client.scatter(a, hash=False), release, _array(cfg),
                               cfg.put_reps, lambda fut: fut.result())
    extra["measured"] = "client.scatter(hash=False) to one worker"
    return value, extra


def _median_get(run_one: Callable[[np.ndarray], tuple[float, int]], arr: np.ndarray,
                reps: int) -> tuple[float, float]:
    """Median seconds of ``reps`` timed gets after one warm-up; each one's checksum of the
    whole array it got must equal ``arr``'s."""
    expect = checksum(arr)
    run_one(arr)
    times = []
    for rep in range(reps):
        dt, got = run_one(arr)
        if got != expect:
            raise AssertionError(f"get #{rep} returned a wrong array: crc32 {got:#x}, "
                                 f"expected {expect:#x}")
        times.append(dt)
    return statistics.median(times), min(times)


def _get_workload(run_one: Callable[[np.ndarray], tuple[float, int]], cfg: Config) -> Any:
    big = _array(cfg)
    med, best = _median_get(run_one, big, cfg.get_reps)
    small_med, _ = _median_get(run_one, _array(cfg, MIB // 8), cfg.get_reps)
    return med * 1e6, {"bytes": big.nbytes, "min_us": round(best * 1e6, 1),
                       "us_at_1MiB": round(small_med * 1e6, 1), "reps": cfg.get_reps,
                       "checked": "crc32 of every byte, each rep"}


@workload("get", ("repartir",))
def w_get_repartir(s: RepartirAdapter, cfg: Config) -> Any:
    def run_one(arr: np.ndarray) -> tuple[float, int]:
        ref = s.rp.put(arr)
        # the task receives the ref still pickled: its unpickling (lookup + pin) is timed
        blob = pickle.dumps([ref], protocol=5)
        out = s.rp.get(s.submit(repartir_timed_get, blob))
        del ref                                 # held until the task is done
        return out
    return _get_workload(run_one, cfg)


@workload("get", ("ray",))
def w_get_ray(s: RayAdapter, cfg: Config) -> Any:
    def run_one(arr: np.ndarray) -> tuple[float, int]:
        ref = s.ray.put(arr)
        out = s.ray.get(s.submit(ray_timed_get, [ref]))
        del ref
        return out
    return _get_workload(run_one, cfg)


@workload("get", ("dask",))
def w_get_dask(s: DaskAdapter, cfg: Config) -> Any:
    workers = s.worker_addresses()
    holder, reader = workers[0], workers[-1]

    def run_one(arr: np.ndarray) -> tuple[float, int]:
        fut = s.client.scatter(arr, workers=[holder], hash=False)
        out = s.submit(dask_timed_get, fut.key, workers=[reader]).result()
        s.client.cancel(fut)
        return out
    value, extra = _get_workload(run_one, cfg)
    same = "" if holder != reader else " (1 worker: same)"
    extra["measured"] = ("scatter to worker A; task on worker B times Future(key).result() "
                         "via its worker client" + same)
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
    # untimed: what a task received is the whole array, every byte of it
    got = s.get(s.submit(checksum, ref))
    if got != checksum(arr):
        raise AssertionError(f"bigarg: a task received a different array (crc32 {got:#x}, "
                             f"expected {checksum(arr):#x})")
    return dt, {"tasks": n, "bytes": arr.nbytes,
                "passed": "by value (pickled)" if ref is arr else "by ref",
                "checked": "crc32 of every byte, one extra untimed task"}


FIB_TASK: dict[str, Callable[[int, int], int]] = {"repartir": rp_fib, "ray": ray_fib,
                                                   "dask": dask_fib}


def fib_tasks(n: int, leaf: int) -> int:
    """How many tasks fib(n) runs: one per call with n above ``leaf``, one per leaf."""
    a, b = 1, 1                                 # tasks(leaf - 1), tasks(leaf)
    for _ in range(leaf, n):
        a, b = b, 1 + a + b
    return b if n >= leaf else 1


@workload("fib", tuple(FIB_TASK))
def w_fib(s: Adapter, cfg: Config) -> Any:
    fn = FIB_TASK[s.name]
    n, leaf = cfg.fib_n, cfg.fib_leaf
    warm = max(leaf + 1, n - 4)
    got = s.get(s.submit(fn, warm, leaf))
    if got != fib_serial(warm):
        raise AssertionError(f"fib({warm}) returned {got}, expected {fib_serial(warm)}")
    with PeakWorkers(s) as pw:
        t0 = time.perf_counter()
        got = s.get(s.submit(fn, n, leaf))
        dt = time.perf_counter() - t0
    expect = fib_serial(n)
    if got != expect:
        raise AssertionError(f"fib({n}) returned {got}, expected {expect}")
    cores = os.cpu_count() or 1
    return dt, {"n": n, "leaf": leaf, "tasks": fib_tasks(n, leaf), "warmup_n": warm,
                "cores": cores, "max_procs_goal": 2 * cores, **pw.extra()}


UNBALANCED_ALPHA, UNBALANCED_SCALE_S, UNBALANCED_CAP_S, UNBALANCED_SEED = 1.5, 0.003, 0.2, 0


def unbalanced_durations(n: int) -> np.ndarray:
    """``n`` task durations (s): Pareto α=1.5 with minimum 3 ms, capped at 200 ms, seed 0."""
    rng = np.random.default_rng(UNBALANCED_SEED)
    d = (rng.pareto(UNBALANCED_ALPHA, n) + 1.0) * UNBALANCED_SCALE_S
    return np.minimum(d, UNBALANCED_CAP_S)


@workload("unbalanced", TASK_SYSTEMS)
def w_unbalanced(s: Adapter, cfg: Config) -> Any:
    s.get_all([s.submit(spin, 0.001) for _ in range(2 * cfg.workers)])
    durations = [float(d) for d in unbalanced_durations(cfg.unbalanced_tasks)]
    total = sum(durations)
    ideal = total / cfg.workers
    t0 = time.perf_counter()
    s.get_all([s.submit(spin, d) for d in durations])
    makespan = time.perf_counter() - t0
    return makespan / ideal, {
        "tasks": len(durations), "makespan_s": round(makespan, 4), "total_work_s": round(total, 4),
        "ideal_s": round(ideal, 4), "max_task_s": round(max(durations), 4),
        "alpha": UNBALANCED_ALPHA, "scale_s": UNBALANCED_SCALE_S, "cap_s": UNBALANCED_CAP_S,
        "seed": UNBALANCED_SEED}


@workload("ctrl_c", ("repartir",))
def w_ctrl_c(s: RepartirAdapter, cfg: Config) -> Any:
    """Median latency from a SIGINT to this process (a terminal's Ctrl-C) while the main
    thread waits in ``get`` for a sleeping task, to the ``KeyboardInterrupt`` raised there."""
    import signal
    import threading

    latencies = []
    for _ in range(cfg.ctrl_c_reps):
        ref = s.submit(sleep_s, 0.5)
        sent: list[float] = []

        def interrupt() -> None:
            sent.append(time.perf_counter())
            os.kill(os.getpid(), signal.SIGINT)

        timer = threading.Timer(0.1, interrupt)
        timer.start()
        try:
            s.get(ref)
            raise AssertionError("get() returned: the SIGINT did not interrupt it")
        except KeyboardInterrupt:
            latencies.append(time.perf_counter() - sent[0])
        finally:
            timer.join()
        try:
            s.get(ref)                          # the running task ends normally
        except Exception:  # noqa: BLE001 - or was cancelled: either way it is over
            pass
    med = statistics.median(latencies)
    return med * 1e3, {"reps": len(latencies), "max_ms": round(max(latencies) * 1e3, 3)}


def _disk_write_rate(directory: str, arr: np.ndarray, n: int) -> float:
    """GB/s of writing ``arr`` ``n`` times to one new file in ``directory`` (the disk the
    spill files go to, through the page cache as they do; no fsync), the file removed."""
    import tempfile

    with tempfile.NamedTemporaryFile(dir=directory, prefix="repartir-bench-disk-") as f:
        t0 = time.perf_counter()
        for _ in range(n):
            f.write(memoryview(arr).cast("B"))
        f.flush()
        return arr.nbytes * n / (time.perf_counter() - t0) / 1e9


def _spill_round_trip(s: Adapter, cfg: Config, put: Callable[[np.ndarray], Any],
                      get: Callable[[Any], Any]) -> Any:
    """Put twice the store's size in objects of ``spill_object_mib``, each stamped with its
    index, then get and sum each one (every byte touched), in put order (the oldest were
    spilled first); untimed, every object's checksum is compared.  The value is the bytes
    over the time of both phases."""
    store = cfg.spill_store_mib * MIB
    s.restart(store)
    try:
        arr = _array(cfg, cfg.spill_object_mib * MIB // 8)
        n = 2 * store // arr.nbytes
        expect = []
        for i in range(n):                      # untimed: the checksum of each object
            arr[0] = i
            expect.append(checksum(arr))
        put(arr)                                # warm-up, released at once
        t0 = time.perf_counter()
        refs = []
        for i in range(n):
            arr[0] = i
            refs.append(put(arr))
        t_put = time.perf_counter() - t0
        spilled = getattr(s, "spilled_bytes", lambda: None)()
        t0 = time.perf_counter()
        sums = [float(get(r).sum()) for r in refs]
        t_get = time.perf_counter() - t0
        for i, r in enumerate(refs):
            got = checksum(get(r))
            if got != expect[i]:
                raise AssertionError(f"spill: object {i} came back different (crc32 {got:#x}, "
                                     f"expected {expect[i]:#x})")
        if len(sums) != n:
            raise AssertionError("spill: not every object was read back")
        del refs
        total = arr.nbytes * n
        return total / (t_put + t_get) / 1e9, {
            "bytes": total, "objects": n, "object_bytes": arr.nbytes, "store_bytes": store,
            "put_GBps": round(total / t_put / 1e9, 3), "get_GBps": round(total / t_get / 1e9, 3),
            "spilled_bytes_after_puts": spilled,
            "disk_write_GBps": round(_disk_write_rate(s.spill_root(), arr, n // 2), 3),
            "checked": "crc32 of every byte of every object"}
    finally:
        s.restart(None)


@workload("spill", ("repartir",))
def w_spill_repartir(s: RepartirAdapter, cfg: Config) -> Any:
    return _spill_round_trip(s, cfg, s.rp.put, s.rp.get)


@workload("spill", ("ray",))
def w_spill_ray(s: RayAdapter, cfg: Config) -> Any:
    return _spill_round_trip(s, cfg, s.ray.put, s.ray.get)
