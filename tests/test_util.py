"""``repartir.util`` as a Ray user knows ``ray.util``: ``ActorPool`` (``map`` and
``map_unordered`` over a pool of actors, a failing call, ``submit``/``get_next`` with
time-outs, ``has_free``/``pop_idle``/``push``, calls with two returns) and
``repartir.util.queue.Queue`` (fed by tasks and drained by the driver, a task blocked in
``get`` until the driver puts, a queue passed to an actor, ``maxsize``, the batch and async
variants, ``Empty``/``Full``, ``shutdown``).

Calls that must stay unfinished wait for *gate files* in ``tmp_path``, never for a fixed
sleep; time-outs that must expire are short, those that must not are generous.
"""

from __future__ import annotations

import asyncio
import gc
import queue as std_queue

import psutil
import pytest

import repartir
from repartir.runtime import driver
from repartir.util import ActorPool, Queue
from repartir.util.queue import Empty, Full
import rtsupport
from rtsupport import kill_leftover_actors, wait_until

LONG = 60.0  # anything that must happen eventually (a shared, loaded machine)
SHORT = 0.2  # a time-out that must expire


@pytest.fixture(autouse=True)
def _no_actor_left(rt):
    """Kill every actor a test left alive (queues passed to tasks live until killed)."""
    yield
    kill_leftover_actors()


# --------------------------------------------------------------------------- remote code


@repartir.remote
class Worker:
    def __init__(self, name: str) -> None:
        self.name = name

    def double(self, v):
        if v == "bad":
            raise ValueError("cannot double 'bad'")
        return self.name, 2 * v

    def after_gate(self, gate: str, v):
        """Return ``v`` once the file ``gate`` exists."""
        if not rtsupport.wait_file(gate, LONG):
            return "gate never opened"
        return v

    @repartir.method(num_returns=2)
    def pair(self, v):
        return v, -v


@repartir.remote
def produce(q, start: int, n: int) -> int:
    for i in range(start, start + n):
        q.put(i)
    return n


@repartir.remote
def consume(q, n: int, started: str | None = None) -> list:
    if started is not None:
        open(started, "w").close()
    return [q.get(timeout=LONG) for _ in range(n)]


@repartir.remote
def make_queue():
    return Queue()


@repartir.remote
class Drainer:
    """An actor holding a queue given to its constructor."""

    def __init__(self, q) -> None:
        self.q = q

    async def drain(self, n: int) -> list:
        return [await self.q.get_async(timeout=LONG) for _ in range(n)]

    def put_back(self, item) -> None:
        self.q.put(item)


def double(actor, v):
    return actor.double.remote(v)


# --------------------------------------------------------------------------- ActorPool


def test_map_keeps_the_order_and_uses_every_actor(rt):
    pool = ActorPool([Worker.remote("a"), Worker.remote("b")])
    out = list(pool.map(double, range(10)))
    assert [v for _, v in out] == [2 * i for i in range(10)]
    assert {name for name, _ in out} == {"a", "b"}
    assert not pool.has_next()
    assert pool.has_free()


def test_map_unordered_yields_every_result_ready_ones_first(rt, tmp_path):
    gate = str(tmp_path / "gate")
    pool = ActorPool([Worker.remote("a"), Worker.remote("b")])
    it = pool.map_unordered(lambda a, v: a.after_gate.remote(gate, v) if v == "slow"
                            else a.double.remote(v), ["slow", 1, 2, 3])
    # "slow" holds one actor until the gate opens: the other one does 1, 2, 3 first
    assert [next(it)[1] for _ in range(3)] == [2, 4, 6]
    open(gate, "w").close()
    assert list(it) == ["slow"]
    assert sorted(v for _, v in pool.map_unordered(double, range(6))) == [0, 2, 4, 6, 8, 10]


def test_a_failing_call_raises_in_its_place_and_the_pool_goes_on(rt):
    pool = ActorPool([Worker.remote("a"), Worker.remote("b")])
    it = pool.map(double, [1, 2, "bad", 4, 5])
    assert [next(it)[1] for _ in range(2)] == [2, 4]
    with pytest.raises(ValueError, match="cannot double 'bad'") as info:
        next(it)
    assert isinstance(info.value, repartir.TaskError)
    with pytest.raises(StopIteration):  # a generator ends with the error it raised
        next(it)
    assert pool.has_next()  # the results after the failed one are still there, in order
    assert [pool.get_next()[1] for _ in range(2)] == [8, 10]
    assert not pool.has_next()
    # both actors are back: a new map runs on the two of them
    assert {name for name, _ in pool.map(double, range(8))} == {"a", "b"}

    with pytest.raises(ValueError):
        list(pool.map_unordered(double, ["bad"]))
    assert pool.has_free() and not pool.has_next()


def test_get_next_times_out_then_returns_the_result(rt, tmp_path):
    gate = str(tmp_path / "gate")
    pool = ActorPool([Worker.remote("a")])
    pool.submit(lambda a, v: a.after_gate.remote(gate, v), "late")
    with pytest.raises(TimeoutError, match="Timed out waiting for result"):
        pool.get_next(timeout=SHORT)
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=SHORT)
    assert pool.has_next()  # the call is still there
    open(gate, "w").close()
    assert pool.get_next(timeout=LONG) == "late"
    with pytest.raises(StopIteration, match="No more results"):
        pool.get_next()
    with pytest.raises(StopIteration):
        pool.get_next_unordered()
    pool.submit(double, 1)
    with pytest.raises(ValueError, match="timeout"):
        pool.get_next(timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        pool.get_next_unordered(timeout=-1)
    assert pool.get_next(timeout=LONG) == ("a", 2)  # still there


def test_a_timed_out_call_is_dropped_with_ignore_if_timedout(rt, tmp_path):
    gate = str(tmp_path / "gate")
    pool = ActorPool([Worker.remote("a")])
    for method in (pool.get_next, pool.get_next_unordered):
        pool.submit(lambda a, v: a.after_gate.remote(gate, v), "never taken")
        with pytest.raises(TimeoutError, match="has been ignored"):
            method(timeout=SHORT, ignore_if_timedout=True)
        assert not pool.has_next() and pool.has_free()
    open(gate, "w").close()
    pool.submit(double, 21)  # the actor is back (its dropped calls run first)
    assert pool.get_next(timeout=LONG) == ("a", 42)


def test_submit_waits_for_a_free_actor_and_pop_idle_push(rt):
    a, b = Worker.remote("a"), Worker.remote("b")
    pool = ActorPool([a])
    for v in range(3):
        pool.submit(double, v)  # one runs, two wait in the pool
    assert not pool.has_free()
    assert pool.pop_idle() is None
    assert [pool.get_next()[1] for _ in range(3)] == [0, 2, 4]
    assert pool.has_free()
    assert pool.pop_idle() == a
    assert not pool.has_free() and pool.pop_idle() is None
    pool.submit(double, 5)  # no actor: waits until one is pushed
    assert not pool.has_next()
    pool.push(b)
    assert pool.get_next(timeout=LONG) == ("b", 10)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(b)
    pool.push(a)
    assert {pool.pop_idle(), pool.pop_idle()} == {a, b}


def test_mixing_ordered_and_unordered_takes_the_oldest_left(rt, tmp_path):
    gate = str(tmp_path / "gate")
    pool = ActorPool([Worker.remote("a"), Worker.remote("b")])
    pool.submit(lambda a, v: a.after_gate.remote(gate, v), "first")  # on b (popped last)
    pool.submit(double, 1)  # on a
    assert pool.get_next_unordered(timeout=LONG) == ("a", 2)
    open(gate, "w").close()
    assert pool.get_next(timeout=LONG) == "first"
    assert not pool.has_next()


def test_calls_with_two_returns(rt):
    pool = ActorPool([Worker.remote("a"), Worker.remote("b")])
    for v in range(4):
        pool.submit(lambda a, v: a.pair.remote(v), v)
    assert [pool.get_next() for _ in range(2)] == [[0, 0], [1, -1]]
    assert sorted(pool.get_next_unordered(timeout=LONG) for _ in range(2)) == [[2, -2], [3, -3]]


def test_bad_input_says_what_to_do(rt):
    with pytest.raises(TypeError, match="actor handles"):
        ActorPool([1, 2])
    pool = ActorPool([Worker.remote("a")])
    with pytest.raises(TypeError, match=r"actor\.method\.remote"):
        pool.submit(lambda a, v: v, 1)
    assert pool.has_free() and not pool.has_next()  # the actor was not lost


# --------------------------------------------------------------------------- Queue


def test_queue_fed_by_tasks_and_drained_by_the_driver(rt):
    q = Queue()
    assert repartir.get([produce.remote(q, 0, 20), produce.remote(q, 100, 20)],
                        timeout=LONG) == [20, 20]
    assert q.qsize() == q.size() == len(q) == 40
    items = [q.get(timeout=LONG) for _ in range(40)]
    assert sorted(items) == list(range(20)) + list(range(100, 120))
    # first in, first out: each producer's items come in the order it put them
    assert [i for i in items if i < 100] == list(range(20))
    assert [i for i in items if i >= 100] == list(range(100, 120))
    assert q.empty() and not q.full()
    q.shutdown()


def test_blocking_get_with_timeout_raises_empty(rt):
    q = Queue()
    with pytest.raises(Empty) as info:
        q.get(timeout=SHORT)
    assert isinstance(info.value, std_queue.Empty)  # as Ray's: a queue.Empty too
    assert type(info.value) is Empty  # not wrapped in the task error of the actor call
    with pytest.raises(Empty):
        q.get(block=False)
    with pytest.raises(Empty):
        q.get_nowait()
    q.put("x")
    assert q.get(timeout=SHORT) == "x"  # a short time-out is enough once there is one
    q.shutdown()


def test_a_task_blocked_in_get_until_the_driver_puts(rt):
    q = Queue()
    ref = consume.remote(q, 3)
    ready, _ = repartir.wait([ref], timeout=SHORT)
    assert ready == []  # it waits for the items
    for item in ("a", {"b": 1}, [3]):
        q.put(item)
    assert repartir.get(ref, timeout=LONG) == ["a", {"b": 1}, [3]]
    assert q.empty()
    q.shutdown()


def test_a_queue_passed_to_an_actor(rt):
    q = Queue()
    d = Drainer.remote(q)
    ref = d.drain.remote(2)
    q.put(1)
    q.put(2)
    assert repartir.get(ref, timeout=LONG) == [1, 2]
    repartir.get(d.put_back.remote("from the actor"), timeout=LONG)
    assert q.get(timeout=LONG) == "from the actor"
    q.shutdown()


def test_maxsize_full_and_the_batch_variants(rt):
    q = Queue(maxsize=3)
    assert q.maxsize == 3
    q.put_nowait_batch([1, 2])
    with pytest.raises(Full, match="Cannot add 2 items"):
        q.put_nowait_batch([3, 4])  # all or nothing
    assert q.qsize() == 2
    q.put(3)
    assert q.full()
    with pytest.raises(Full) as info:
        q.put_nowait(4)
    assert isinstance(info.value, std_queue.Full)
    with pytest.raises(Full):
        q.put(4, block=False)
    with pytest.raises(Full):
        q.put(4, timeout=SHORT)
    with pytest.raises(Empty, match="Cannot get 4 items"):
        q.get_nowait_batch(4)
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(0) == []
    assert q.get_nowait() == 3
    assert q.empty()
    q.shutdown()


def test_async_variants(rt):
    q = Queue(maxsize=2)

    async def main():
        await q.put_async("a")
        await q.put_async("b", timeout=LONG)
        with pytest.raises(Full):
            await q.put_async("c", block=False)
        with pytest.raises(Full):
            await q.put_async("c", timeout=SHORT)
        got = [await q.get_async(), await q.get_async(block=True, timeout=LONG)]
        with pytest.raises(Empty):
            await q.get_async(block=False)
        with pytest.raises(Empty):
            await q.get_async(timeout=SHORT)
        return got

    assert asyncio.run(main()) == ["a", "b"]
    q.shutdown()


def test_shutdown_ends_the_queue(rt):
    q = Queue()
    q.put(1)
    q2 = Queue()
    assert repartir.get(produce.remote(q2, 0, 1), timeout=LONG) == 1  # a copy went to a task
    holder = Drainer.remote(q2)  # a copy that outlives the shutdown
    procs = [psutil.Process(driver._node.actor_procs[h._slot].pid) for h in (q.actor, q2.actor)]
    q.shutdown()
    q2.shutdown(force=True)
    for dead in (q, q2):
        with pytest.raises(repartir.RepartirError, match="shut down"):
            dead.put(2)
        with pytest.raises(repartir.RepartirError, match="shut down"):
            dead.get_nowait()
        dead.shutdown()  # twice: nothing
    with pytest.raises(repartir.ActorDiedError):
        repartir.get(holder.put_back.remote("too late"), timeout=LONG)
    assert wait_until(lambda: all(rtsupport.is_gone(p) for p in procs), timeout=LONG)


def test_queue_bad_input_and_creation_in_a_task(rt):
    with pytest.raises(ValueError, match="maxsize"):
        Queue(maxsize=-1)
    with pytest.raises(ValueError, match="maxsize"):
        Queue(maxsize=1.5)
    q = Queue()
    with pytest.raises(ValueError, match="timeout"):
        q.get(timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        q.put(1, timeout=-1)
    with pytest.raises(TypeError, match="list"):
        q.put_nowait_batch((1, 2))
    with pytest.raises(TypeError, match="int"):
        q.get_nowait_batch("2")
    with pytest.raises(ValueError, match=">= 0"):
        q.get_nowait_batch(-1)
    q.shutdown()
    # created in a task (actors are created anywhere), returned, used and ended here
    made = repartir.get(make_queue.remote(), timeout=LONG)
    made.put("from the driver")
    assert made.qsize() == 1 and made.get(timeout=LONG) == "from the driver"
    made.shutdown()
    with pytest.raises(repartir.RepartirError, match="shut down"):
        made.put(1)


def test_a_queue_between_two_tasks(rt, tmp_path):
    # Two tasks that wait on each other through a queue can hang when one runs on the
    # other's stack (docs/util.md, "Queue"): here the consumer runs before the producer is
    # submitted, and the queue is unbounded, so the producer never waits for the consumer,
    # wherever it runs (also on the stack of the consumer's worker, while it waits in get)
    q = Queue()
    started = str(tmp_path / "started")
    consumer = consume.remote(q, 10, started)
    assert rtsupport.wait_file(started, LONG)
    assert repartir.get(produce.remote(q, 0, 10), timeout=LONG) == 10
    assert repartir.get(consumer, timeout=LONG) == list(range(10))
    q.shutdown()


@pytest.mark.parametrize("producer_first", [True, False])
@pytest.mark.parametrize("maxsize", [0, 2])
def test_a_producer_task_and_a_consumer_task_on_one_queue(rt, producer_first, maxsize):
    # A worker waiting for an actor call's answer runs no other task on its stack (the
    # actor may wait on that task): either order, bounded or not, every item arrives.
    # Before, 200 items hung in about half the runs (docs/util.md, "Queue").
    for _ in range(3):
        q = Queue(maxsize=maxsize)
        if producer_first:
            produced = produce.remote(q, 0, 200)
            consumed = consume.remote(q, 200)
        else:
            consumed = consume.remote(q, 200)
            produced = produce.remote(q, 0, 200)
        assert repartir.get(consumed, timeout=LONG) == list(range(200))
        assert repartir.get(produced, timeout=LONG) == 200
        q.shutdown()


def test_a_bounded_queue_between_a_task_and_an_actor(rt):
    q = Queue(maxsize=2)  # the producer task waits in put while the actor is behind
    d = Drainer.remote(q)
    drained = d.drain.remote(10)
    assert repartir.get(produce.remote(q, 0, 10), timeout=LONG) == 10
    assert repartir.get(drained, timeout=LONG) == list(range(10))
    q.shutdown()


def test_a_queue_never_passed_anywhere_ends_with_its_last_copy(rt):
    q = Queue()
    q.put(1)
    proc = psutil.Process(driver._node.actor_procs[q.actor._slot].pid)
    del q
    gc.collect()
    assert wait_until(lambda: rtsupport.is_gone(proc), timeout=LONG)
