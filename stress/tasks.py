"""What the benchmark harness runs inside the workers: task bodies and the actor class.

Workers import this module by name (``stress.tasks``: the harness puts the project root on
``PYTHONPATH`` and every system hands its workers the driver's path), so functions and the actor
class travel by reference. It imports nothing heavy at import time -- a worker of any system loads
it for its first task, inside ``init``'s timing -- and the system modules only inside the bodies
that need them.

The recursive ``fib`` bodies make their own remote handle once per process (:func:`_remote_self`):
``rp_fib`` and ``ray_fib`` are the ``@remote`` function calling itself, ``dask_fib`` submits its
children through the worker's client and ``secede``\\ s while it waits, as Dask advises for tasks
that launch tasks.
"""

from __future__ import annotations

import time
from typing import Any, Callable

# ---------------------------------------------------------------------------------------------
# init, tiny, bigarg, get
# ---------------------------------------------------------------------------------------------


def noop() -> None:
    return None


def checksum(a: Any) -> int:
    """CRC-32 of every byte of the contiguous array ``a``: a torn or stale chunk anywhere in
    it changes the value (first and last elements alone would not see a middle chunk)."""
    import zlib

    return zlib.crc32(memoryview(a).cast("B"))


def read_ends(a: Any) -> float:
    return float(a[0] + a[-1])


def rendezvous(directory: str, n: int, timeout: float = 120.0) -> int:
    """Record this process in ``directory`` and wait until ``n`` distinct processes have:
    ``n`` of these tasks on ``n`` workers end only once all ``n`` workers run at once (the
    ``init`` workload's definition of "all workers ready"). Returns this process's pid."""
    import os

    pid = os.getpid()
    open(os.path.join(directory, str(pid)), "w").close()
    end = time.monotonic() + timeout
    while len(os.listdir(directory)) < n:
        if time.monotonic() > end:
            raise TimeoutError(f"only {len(os.listdir(directory))} of {n} workers ran at once "
                               f"within {timeout:.0f} s")
        time.sleep(0.0005)
    return pid


def repartir_timed_get(blob: bytes) -> tuple[float, int]:
    """Runs in a repartir worker: (seconds from a pickled ``[ref]`` in hand to a usable array,
    the array's :func:`checksum`). Unpickling a repartir ref is where a borrower looks up the
    object's location and pins its block, so it is inside the clock, as ``ray.get``'s lookup
    and pin are."""
    import pickle

    import repartir

    t0 = time.perf_counter()
    refs = pickle.loads(blob)
    a = repartir.get(refs[0])
    dt = time.perf_counter() - t0
    return dt, checksum(a)


def ray_timed_get(refs: list) -> tuple[float, int]:
    """Runs in a Ray worker: (seconds spent in ``ray.get`` of a nested ref, the checksum).
    The ref's deserialization (untimed, before the body runs) only records the borrow;
    ``ray.get`` asks the store for the object, pins its buffer and builds the view."""
    import ray

    t0 = time.perf_counter()
    a = ray.get(refs[0])
    dt = time.perf_counter() - t0
    return dt, checksum(a)


def dask_timed_get(key: str) -> tuple[float, int]:
    """Runs in a Dask worker: (seconds to fetch the scattered ``key`` through the worker
    client, the checksum)."""
    from distributed import Future, get_client

    # A Future rebuilt from its key (state "memory": the scatter has finished) and bound to this
    # worker's client; result() gathers the value from the worker that holds it.
    fut = Future(key, get_client(), state="memory")
    t0 = time.perf_counter()
    a = fut.result()
    dt = time.perf_counter() - t0
    return dt, checksum(a)


# ---------------------------------------------------------------------------------------------
# unbalanced, ctrl_c
# ---------------------------------------------------------------------------------------------


def sleep_s(seconds: float) -> float:
    """Sleep ``seconds``; returns them."""
    time.sleep(seconds)
    return seconds


def spin(seconds: float) -> float:
    """Busy-loop on ``time.perf_counter`` for ``seconds`` (never sleeps); returns ``seconds``."""
    pc = time.perf_counter
    end = pc() + seconds
    while pc() < end:
        pass
    return seconds


# ---------------------------------------------------------------------------------------------
# fib
# ---------------------------------------------------------------------------------------------


def fib_serial(n: int) -> int:
    return n if n < 2 else fib_serial(n - 1) + fib_serial(n - 2)


_REMOTE: dict[Callable[..., Any], Any] = {}


def _remote_self(make: Callable[[Callable[..., Any]], Any], fn: Callable[..., Any]) -> Any:
    """``make(fn)`` (``repartir.remote``, ``ray.remote``), made once per process."""
    r = _REMOTE.get(fn)
    if r is None:
        r = _REMOTE[fn] = make(fn)
    return r


def rp_fib(n: int, leaf: int) -> int:
    """fib(n) as repartir tasks: above ``leaf``, two child tasks and ``repartir.get`` on both."""
    if n <= leaf:
        return fib_serial(n)
    import repartir

    me = _remote_self(repartir.remote, rp_fib)
    return sum(repartir.get([me.remote(n - 1, leaf), me.remote(n - 2, leaf)]))


def ray_fib(n: int, leaf: int) -> int:
    """fib(n) as Ray tasks: above ``leaf``, two child tasks and ``ray.get`` on both."""
    if n <= leaf:
        return fib_serial(n)
    import ray

    me = _remote_self(ray.remote, ray_fib)
    return sum(ray.get([me.remote(n - 1, leaf), me.remote(n - 2, leaf)]))


def dask_fib(n: int, leaf: int) -> int:
    """fib(n) as Dask tasks: above ``leaf``, two child tasks submitted through the worker's
    client (``get_client``); the task ``secede``\\ s from the worker's thread pool while it
    waits for them and ``rejoin``\\ s afterwards. ``pure=False``: every call is a task of its
    own, as with the other systems (Dask would otherwise share equal sub-calls by key)."""
    if n <= leaf:
        return fib_serial(n)
    from distributed import get_client, rejoin, secede

    client = get_client()
    futs = [client.submit(dask_fib, n - 1, leaf, pure=False),
            client.submit(dask_fib, n - 2, leaf, pure=False)]
    secede()
    try:
        return sum(client.gather(futs))
    finally:
        rejoin()


# ---------------------------------------------------------------------------------------------
# actor_sync, actor_async
# ---------------------------------------------------------------------------------------------


class NoopActor:
    """An actor whose method ``m`` does nothing."""

    def m(self) -> None:
        return None
