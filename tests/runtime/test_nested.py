"""Nested tasks (DESIGN.md §4, issue 3 item 1): a task submits tasks and ``get``s them.

A worker blocked in ``get`` runs queued tasks meanwhile and lends its CPU; the node may start
extra workers, but never more than the cap (``2 x num_cpus`` processes).  Checked here:

- recursive ``fib`` in the benchmark's shape (``fib(22)``, tasks above ``n = 14`` submit two
  children and ``get`` them) and fully recursive ``fib`` down to ``n < 2``, with one worker
  and with two, giving the right value;
- the peak number of live child processes of the driver (sampled with psutil while the
  recursion runs) never exceeds ``2 x num_cpus``;
- a remote function calling itself by name, also when it is defined inside another function;
- refs made by the driver, passed down through nested tasks, read at the bottom.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import repartir
from repartir.runtime import driver
from rtsupport import wait_until
from sessionsupport import PeakChildren, Sessions

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def node(_leaves_nothing_behind):
    """Sessions for this module (``node(num_cpus=n)``); shut down at its end, after which
    the conftest checks that no worker process and no /dev/shm entry is left."""
    sessions = Sessions(_leaves_nothing_behind)
    yield sessions
    sessions.close()


# --------------------------------------------------------------------------- remote functions


def fib_local(n: int) -> int:
    return n if n < 2 else fib_local(n - 1) + fib_local(n - 2)


@repartir.remote
def fib_bench(n: int, cutoff: int = 14) -> int:
    """BENCHMARKS.md ``fib``: above ``cutoff``, submit two children and get them."""
    if n <= cutoff:
        return fib_local(n)
    return sum(repartir.get([fib_bench.remote(n - 1, cutoff), fib_bench.remote(n - 2, cutoff)]))


@repartir.remote
def fib(n: int) -> int:
    """Fully recursive: every call with ``n >= 2`` is two nested tasks."""
    if n < 2:
        return n
    a, b = repartir.get([fib.remote(n - 1), fib.remote(n - 2)])
    return a + b


@repartir.remote
def chain(n: int) -> int:
    """A chain of ``n`` nested tasks, each blocked in get on the next."""
    if n == 0:
        return 0
    return 1 + repartir.get(chain.remote(n - 1))


@repartir.remote
def tree_sum(boxed, depth: int) -> float:
    """Receives ``[ref]`` (a ref nested in a list: not resolved), passes it down, and the
    leaves read the array through it."""
    if depth == 0:
        return float(repartir.get(boxed[0]).sum())
    return sum(repartir.get([tree_sum.remote(boxed, depth - 1) for _ in range(2)]))


@repartir.remote
def whoami() -> int:
    return os.getpid()


# --------------------------------------------------------------------------- fib


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_fib_benchmark_shape(node, num_cpus):
    rt = node(num_cpus=num_cpus)
    with PeakChildren() as peak:
        assert rt.get(fib_bench.remote(22), timeout=90) == fib_local(22) == 17711
    assert peak.peak <= 2 * num_cpus, (
        f"{peak.peak} child processes at once with num_cpus={num_cpus} "
        f"(cap 2 x num_cpus = {2 * num_cpus}); pids seen: {sorted(peak.pids)}")


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_fib_fully_recursive(node, num_cpus):
    """Every call above the leaves is a nested task: 12 levels of tasks blocked in get."""
    rt = node(num_cpus=num_cpus)
    with PeakChildren() as peak:
        assert rt.get(fib.remote(12), timeout=90) == 144
    assert peak.peak <= 2 * num_cpus, (
        f"{peak.peak} child processes at once with num_cpus={num_cpus}; "
        f"pids seen: {sorted(peak.pids)}")


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_worker_pids_stay_within_cap_during_recursion(node, num_cpus):
    """The node's own view (``worker_pids()``) agrees: never more than the cap."""
    rt = node(num_cpus=num_cpus)

    seen = 0
    ref = fib_bench.remote(20, 12)
    deadline = time.monotonic() + 90
    while True:
        seen = max(seen, len(driver.worker_pids()))
        ready, _ = rt.wait([ref], timeout=0.005)
        if ready or time.monotonic() > deadline:
            break
    assert rt.get(ref, timeout=1) == 6765
    assert seen <= 2 * num_cpus


def test_many_concurrent_recursions_one_worker(node):
    """Several independent recursions at once on one worker: all finish, cap kept."""
    rt = node(num_cpus=1)
    with PeakChildren() as peak:
        refs = [fib_bench.remote(n, 12) for n in range(13, 19)]
        assert rt.get(refs, timeout=90) == [fib_local(n) for n in range(13, 19)]
    assert peak.peak <= 2


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_chain_within_nesting_of_one_worker(node, num_cpus):
    rt = node(num_cpus=num_cpus)
    assert rt.get(chain.remote(10), timeout=60) == 10


def test_nested_tasks_read_driver_object(node):
    rt = node(num_cpus=2)
    a = np.arange(100_000, dtype=np.float64)
    ref = rt.put(a)
    assert rt.get(tree_sum.remote([ref], 3), timeout=60) == pytest.approx(8 * a.sum())


def test_nested_task_errors_propagate_up(node):
    rt = node(num_cpus=2)

    @repartir.remote
    def leaf(n):
        if n == 0:
            raise ValueError("bottom of the recursion")
        return repartir.get(leaf.remote(n - 1))

    with pytest.raises(ValueError, match="bottom of the recursion"):
        rt.get(leaf.remote(3), timeout=60)
    assert rt.get(fib_bench.remote(15, 13), timeout=60) == 610  # still usable


# --------------------------------------------------------------------------- self-recursion


def make_countdown():
    @repartir.remote
    def countdown(n):
        if n == 0:
            return ["done"]
        return [n] + repartir.get(countdown.remote(n - 1))

    return countdown


def test_self_recursion_of_function_defined_inside_a_function(node):
    rt = node(num_cpus=2)
    countdown = make_countdown()
    assert rt.get(countdown.remote(5), timeout=60) == [5, 4, 3, 2, 1, "done"]


def test_self_recursion_of_function_defined_inside_the_test(node):
    rt = node(num_cpus=1)

    @repartir.remote
    def inner_fib(n):
        if n < 2:
            return n
        return sum(repartir.get([inner_fib.remote(n - 1), inner_fib.remote(n - 2)]))

    assert rt.get(inner_fib.remote(10), timeout=60) == 55


def test_self_recursion_through_options(node):
    """A function that calls itself through ``.options(...)`` (a copy with other options)."""
    rt = node(num_cpus=2)

    @repartir.remote
    def down(n):
        if n == 0:
            return 0
        return 1 + repartir.get(down.options(priority="high").remote(n - 1))

    assert rt.get(down.remote(6), timeout=60) == 6


def test_extra_workers_retire_after_recursion(node):
    """Extra workers started for blocked ones go away when idle; the node keeps its
    ``num_cpus`` workers and stays usable."""
    rt = node(num_cpus=1)

    assert rt.get(fib_bench.remote(20, 12), timeout=60) == 6765
    assert wait_until(lambda: len(driver.worker_pids()) == 1, timeout=15), driver.worker_pids()
    assert rt.get(whoami.remote(), timeout=30) in driver.worker_pids()


# --------------------------------------------------------------------------- deep recursion
# (last in the module: each starts a fresh session and closes it, so that tasks stuck by a
# deadlock -- a regression -- cannot hold the workers of other tests)


def test_deep_chain_one_worker_does_not_deadlock(node):
    """40 tasks, each blocked in get on the next: deeper than one worker's early nesting
    limit (15) times the cap of 2 processes."""
    rt = node(num_cpus=1, fresh=True)
    try:
        with PeakChildren() as peak:
            assert rt.get(chain.remote(40), timeout=20) == 40
        assert peak.peak <= 2
    finally:
        node.close()  # stuck tasks would hold the workers of later tests


def test_deep_fib_two_workers_does_not_deadlock(node):
    rt = node(num_cpus=2, fresh=True)
    try:
        with PeakChildren() as peak:
            assert rt.get(fib.remote(20), timeout=30) == 6765
        assert peak.peak <= 4
    finally:
        node.close()


def test_very_deep_chain_one_worker(node):
    """300 nested levels on one worker (the worker runs each next task on its own stack)."""
    rt = node(num_cpus=1, fresh=True)
    try:
        with PeakChildren() as peak:
            assert rt.get(chain.remote(300), timeout=60) == 300
        assert peak.peak <= 2
    finally:
        node.close()
