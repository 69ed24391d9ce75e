"""``@remote(max_calls=n)``, as Ray's: a worker process that has run the function ``n`` times
exits once that call is done, and the node starts another (for functions that leak memory
or native resources).  The default, 0, is no limit; ``.options()`` cannot change it (as in
Ray).  A worker that still owns objects others hold refs to stays until they are released,
runs nothing meanwhile, and does not leave the node short of a worker.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import psutil
import pytest

import repartir
from rtsupport import wait_file, wait_until

pytestmark = pytest.mark.timeout(120)


@repartir.remote(max_calls=2)
def pid_twice(i):
    return os.getpid()


@repartir.remote
def pid_unlimited(i):
    return os.getpid()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_worker_runs_the_function_at_most_max_calls_times(node):
    rt = node(num_cpus=2)
    pids = rt.get([pid_twice.remote(i) for i in range(6)], timeout=90)
    counts = collections.Counter(pids)
    assert len(counts) >= 3, counts
    assert max(counts.values()) <= 2, counts
    # every worker that reached the limit exits, and the node is back to two workers
    assert wait_until(lambda: all(gone(p) for p in counts), timeout=30), \
        [p for p in counts if not gone(p)]
    assert wait_until(lambda: len(rt._driver.worker_pids()) == 2
                      and not set(counts) & set(rt._driver.worker_pids()), timeout=30), \
        (counts, rt._driver.worker_pids())


def test_other_functions_do_not_count(node):
    rt = node(num_cpus=2)
    pids = rt.get([pid_unlimited.remote(i) for i in range(20)], timeout=60)
    assert all(not gone(p) for p in set(pids)), pids  # no limit: the workers stay


def test_options_keep_the_limit(node):
    rt = node(num_cpus=2)
    pids = rt.get([pid_twice.options(num_cpus=0.5).remote(i) for i in range(6)], timeout=90)
    assert max(collections.Counter(pids).values()) <= 2, pids


def test_options_cannot_change_max_calls():
    with pytest.raises(ValueError, match="max_calls"):
        pid_twice.options(max_calls=5)
    with pytest.raises(ValueError, match="max_calls"):
        pid_unlimited.options(max_calls=1)
    assert pid_twice.options(max_calls=2, num_cpus=1) is not None  # unchanged: accepted


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_bad_max_calls_are_refused(bad):
    with pytest.raises(ValueError, match="max_calls"):
        repartir.remote(max_calls=bad)(lambda: None)


@repartir.remote(num_cpus=0)  # (so that it leaves the node's one CPU to the other tasks)
def wait_for(flag: str) -> int:
    wait_file(flag, 60)
    return 7


@repartir.remote(max_calls=1)
def lend_pending(flag: str):
    """Returns a ref to a pending result this worker owns: the worker must stay, serving
    it, until the driver's ref is gone."""
    return [wait_for.remote(flag)], os.getpid()


def test_a_retiring_worker_serves_what_it_owns_and_leaves_no_node_short(node, tmp_path):
    rt = node(num_cpus=1)  # its only worker retires: the queued tasks need another one
    flag = tmp_path / "go"
    (inner,), pid = rt.get(lend_pending.remote(str(flag)), timeout=60)
    assert not gone(pid)  # it owns the pending object
    others = rt.get([pid_unlimited.remote(i) for i in range(4)], timeout=60)  # not stuck
    assert pid not in others, "a retiring worker ran another task"
    Path(flag).touch()
    assert rt.get(inner, timeout=60) == 7
    assert not gone(pid)  # the driver still holds a ref to what it owns
    del inner
    assert wait_until(lambda: gone(pid), timeout=30), "the worker did not exit"
    assert wait_until(lambda: len(rt._driver.worker_pids()) >= 1, timeout=30)
    assert rt.get(pid_unlimited.remote(0), timeout=60) != pid
