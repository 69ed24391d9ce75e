"""Several returns, generators, cancel and futures on the loopback cluster of
``test_cluster.py`` (docs/cluster.md, "Returns, generators, cancel"): a head (``on_head: 1``)
and a node (``big_mem: 1``), one CPU each, started with the CLI; a driver in the test
process.  Large returns and items (over ``CLUSTER_INLINE_RESULT_BYTES``) stay on their
node; every test ends with nothing kept on any node for this driver."""

from __future__ import annotations

import asyncio
import gc
import os
import time

import numpy as np
import pytest

import repartir
from repartir.cluster import client as cluster_client
from repartir.errors import TaskCancelledError

from test_cluster import cluster  # noqa: F401  (the module-scoped loopback cluster)

pytestmark = pytest.mark.usefixtures("cluster")

BIG = 1 << 17  # float64s: 1 MiB, kept on its node


def stored() -> dict[str, int]:
    """Objects each node keeps for drivers, by role, from a fresh registry."""
    repartir.nodes()  # waits for a fresh registry
    client = cluster_client.active()
    with client._lock:
        return {("head" if r["Head"] else "node"): r["Stored"]
                for r in client.nodes_seen.values() if r["Alive"]}


def wait_stored(check, what: str, timeout: float = 20.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        now = stored()
        if check(now):
            return now
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s: {now}"


def nothing_kept() -> None:
    wait_stored(lambda s: not any(s.values()), "nothing kept on the nodes")


def wait_until(cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@repartir.remote(resources={"big_mem": 1})
def three(x, big=False):
    if big:
        return (np.full(BIG, x, dtype=np.float64), np.full(BIG, x + 1.0), x + 2)
    return x, x + 1, x + 2


@repartir.remote(resources={"big_mem": 1})
def count_to(n, big=False, fail_at=None, gate=None):
    for i in range(n):
        if i == fail_at:
            raise KeyError(f"failed at {i}")
        if i == 1 and gate is not None:  # the first item is out: wait for the driver
            deadline = time.monotonic() + 60
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
        yield np.full(BIG, i, dtype=np.float64) if big else i


@repartir.remote(resources={"big_mem": 1}, max_retries=0)
def sleepy(seconds, tag):
    time.sleep(seconds)
    return tag


def test_num_returns_three_one_and_zero():
    refs = three.options(num_returns=3).remote(10)
    assert isinstance(refs, list) and len(refs) == 3
    assert repartir.get(refs, timeout=60) == [10, 11, 12]
    one = three.options(num_returns=1).remote(1)
    assert repartir.get(one, timeout=60) == (1, 2, 3)
    assert three.options(num_returns=0).remote(5) is None
    a, b = count_to.options(num_returns=2).remote(2)
    assert repartir.get([b, a], timeout=60) == [1, 0]


def test_several_large_returns_are_kept_and_released_one_by_one():
    a, b, c = three.options(num_returns=3).remote(7.0, big=True)
    assert repartir.get(c, timeout=60) == 9.0
    wait_stored(lambda s: s["node"] == 2, "two returns kept on the node")
    assert float(repartir.get(a, timeout=60)[0]) == 7.0
    del a
    wait_stored(lambda s: s["node"] == 1, "one return released")
    task = repartir.remote(resources={"on_head": 1})(lambda x: float(x.sum()))
    assert repartir.get(task.remote(b), timeout=60) == 8.0 * BIG  # pulled node to node
    del b, c
    nothing_kept()


def test_a_return_dropped_before_its_task_ended_is_released():
    refs = three.options(num_returns=3).remote(1.0, big=True)
    last = refs[2]
    del refs
    assert repartir.get(last, timeout=60) == 3.0
    nothing_kept()


def test_num_returns_errors_reach_every_ref():
    bad = three.options(num_returns=2).remote(1)  # returns three values, not two
    for ref in bad:
        with pytest.raises(ValueError, match="num_returns=2"):
            repartir.get(ref, timeout=60)
    with pytest.raises(repartir.RepartirError, match="'dynamic' is not available"):
        count_to.options(num_returns="dynamic").remote(2)


def test_a_generator_streams_its_items_before_it_ends(tmp_path):
    gate = str(tmp_path / "gate")
    gen = count_to.remote(4, gate=gate)
    assert isinstance(gen, repartir.ObjectRefGenerator)
    first = next(gen)
    assert repartir.get(first, timeout=60) == 0
    assert not gen.completed()  # the generator waits for the gate: the task still runs
    open(gate, "w").close()
    assert [repartir.get(r, timeout=60) for r in gen] == [1, 2, 3]
    assert gen.completed()


def test_a_generator_that_raises_fails_at_its_item():
    gen = count_to.remote(5, fail_at=2)
    refs = list(gen)
    assert len(refs) == 3
    assert repartir.get(refs[:2], timeout=60) == [0, 1]
    with pytest.raises(KeyError, match="failed at 2"):
        repartir.get(refs[2], timeout=60)


def test_large_generator_items_and_an_early_drop_leave_nothing(tmp_path):
    gen = count_to.remote(3, big=True)
    assert [float(repartir.get(r, timeout=60)[0]) for r in gen] == [0.0, 1.0, 2.0]
    nothing_kept()
    gate = str(tmp_path / "gate")
    gen = count_to.remote(6, big=True, gate=gate)
    first = next(gen)
    del gen  # dropped: the items that still come are released at once
    open(gate, "w").close()
    assert float(repartir.get(first, timeout=60)[0]) == 0.0
    wait_stored(lambda s: s["node"] == 1, "only the item handed out kept")
    del first
    nothing_kept()


def test_async_for_over_a_generator():
    async def main():
        return [await r async for r in count_to.remote(3)]

    assert asyncio.run(main()) == [0, 1, 2]


def test_future_and_await():
    fut = three.remote(1).future()
    assert fut.result(timeout=60) == (1, 2, 3)
    big = three.options(num_returns=3).remote(2.0, big=True)[0]
    assert float(big.future().result(timeout=60)[0]) == 2.0

    async def main():
        return await three.remote(4), await sleepy.remote(0.1, "slept")

    assert asyncio.run(main()) == ((4, 5, 6), "slept")
    with pytest.raises(KeyError, match="failed at 0"):
        list(count_to.remote(1, fail_at=0))[0].future().result(timeout=60)
    del big
    nothing_kept()


def test_cancel_a_running_a_queued_and_a_finished_task():
    done = sleepy.remote(0, "done")
    assert repartir.get(done, timeout=60) == "done"
    running = sleepy.remote(60, "running")
    queued = [sleepy.remote(60, f"queued {i}") for i in range(3)]  # the node runs one
    wait_until(lambda: stored() is not None and _node_running() >= 1, "the first started")
    t0 = time.monotonic()
    for ref in reversed(queued):
        repartir.cancel(ref)
    repartir.cancel(running)
    repartir.cancel(done)  # finished: left alone
    for ref in [running, *queued]:
        with pytest.raises(TaskCancelledError):
            repartir.get(ref, timeout=30)
    assert time.monotonic() - t0 < 30
    assert repartir.get(done, timeout=60) == "done"
    assert repartir.get(sleepy.remote(0, "after"), timeout=60) == "after"


def test_cancel_force_and_a_generator():
    @repartir.remote(resources={"big_mem": 1}, max_retries=0)
    def stubborn():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except BaseException:  # ignores a plain cancel
                pass
        return "ignored"

    ref = stubborn.remote()
    wait_until(lambda: _node_running() >= 1, "stubborn started")
    repartir.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        repartir.get(ref, timeout=30)
    gen = count_to.remote(1000, gate="/nonexistent/gate")
    assert repartir.get(next(gen), timeout=60) == 0
    repartir.cancel(gen)
    rest = list(gen)
    with pytest.raises(TaskCancelledError):
        repartir.get(rest[-1], timeout=30)
    assert repartir.get(sleepy.remote(0, "after"), timeout=60) == "after"


@repartir.remote(max_retries=0)
def anywhere(seconds, tag):
    time.sleep(seconds)
    return tag


def test_cancel_a_task_stolen_by_the_other_node():
    """Every task placed on the head (its CPUs counted as taken by the driver's placement),
    so the idle node steals from the head's queue; a stolen task is cancelled there."""
    client = cluster_client.active()
    ids = {("head" if r["Head"] else "node"): n for n, r in client.nodes_seen.items()
           if r["Alive"]}
    with client._lock:
        client._used[ids["node"]] += 1000.0  # placement: the head only
    try:
        refs = [anywhere.remote(3.0, i) for i in range(8)]
    finally:
        with client._lock:
            client._used[ids["node"]] -= 1000.0

    def stolen() -> list:
        with client._lock:
            return [r for r in refs if r.binary() in client.inflight
                    and client.inflight[r.binary()].node == ids["node"]]

    wait_until(lambda: len(stolen()) >= 2, "the node stole some tasks", timeout=30)
    victims = stolen()[-1:]
    for r in victims:
        repartir.cancel(r)
    for r in victims:
        with pytest.raises(TaskCancelledError):
            repartir.get(r, timeout=30)
    others = [r for r in refs if r not in victims]
    for r in others:
        repartir.cancel(r)
    for r in others:  # cancelled, or finished before the cancel came
        try:
            assert repartir.get(r, timeout=30) in range(8)
        except TaskCancelledError:
            pass


def test_cancel_refuses_what_is_not_a_ref():
    with pytest.raises(TypeError, match="cancel"):
        repartir.cancel("not a ref")


def _node_running() -> int:
    """Tasks the ``big_mem`` node runs, from a fresh registry."""
    repartir.nodes()
    client = cluster_client.active()
    with client._lock:
        return [r["Running"] for r in client.nodes_seen.values()
                if r["Alive"] and not r["Head"]][0]


@repartir.remote(resources={"big_mem": 1})
class Sleeper:
    def nap(self, seconds, tag):
        time.sleep(seconds)
        return tag


def test_cancel_an_actor_call():
    a = Sleeper.remote()
    assert repartir.get(a.nap.remote(0, "up"), timeout=60) == "up"
    running = a.nap.remote(60, "running")
    queued = a.nap.remote(60, "queued")
    time.sleep(0.5)
    t0 = time.monotonic()
    repartir.cancel(queued)
    repartir.cancel(running)
    for ref in (queued, running):
        with pytest.raises(TaskCancelledError):
            repartir.get(ref, timeout=30)
    assert time.monotonic() - t0 < 30
    assert repartir.get(a.nap.remote(0, "after"), timeout=60) == "after"
    repartir.kill(a)


@repartir.remote(resources={"big_mem": 1})
class Source:
    def pair(self, x):
        return x, np.full(BIG, x, dtype=np.float64)

    @repartir.method(num_returns=2)
    def declared(self, x):
        return x, x + 1

    def items(self, n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise KeyError(f"actor failed at {i}")
            yield i


def test_actor_methods_with_several_returns_and_generators():
    a = Source.remote()
    x, big = a.pair.options(num_returns=2).remote(3.0)
    assert repartir.get(x, timeout=60) == 3.0
    assert float(repartir.get(big, timeout=60)[0]) == 3.0
    assert repartir.get(a.declared.remote(1), timeout=60) == [1, 2]
    assert a.pair.options(num_returns=0).remote(1.0) is None
    gen = a.items.remote(3)
    assert isinstance(gen, repartir.ObjectRefGenerator)
    assert [repartir.get(r, timeout=60) for r in gen] == [0, 1, 2]
    refs = list(a.items.remote(5, fail_at=1))
    assert repartir.get(refs[0], timeout=60) == 0
    with pytest.raises(KeyError, match="actor failed at 1"):
        repartir.get(refs[1], timeout=60)
    repartir.kill(a)
    del x, big
    nothing_kept()


@repartir.remote(resources={"big_mem": 1}, max_retries=0)
def parent_of(marker, seconds):
    @repartir.remote(max_retries=0, num_cpus=0)
    def child(marker, seconds):
        time.sleep(seconds)
        open(marker, "w").close()

    ref = child.remote(marker, seconds)
    open(marker + ".submitted", "w").close()
    return repartir.get(ref)


def test_a_recursive_cancel_reaches_what_the_task_submitted_on_its_node(tmp_path):
    for recursive in (True, False):
        marker = str(tmp_path / f"child-{recursive}")
        ref = parent_of.remote(marker, 3.0)
        wait_until(lambda: os.path.exists(marker + ".submitted"), "the child submitted")
        repartir.cancel(ref, recursive=recursive)
        with pytest.raises(TaskCancelledError):
            repartir.get(ref, timeout=30)
        time.sleep(4.0)  # the child would have written its marker by now
        assert os.path.exists(marker) is (not recursive)


def test_a_generator_cannot_be_passed_to_a_task():
    gen = count_to.remote(1)
    with pytest.raises(repartir.RepartirError, match="ObjectRefGenerator cannot be passed"):
        three.remote(gen)
    assert [repartir.get(r, timeout=60) for r in gen] == [0]
