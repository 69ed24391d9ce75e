"""The ``memory`` resource, as Ray's: bytes a task reserves while it runs and an actor while
it lives (``@remote(memory=...)``, ``.options(memory=...)``), for scheduling only -- nothing
limits what a process uses.  The node's total is ``init(memory=...)``, else the memory
available at start less the object store (``repartir/config.py``); ``cluster_resources()``
and ``available_resources()`` show it in bytes.
"""

from __future__ import annotations


import pytest

import repartir
from repartir import config
from rtsupport import wait_file, wait_until
from sessionsupport import max_overlap, rendezvous

pytestmark = pytest.mark.timeout(120)

GiB = 1 << 30
MiB = 1 << 20
NODE = dict(num_cpus=2, memory=4 * GiB)


@repartir.remote
def meet(directory: str, name: str, k: int, wait_s: float):
    return rendezvous(directory, name, k, wait_s)


#: holds its GiB of memory until ``flag`` exists (True) or ``deadline_s`` passes (False)
hold_until = repartir.remote(memory=GiB)(wait_file)


def free_memory(rt) -> float:
    return rt.available_resources()["memory"]


def test_init_memory_is_the_nodes_total(node):
    rt = node(**NODE)
    assert rt.cluster_resources()["memory"] == 4 * GiB
    assert rt.nodes()[0]["Resources"]["memory"] == 4 * GiB
    assert wait_until(lambda: free_memory(rt) == 4 * GiB, timeout=10), free_memory(rt)


def test_a_running_task_holds_its_memory(node, tmp_path):
    rt = node(**NODE)
    flag = tmp_path / "go"
    ref = hold_until.remote(str(flag), 30.0)
    try:
        assert wait_until(lambda: free_memory(rt) == 3 * GiB, timeout=20), free_memory(rt)
    finally:
        flag.touch()
    assert rt.get(ref, timeout=30) is True
    assert wait_until(lambda: free_memory(rt) == 4 * GiB, timeout=10), free_memory(rt)


def test_tasks_that_do_not_fit_together_do_not_overlap(node, tmp_path):
    node(**NODE)
    big = meet.options(memory=3 * GiB)
    refs = [big.remote(str(tmp_path), str(i), 2, 0.5) for i in range(2)]
    intervals = repartir.get(refs, timeout=60)
    assert max_overlap(intervals) == 1, intervals


def test_tasks_that_fit_together_overlap(node, tmp_path):
    node(**NODE)
    half = meet.options(memory=2 * GiB)
    refs = [half.remote(str(tmp_path), str(i), 2, 6.0) for i in range(2)]
    intervals = repartir.get(refs, timeout=60)
    assert max_overlap(intervals) == 2, intervals


@repartir.remote(memory=3 * GiB)
class Cache:
    def ping(self):
        return "pong"


def test_an_actor_holds_its_memory_while_it_lives(node):
    rt = node(**NODE)
    cache = Cache.remote()
    assert rt.get(cache.ping.remote(), timeout=60) == "pong"
    assert free_memory(rt) == 1 * GiB
    rt.kill(cache)
    assert wait_until(lambda: free_memory(rt) == 4 * GiB, timeout=20), free_memory(rt)


def test_a_request_larger_than_the_node_is_infeasible(node):
    rt = node(**NODE)
    with pytest.raises(repartir.InfeasibleTaskError, match="memory"):
        meet.options(memory=5 * GiB).remote("x", "y", 1, 0.0)
    with pytest.raises(repartir.InfeasibleTaskError, match="memory"):
        Cache.options(memory=5 * GiB).remote()
    assert rt.get(hold_until.options(memory=0).remote("/", 1.0), timeout=30) is True


@pytest.mark.parametrize("bad", [-1, "1GiB", True])
def test_bad_memory_values_are_refused(bad):
    with pytest.raises(ValueError, match="memory"):
        meet.options(memory=bad)
    with pytest.raises(ValueError, match="memory"):
        Cache.options(memory=bad)


def test_memory_is_not_a_custom_resource(node):
    node(**NODE)
    with pytest.raises(ValueError, match="memory="):
        meet.options(resources={"memory": 1}).remote("x", "y", 1, 0.0)
    with pytest.raises(ValueError, match="memory="):
        config.resolve(num_cpus=1, object_store_memory=64 * MiB, resources={"memory": 1})


# --------------------------------------------------------------------- the node's total


def test_default_is_available_memory_less_the_object_store(monkeypatch):
    monkeypatch.delenv("REPARTIR_MEMORY", raising=False)
    monkeypatch.setattr(config, "available_memory", lambda: 10 * GiB)
    cfg = config.resolve(num_cpus=1, object_store_memory=3 * GiB, num_gpus=0)
    assert cfg.memory == 7 * GiB
    monkeypatch.setattr(config, "available_memory", lambda: 2 * GiB)
    assert config.resolve(num_cpus=1, object_store_memory=3 * GiB, num_gpus=0).memory == 0


def test_memory_from_argument_then_environment(monkeypatch):
    monkeypatch.setenv("REPARTIR_MEMORY", str(5 * GiB))
    assert config.resolve(num_cpus=1, object_store_memory=64 * MiB, num_gpus=0).memory \
        == 5 * GiB
    assert config.resolve(num_cpus=1, object_store_memory=64 * MiB, num_gpus=0,
                          memory=GiB).memory == GiB
    with pytest.raises(ValueError, match="memory"):
        config.resolve(num_cpus=1, object_store_memory=64 * MiB, num_gpus=0, memory=-1)


def test_available_memory_is_plausible():
    avail = config.available_memory()
    total = config._total_memory()
    assert 0 < avail <= total, (avail, total)
