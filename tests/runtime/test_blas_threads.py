"""BLAS threads follow the CPUs of what runs (``repartir/runtime/threads.py``): as Ray sets
``OMP_NUM_THREADS``, a task of ``num_cpus=n`` runs numpy's BLAS at ``max(1, floor(n))``
threads -- in pooled workers that run tasks of every size one after another -- and an actor
at its own ``num_cpus``; a value the user set in the driver's environment is left alone.

The limit is read inside the task with ``threadpoolctl.threadpool_info()`` while a matrix
product runs there (numpy's OpenBLAS is loaded in every worker).  The node has 3 CPUs so
that a 3-CPU task's limit (3) differs from OpenBLAS's own default on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import repartir
from repartir.config import BLAS_THREAD_VARIABLES

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def managed(node):
    """A 3-CPU node started from an environment that sets no thread variable."""
    with pytest.MonkeyPatch.context() as mp:
        for name in BLAS_THREAD_VARIABLES:
            mp.delenv(name, raising=False)
        yield node(num_cpus=3, memory=1 << 30)


@repartir.remote
def blas_matmul(n: int = 300):
    """A BLAS-heavy task: returns its product's checksum, the BLAS pools' thread counts
    seen while it ran, OMP_NUM_THREADS and its pid."""
    import threadpoolctl

    rng = np.random.default_rng(n)
    a, b = rng.random((n, n)), rng.random((n, n))
    c = a @ b
    threads = sorted({d["num_threads"] for d in threadpoolctl.threadpool_info()
                      if d["user_api"] == "blas"})
    return float(c.sum()), threads, os.environ.get("OMP_NUM_THREADS"), os.getpid()


def expected_sum(n: int = 300) -> float:
    rng = np.random.default_rng(n)
    a, b = rng.random((n, n)), rng.random((n, n))
    return float((a @ b).sum())


def check(result, threads: int) -> int:
    total, seen, omp, pid = result
    assert total == pytest.approx(expected_sum()), "the product is wrong"
    assert seen == [threads], f"BLAS ran at {seen} threads, expected {threads}"
    assert omp == str(threads)
    return pid


@pytest.mark.parametrize("num_cpus, threads", [(1, 1), (2, 2), (3, 3), (0.5, 1), (1.5, 1),
                                                (0, 1)])
def test_a_task_runs_blas_at_its_cpus(managed, num_cpus, threads):
    rt = managed
    check(rt.get(blas_matmul.options(num_cpus=num_cpus).remote(), timeout=60), threads)


def test_pooled_workers_switch_limits_between_tasks(managed):
    """Tasks of 1, 3 and 1 CPUs in turn: each sees its own limit, also on a worker that ran
    a task of the other size before (repeated until some worker ran both sizes)."""
    rt = managed
    sizes: dict[int, set] = {}
    for _ in range(30):
        for num_cpus in (1, 3, 1):
            pid = check(rt.get(blas_matmul.options(num_cpus=num_cpus).remote(), timeout=60),
                        num_cpus)
            sizes.setdefault(pid, set()).add(num_cpus)
        if any(len(s) == 2 for s in sizes.values()):
            break
    assert any(len(s) == 2 for s in sizes.values()), sizes


@repartir.remote(num_cpus=1)
def outer_then_inner():
    """A 1-CPU task that waits on a 2-CPU child, then runs BLAS itself: the child may run
    on this worker's stack (helping); the outer task must have its own limit back."""
    inner = repartir.get(blas_matmul.options(num_cpus=2).remote())
    return inner, blas_matmul._function()


def test_a_task_gets_its_limit_back_after_a_nested_one(managed):
    rt = managed
    inner, outer = rt.get(outer_then_inner.remote(), timeout=60)
    check(inner, 2)
    check(outer, 1)


@repartir.remote
class BlasActor:
    def run(self):
        return blas_matmul._function()


def test_an_actor_runs_blas_at_its_cpus(managed):
    rt = managed
    default, two = BlasActor.remote(), BlasActor.options(num_cpus=2).remote()
    try:
        check(rt.get(default.run.remote(), timeout=60), 1)  # as Ray: 1 without num_cpus
        check(rt.get(two.run.remote(), timeout=60), 2)
    finally:
        rt.kill(default)
        rt.kill(two)


def test_a_user_set_omp_num_threads_is_respected(node, monkeypatch):
    for name in BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    # what numpy's BLAS does with OMP_NUM_THREADS=3 in a fresh process of this machine
    probe = subprocess.run(
        [sys.executable, "-c", "import json, numpy, threadpoolctl; print(json.dumps(sorted("
         "{d['num_threads'] for d in threadpoolctl.threadpool_info() "
         "if d['user_api'] == 'blas'})))"],
        capture_output=True, text=True, check=True, env=dict(os.environ))
    natural = json.loads(probe.stdout)
    rt = node(fresh=True, num_cpus=3, memory=1 << 30)
    try:
        for num_cpus in (1, 2, 1):
            total, seen, omp, _ = rt.get(blas_matmul.options(num_cpus=num_cpus).remote(),
                                         timeout=60)
            assert total == pytest.approx(expected_sum())
            assert omp == "3"
            assert seen == natural, f"BLAS ran at {seen} threads; the user's setting gives " \
                                    f"{natural}"
    finally:
        node.close()
