"""BLAS and OpenMP thread pools sized to the CPUs of what a process runs, as Ray does with
``OMP_NUM_THREADS`` (``docs/architecture.md``, "Resources and priorities").

Left alone, numpy's BLAS (OpenBLAS, MKL) starts one thread per core in *every* worker, so a
node of N workers running matrix products runs N x N threads on N cores.  So:

* The node starts every worker and actor with the variables of
  :data:`~repartir.config.BLAS_THREAD_VARIABLES` set to the CPUs it runs with: 1 for a worker
  (a default task asks for one CPU), ``max(1, floor(num_cpus))`` for an actor.  numpy reads
  them when it loads, which in a worker is before any task runs.
* Workers are pooled and run tasks of any ``num_cpus``: before a task whose CPU count differs
  from the limit in effect, the worker sets the variables again (for libraries loaded later)
  and calls ``threadpoolctl.threadpool_limits`` on the libraries already loaded (about 0.3 ms;
  a run of tasks of one size costs nothing).  A task run on the stack of a task waiting in
  ``get`` gives the waiting task its limit back when it ends.
* When the driver's environment sets any of those variables, the user chose: nothing is set
  or limited, in any process.
"""

from __future__ import annotations

import os
from typing import Mapping

from ..config import BLAS_THREAD_VARIABLES

__all__ = ["user_set", "threads_for", "spawn_env", "ThreadLimit"]


def user_set(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` sets any of :data:`BLAS_THREAD_VARIABLES` (to a non-empty value)."""
    return any(environ.get(name) for name in BLAS_THREAD_VARIABLES)


def threads_for(milli_cpus: int) -> int:
    """Threads for a task or actor of ``milli_cpus`` / 1000 CPUs: ``max(1, floor(num_cpus))``
    (a fraction of a CPU, or none, still runs one thread)."""
    return max(1, int(milli_cpus) // 1000)


def spawn_env(threads: int) -> dict[str, str]:
    """The variables to add to the environment of a process that starts with ``threads``."""
    return {name: str(threads) for name in BLAS_THREAD_VARIABLES}


class ThreadLimit:
    """The thread limit in effect in one worker process.

    Args:
        current: the limit the process started with (see :func:`spawn_env`), or ``None``
            when the user set the variables: then :meth:`set` does nothing.
    """

    __slots__ = ("current",)

    def __init__(self, current: int | None) -> None:
        self.current = current

    def set(self, threads: int) -> None:
        """Make ``threads`` the limit of every BLAS and OpenMP pool of this process (loaded
        now, or loaded later through the environment)."""
        if self.current is None or threads == self.current:
            return
        for name in BLAS_THREAD_VARIABLES:
            os.environ[name] = str(threads)
        from threadpoolctl import threadpool_limits  # (loaded at the first change only)
        threadpool_limits(limits=threads)
        self.current = threads
