"""The systems the benchmark harness drives: one :class:`Adapter` per system, and the run's sizes.

Each adapter is the small common surface the generic workloads of :mod:`stress.workloads` use:

========= ================================================================= =====================
name       runtime                                                           tasks / actors
========= ================================================================= =====================
repartir   ``repartir.init(num_cpus=workers)``                               ``repartir.remote``
memcpy     none: the physical reference for ``put``                          –
multipro-  ``multiprocessing.Pool(workers)`` (``spawn`` unless ``--mp-start``) ``apply_async``
cessing
ray        ``ray.init(num_cpus=workers)``, no dashboard                      ``ray.remote``
dask       ``distributed.LocalCluster`` (processes, ``threads_per_worker=1``) ``client.submit``
                                                                             (``pure=False``)
loky       ``loky.get_reusable_executor(max_workers=workers)``              ``executor.submit``
========= ================================================================= =====================

Only repartir and Ray have actors (:meth:`Adapter.actor`); the others raise
``NotImplementedError`` there and the registry does not run actor workloads on them.

:meth:`Adapter.is_worker` tells a worker process of the system apart from its other processes
(Ray's raylet and GCS, resource trackers, ...), for :class:`PeakWorkers`, which samples the
descendants of the driver (``psutil``) from a thread while a workload runs.

Nothing here imports a system at module import time: :meth:`Adapter.prepare` does, in the
child process that runs that system (see :mod:`stress.bench`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

MIB = 1 << 20

#: Systems in column order; ``memcpy`` is a physical reference, not a peer.
SYSTEM_ORDER = ("repartir", "memcpy", "multiprocessing", "ray", "dask", "loky")
#: The module whose presence makes a system available.
SYSTEM_MODULE = {"repartir": "repartir", "ray": "ray", "dask": "distributed", "loky": "loky"}
#: What a system is called in the table header.
SYSTEM_TITLE = {"multiprocessing": "mp.Pool"}


@dataclass(frozen=True)
class Config:
    """Sizes and counts of one run; ``quick_sizes()`` gives the small ones."""

    workers: int
    tiny_tasks: int = 20_000
    rtt_trips: int = 2_000
    array_mib: int = 256
    bigarg_tasks: int = 20
    put_reps: int = 5
    get_reps: int = 7
    fib_n: int = 22
    fib_leaf: int = 14
    unbalanced_tasks: int = 200
    actor_sync_calls: int = 2_000
    actor_async_calls: int = 20_000
    ctrl_c_reps: int = 5
    spill_store_mib: int = 1024  # the object store of the spill workload (2x goes through it)
    spill_object_mib: int = 64
    mp_start: str = "spawn"
    quick: bool = False

    @classmethod
    def quick_sizes(cls, workers: int, **kw: Any) -> "Config":
        return cls(workers=workers, tiny_tasks=2_000, rtt_trips=200, array_mib=32,
                   bigarg_tasks=5, fib_n=18, unbalanced_tasks=60, actor_sync_calls=200,
                   actor_async_calls=2_000, ctrl_c_reps=3, spill_store_mib=128,
                   spill_object_mib=16, quick=True, **kw)

    @property
    def array_len(self) -> int:
        return self.array_mib * MIB // 8


class Adapter:
    """How the generic workloads drive one system.

    ``prepare()`` imports (untimed), ``start()`` creates the runtime (timed together with the
    first no-op task as ``init``), ``submit``/``get``/``get_all`` run tasks, ``by_ref`` turns an
    array into what a task receives as its top-level argument, ``actor``/``kill_actor`` create
    and end an actor, ``stop()`` tears everything down.
    """

    name = ""
    has_tasks = True
    #: Substrings of a process's command line that make it one of this system's workers.
    worker_markers: tuple[str, ...] = ()

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

    def actor(self, cls: type, *args: Any) -> Any:
        """A handle to a new actor of ``cls``; ``handle.method.remote()`` calls it."""
        raise NotImplementedError(f"{self.name} has no actors")

    def kill_actor(self, handle: Any) -> None:
        raise NotImplementedError(f"{self.name} has no actors")

    def is_worker(self, cmdline: list[str]) -> bool:
        """Whether a descendant process with this command line is a worker of this system."""
        if not self.worker_markers:
            return True
        text = " ".join(cmdline)
        return any(m in text for m in self.worker_markers)

    def stop(self) -> None:
        pass

    def restart(self, object_store_memory: int | None) -> None:
        """Stop, then start again with an object store of ``object_store_memory`` bytes
        (``None``: the default), for the ``spill`` workload; systems with a store only."""
        raise NotImplementedError(f"{self.name} has no object store to size")

    def spill_root(self) -> str:
        """A directory on the disk this system spills objects to."""
        import tempfile

        return tempfile.gettempdir()


class RepartirAdapter(Adapter):
    name = "repartir"
    worker_markers = ("repartir.runtime.worker",)

    def prepare(self) -> None:
        import repartir

        self.rp = repartir
        self._remote: dict[Callable[..., Any], Any] = {}

    def start(self, object_store_memory: int | None = None) -> None:
        self.rp.init(num_cpus=self.workers, object_store_memory=object_store_memory)

    def restart(self, object_store_memory: int | None) -> None:
        self.rp.shutdown()
        self._remote.clear()
        self.start(object_store_memory)

    def spill_root(self) -> str:
        from repartir.runtime import driver

        return driver._node.spill_dir

    def spilled_bytes(self) -> int:
        from repartir.runtime import driver

        return driver.store_statistics().arena.spilled_bytes

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

    def actor(self, cls: type, *args: Any) -> Any:
        return self.rp.remote(cls).remote(*args)

    def kill_actor(self, handle: Any) -> None:
        self.rp.kill(handle)

    def stop(self) -> None:
        self.rp.shutdown()


class RayAdapter(Adapter):
    name = "ray"
    # "python .../default_worker.py" until the worker renames itself "ray::IDLE", "ray::fn", ...
    worker_markers = ("default_worker.py", "ray::")

    def prepare(self) -> None:
        import ray

        self.ray = ray
        self._remote: dict[Callable[..., Any], Any] = {}

    def start(self, object_store_memory: int | None = None) -> None:
        self.ray.init(num_cpus=self.workers, include_dashboard=False, logging_level="ERROR",
                      log_to_driver=False, object_store_memory=object_store_memory)
        self.extra["version"] = self.ray.__version__

    def restart(self, object_store_memory: int | None) -> None:
        self.ray.shutdown()
        self._remote.clear()
        self.start(object_store_memory)

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

    def actor(self, cls: type, *args: Any) -> Any:
        return self.ray.remote(cls).remote(*args)

    def kill_actor(self, handle: Any) -> None:
        self.ray.kill(handle)

    def stop(self) -> None:
        self.ray.shutdown()


class DaskAdapter(Adapter):
    name = "dask"
    # the nanny (in this process) starts each worker with multiprocessing's spawn
    worker_markers = ("spawn_main",)

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
    worker_markers = ("spawn_main", "forkserver")

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
    worker_markers = ("loky.backend.popen_loky_posix",)

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


class PeakWorkers:
    """Counts the live worker processes among the descendants of this process, from a thread.

    ``with PeakWorkers(adapter) as pw: ...``; then ``pw.peak`` (workers, by
    :meth:`Adapter.is_worker`), ``pw.peak_all`` (every descendant) and ``pw.samples``. Each
    sample is ``psutil.Process().children(recursive=True)``, then a sleep of ``interval``
    seconds. A process is classified by its command line; a negative answer is re-checked while
    the process is young (a just-forked process still shows its parent's command line).
    """

    def __init__(self, adapter: Adapter, interval: float = 0.003) -> None:
        import psutil

        self.psutil = psutil
        self.adapter = adapter
        self.interval = interval
        self.peak = 0
        self.peak_all = 0
        self.samples = 0
        self.sample_s = 0.0
        self._known: dict[tuple[int, float], bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-peak-workers")

    def _classify(self, p: Any) -> bool:
        try:
            key = (p.pid, p.create_time())
            known = self._known.get(key)
            if known is not None:
                return known
            verdict = self.adapter.is_worker(p.cmdline())
            if verdict or time.time() - key[1] > 2.0:
                self._known[key] = verdict
            return verdict
        except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
            return False

    def sample(self) -> None:
        t0 = time.perf_counter()
        try:
            kids = self.me.children(recursive=True)
        except self.psutil.Error:
            return
        n = sum(1 for p in kids if self._classify(p))
        self.peak = max(self.peak, n)
        self.peak_all = max(self.peak_all, len(kids))
        self.samples += 1
        self.sample_s += time.perf_counter() - t0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakWorkers":
        self.me = self.psutil.Process()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def extra(self) -> dict[str, Any]:
        return {"peak_workers": self.peak, "peak_descendants": self.peak_all,
                "samples": self.samples,
                "mean_sample_ms": round(self.sample_s / max(1, self.samples) * 1e3, 2)}
