"""``repartir.init(num_cpus=0)``: a driver that only submits (``docs/architecture.md``,
"Resources and priorities").

As in Ray, the node has no CPU: a task or actor that asks for CPU can never be placed on it,
which repartir reports as it reports every infeasible demand, ``InfeasibleTaskError`` at
``.remote()`` (the message says why and what to do); tasks and actors of ``num_cpus=0`` still
run, on workers the node starts when such a task is queued and that retire when idle.
"""

from __future__ import annotations

import os

import pytest

import repartir
from rtsupport import wait_until
from sessionsupport import Sessions

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def zero(_leaves_nothing_behind):
    sessions = Sessions(_leaves_nothing_behind)
    yield lambda: sessions(num_cpus=0)
    sessions.close()


@repartir.remote
def one_cpu(x):
    return x


@repartir.remote(num_cpus=0)
def double(x):
    return 2 * x, os.getpid()


@repartir.remote(num_cpus=0)
def tree(n):
    """A zero-CPU task that waits on zero-CPU children (its worker helps with them)."""
    if n <= 1:
        return n
    return sum(repartir.get([tree.remote(n - 1), tree.remote(n - 2)]))


@repartir.remote
class Counter:  # actors ask for no CPU by default
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n


def test_init_reports_no_cpu(zero):
    info = zero().init(num_cpus=0, ignore_reinit_error=True)
    assert info["num_cpus"] == 0
    total = repartir.cluster_resources()
    assert "CPU" not in total, total  # as Ray: a resource the node does not have is absent
    assert total["memory"] > 0 and total["object_store_memory"] > 0
    assert "CPU" not in repartir.available_resources()


def test_no_worker_runs_before_a_task_asks(zero):
    rt = zero()
    assert wait_until(lambda: rt._driver.worker_pids() == [], timeout=30), \
        rt._driver.worker_pids()


def test_a_task_that_needs_a_cpu_is_infeasible(zero):
    rt = zero()
    with pytest.raises(repartir.InfeasibleTaskError, match=r"num_cpus=0"):
        one_cpu.remote(1)
    with pytest.raises(repartir.InfeasibleTaskError, match=r"num_cpus=0"):
        one_cpu.options(num_cpus=0.5).remote(1)
    assert rt.get(double.remote(4), timeout=60)[0] == 8  # the session is still usable


def test_an_actor_that_needs_a_cpu_is_infeasible(zero):
    zero()
    with pytest.raises(repartir.InfeasibleTaskError, match=r"num_cpus=0"):
        Counter.options(num_cpus=1).remote()


def test_zero_cpu_tasks_run_on_workers(zero):
    rt = zero()
    results = rt.get([double.remote(i) for i in range(8)], timeout=60)
    assert [r[0] for r in results] == [2 * i for i in range(8)]
    assert os.getpid() not in {r[1] for r in results}  # not in the driver


def test_zero_cpu_tasks_wait_on_zero_cpu_children(zero):
    rt = zero()
    assert rt.get(tree.remote(7), timeout=90) == 13


def test_zero_cpu_actor_runs(zero):
    rt = zero()
    c = Counter.remote()
    assert rt.get([c.add.remote(1) for _ in range(20)], timeout=60)[-1] == 20
    rt.kill(c)


def test_idle_workers_retire(zero):
    rt = zero()
    assert rt.get(double.remote(1), timeout=60)[0] == 2
    assert wait_until(lambda: rt._driver.worker_pids() == [], timeout=60), \
        rt._driver.worker_pids()
