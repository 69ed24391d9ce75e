"""Nested tasks (``docs/architecture.md``, "Nested tasks", "Returned refs"): a task submits
tasks and ``get``s them.

A worker blocked in ``get`` runs queued tasks meanwhile and lends its CPU; the node may start
extra workers, but for tasks that need none beyond the cap never more than ``2 x num_cpus``
processes.  Checked here:

- recursive ``fib`` in the benchmark's shape (``fib(22)``, tasks above ``n = 14`` submit two
  children and ``get`` them) and fully recursive ``fib`` down to ``n < 2``, with one worker
  and with two, giving the right value;
- the peak number of live child processes of the driver (sampled with psutil while the
  recursion runs) never exceeds ``2 x num_cpus``;
- a remote function calling itself by name, also when it is defined inside another function;
- refs made by the driver, passed down through nested tasks, read at the bottom;
- a task, actor method or streaming item that returns a ref to a task it submitted and that
  has not finished (directly, inside a list): the result is sent at once and the ref travels
  pending, lent by its owner, so the driver can ``get`` it later (small and arena values,
  the inner task's error), also on one CPU, and the arena gives every byte back.
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest

import repartir
from repartir.runtime import driver
from rtsupport import settled_used_bytes, used_bytes_back_to, wait_until
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
    """docs/benchmarks.md ``fib``: above ``cutoff``, submit two children and get them."""
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


@repartir.remote
def wait_gate(gate: str) -> str:
    open(gate + ".started", "w").close()
    end = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < end:
        time.sleep(0.01)
    return "inner done"


@repartir.remote(max_retries=0)
def waits_on_inner(gate: str) -> str:
    return repartir.get(wait_gate.remote(gate))


def test_timeout_and_cancel_reach_a_task_waiting_under_a_helped_one(node, tmp_path):
    """One CPU: the outer task's worker runs the inner task on its own stack while the outer
    waits in get; a timeout of the outer must not wait for the inner's end, and a cancel
    is raised in it once the inner is done."""
    rt = node(num_cpus=1)
    gate = str(tmp_path / "gate")
    timed = waits_on_inner.options(timeout=0.5).remote(gate)
    with pytest.raises(repartir.TaskTimeoutError):
        rt.get(timed, timeout=50)
    assert not os.path.exists(gate)  # it came while the inner task still waited
    gate2 = str(tmp_path / "gate2")
    cancelled = waits_on_inner.remote(gate2)
    assert wait_until(lambda: os.path.exists(gate2 + ".started"), 50)
    rt.cancel(cancelled)  # recursive, as in Ray: the helped inner task is its child
    with pytest.raises(repartir.TaskCancelledError):
        rt.get(cancelled, timeout=50)
    assert not os.path.exists(gate2)  # both stopped while the inner one still waited
    assert rt.get(fib_bench.remote(15, 13), timeout=60) == 610  # still usable


@repartir.remote(max_retries=0)
def fans_out(gate: str, n: int) -> list:
    return repartir.get([wait_gate.remote(f"{gate}{i}") for i in range(n)])


def test_cancel_is_recursive(node, tmp_path):
    """Cancelling a task cancels the tasks it submitted, on its worker and elsewhere."""
    rt = node(num_cpus=2)
    gate = str(tmp_path / "g")
    parent = fans_out.remote(gate, 3)
    assert wait_until(lambda: sum(os.path.exists(f"{gate}{i}.started") for i in range(3)) >= 2,
                      50)  # children run on both workers
    rt.cancel(parent)
    with pytest.raises(repartir.TaskCancelledError):
        rt.get(parent, timeout=50)
    # every child is stopped although no gate was opened: the node is idle again
    assert wait_until(lambda: rt.available_resources()["CPU"] == 2.0, 50)
    assert rt.get(fib_bench.remote(15, 13), timeout=60) == 610
    # recursive=False: the children run on, to their end
    gate2 = str(tmp_path / "h")
    parent = fans_out.remote(gate2, 2)
    assert wait_until(lambda: all(os.path.exists(f"{gate2}{i}.started") for i in range(2)), 50)
    rt.cancel(parent, recursive=False)
    time.sleep(0.5)
    assert rt.available_resources()["CPU"] < 2.0  # a child still runs
    for i in range(2):
        open(f"{gate2}{i}", "w").close()
    with pytest.raises(repartir.TaskCancelledError):
        rt.get(parent, timeout=50)
    assert wait_until(lambda: rt.available_resources()["CPU"] == 2.0, 50)


@repartir.remote(max_retries=0)
def mid_level(gate: str) -> int:
    return len(repartir.get([wait_gate.remote(f"{gate}.{i}") for i in range(4)]))


@repartir.remote(max_retries=0)
def top_level(gate: str) -> int:
    return repartir.get(mid_level.remote(gate))


@pytest.mark.parametrize("how", ["cancel", "force", "timeout"])
def test_a_stopped_tree_stops_to_its_leaves(node, tmp_path, how):
    """Three levels on one CPU (all on one worker's stack) or two: stopping the top stops
    the middle task and every leaf, queued or running, without any gate being opened."""
    rt = node(num_cpus=1 if how == "cancel" else 2)
    gate = str(tmp_path / "g")
    if how == "timeout":
        top = top_level.options(timeout=1.0).remote(gate)
    else:
        top = top_level.remote(gate)
    def started() -> int:
        return sum(os.path.exists(f"{gate}.{i}.started") for i in range(4))

    assert wait_until(lambda: started() >= 1, 50)
    if how != "timeout":
        rt.cancel(top, force=how == "force")
    with pytest.raises((repartir.TaskCancelledError, repartir.TaskTimeoutError)):
        rt.get(top, timeout=50)
    cpus = 1.0 if how == "cancel" else 2.0
    assert wait_until(lambda: rt.available_resources()["CPU"] == cpus, 50)  # all stopped
    if how == "cancel":
        assert started() == 1  # on one CPU the other leaves were cancelled before they ran
    assert rt.get(fib_bench.remote(15, 13), timeout=60) == 610


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


# --------------------------------------------------------------------------- returned refs
# A task that returns a ref to a task it submitted owns that ref's object; the ref it returns
# must arrive in the driver with the object's location (or error), not be freed with the
# task's local refs while the inner task still runs.

BIG = 512 * 1024  # float64 elements: 4 MiB, an arena object


@repartir.remote
def double(x):
    return x * 2


@repartir.remote
def ones(n):
    return np.ones(n)


@repartir.remote
def gated(x, gate):
    """``x`` once the file ``gate`` exists (the test opens it)."""
    assert wait_until(lambda: os.path.exists(gate), timeout=60), "gate never opened"
    return x


@repartir.remote
def fails(message):
    raise ValueError(message)


@repartir.remote
def return_ref(kind, arg=None):
    """Returns a ref to a task it submits, without waiting for it."""
    if kind == "small":
        return double.remote(3)
    if kind == "big":
        return ones.remote(BIG)
    if kind == "list":
        return [double.remote(3), ones.remote(BIG), double.remote(4)]
    if kind == "gated":
        return gated.remote(7, arg)
    if kind == "fails":
        return fails.remote(arg)
    if kind == "fails_in_list":
        return [double.remote(1), fails.remote(arg)]
    raise AssertionError(kind)


@repartir.remote
def nest_refs(depth):
    """A ref to a ref to ... to ``0``: each level returns the next one's pending ref."""
    return 0 if depth == 0 else nest_refs.remote(depth - 1)


@repartir.remote
def stream_refs(n):
    for i in range(n):
        yield [double.remote(i), ones.remote(BIG)]


@repartir.remote
class RefReturner:
    def small(self):
        return double.remote(3)

    def big(self):
        return [ones.remote(BIG)]

    def fails(self, message):
        return fails.remote(message)

    def six(self):
        return 6

    def call_on(self, handle):
        return handle.six.remote()  # a call on this very actor when handle is its own

    def stream(self, n):
        for i in range(n):
            yield double.remote(i)


@repartir.remote
class AsyncRefReturner:
    async def small(self):
        return double.remote(3)

    async def big(self):
        return [ones.remote(BIG)]

    async def six(self):
        return 6

    async def call_on(self, handle):
        return handle.six.remote()

    async def stream(self, n):
        for i in range(n):
            yield double.remote(i)


def get2(rt, ref, timeout=60):
    """The value behind the ref that ``ref``'s task returned."""
    return rt.get(rt.get(ref, timeout=timeout), timeout=timeout)


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_returned_pending_ref_small_and_big(node, num_cpus):
    rt = node(num_cpus=num_cpus)
    for _ in range(5):
        assert get2(rt, return_ref.remote("small")) == 6
        big = get2(rt, return_ref.remote("big"))
        assert big.shape == (BIG,) and float(big.sum()) == BIG
        a, b, c = [rt.get(r, timeout=60) for r in rt.get(return_ref.remote("list"), timeout=60)]
        assert (a, float(b.sum()), c) == (6, BIG, 8)


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_returned_pending_ref_does_not_wait_for_its_object(node, tmp_path, num_cpus):
    """As in Ray, a task that returns a ref hands it over pending: the inner task is held
    back by a gate, the outer one completes meanwhile, and the ref it returned reads the
    value once the gate opens (its owner, the outer task's worker, keeps the object for
    the driver until the driver drops it)."""
    rt = node(num_cpus=num_cpus)
    gate = str(tmp_path / "gate")
    outer = return_ref.remote("gated", gate)
    inner = rt.get(outer, timeout=60)  # would time out if the outer task waited for it
    ready, _ = rt.wait([inner], timeout=0.2)
    assert not ready
    open(gate, "w").close()
    assert rt.get(inner, timeout=60) == 7


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_chain_of_returned_refs(node, num_cpus):
    """Each level returns the next level's pending ref; on one CPU the waiting worker runs
    the inner tasks itself (no deadlock)."""
    rt = node(num_cpus=num_cpus)
    ref = nest_refs.remote(6)
    for _ in range(6):
        ref = rt.get(ref, timeout=60)
        assert isinstance(ref, repartir.ObjectRef)
    assert rt.get(ref, timeout=60) == 0


@pytest.mark.parametrize("kind", ["fails", "fails_in_list"])
def test_returned_ref_of_failed_task_raises_its_error(node, kind):
    rt = node(num_cpus=2)
    got = rt.get(return_ref.remote(kind, "inner task failed"), timeout=60)
    ref = got if kind == "fails" else got[1]
    with pytest.raises(ValueError, match="inner task failed") as info:
        rt.get(ref, timeout=60)
    assert not isinstance(info.value, repartir.ObjectLostError)
    if kind == "fails_in_list":
        assert rt.get(got[0], timeout=60) == 2


def test_streamed_items_with_pending_refs(node):
    rt = node(num_cpus=2)
    gen = stream_refs.options(num_returns="streaming").remote(3)
    for i, item in enumerate(gen):
        small, big = rt.get(item, timeout=60)
        assert rt.get(small, timeout=60) == 2 * i
        assert float(rt.get(big, timeout=60).sum()) == BIG


@pytest.mark.parametrize("cls", [RefReturner, AsyncRefReturner])
def test_actor_method_returns_pending_ref(node, cls):
    rt = node(num_cpus=2)
    a = cls.remote()
    for _ in range(3):
        assert get2(rt, a.small.remote()) == 6
        (big,) = [rt.get(r, timeout=60) for r in rt.get(a.big.remote(), timeout=60)]
        assert float(big.sum()) == BIG
    gen = a.stream.options(num_returns="streaming").remote(3)
    assert [get2(rt, item) for item in gen] == [0, 2, 4]
    if cls is RefReturner:
        with pytest.raises(ValueError, match="failed in an actor"):
            get2(rt, a.fails.remote("failed in an actor"))
    del a


def test_actor_returning_pending_call_on_itself(node):
    """A call that returns a pending call on its own actor returns at once (the ref travels
    pending), and the inner call runs after it: serial, threaded and async actors alike."""
    rt = node(num_cpus=2)
    serial = RefReturner.remote()
    threaded = RefReturner.options(max_concurrency=2).remote()
    asynchronous = AsyncRefReturner.remote()
    try:
        assert get2(rt, serial.call_on.remote(serial)) == 6
        assert rt.get(serial.six.remote(), timeout=60) == 6  # still usable
        assert get2(rt, threaded.call_on.remote(threaded)) == 6
        assert get2(rt, asynchronous.call_on.remote(asynchronous)) == 6
    finally:
        for h in (serial, threaded, asynchronous):  # passed to themselves: never collected
            rt.kill(h)


def test_returned_refs_leave_no_arena_bytes(node):
    """Every round stores 4 MiB arrays that reach the driver through returned refs (tasks,
    lists, actors, streams, failures); once the driver drops them the arena is back to its
    level -- a leak of one array would be 4 MiB (function blobs exported meanwhile by
    workers seen for the first time are small)."""
    rt = node(num_cpus=2)
    a = RefReturner.remote()

    def round_trip():
        got = [rt.get(return_ref.remote("big"), timeout=60),
               rt.get(return_ref.remote("list"), timeout=60),
               rt.get(a.big.remote(), timeout=60),  # noqa: F821 (deleted after the rounds)
               rt.get(return_ref.remote("fails", "x"), timeout=60)]
        values = [rt.get(got[0], timeout=60), rt.get(got[1], timeout=60),
                  rt.get(got[2], timeout=60)]
        for item in stream_refs.options(num_returns="streaming").remote(2):
            values.append(rt.get(rt.get(item, timeout=60), timeout=60))
        dropped = [return_ref.remote("big") for _ in range(3)]  # results never read
        rt.wait(dropped, num_returns=3, timeout=60)
        del got, values, dropped

    round_trip()  # warm up: function blobs, workers
    before = settled_used_bytes()
    for _ in range(4):
        round_trip()
    after = used_bytes_back_to(before)
    assert after - before < 1 << 20, f"arena used bytes grew from {before} to {after}"
    del a


def test_freed_object_error_names_no_task_get(node, tmp_path):
    """A borrowed ref that left its owner before the object was ready, and whose owner then
    dropped it (a limit of owner-side counting): ``get`` raises ``ObjectLostError`` saying
    the owner freed it -- from the actor's call, not as a task called "get"."""
    rt = node(num_cpus=2)
    gate = str(tmp_path / "gate")
    k = Keeper.remote()
    ref = gated.remote(1, gate)
    oid = ref.binary()
    assert rt.get(k.keep.remote([ref]), timeout=60)  # pickled while pending: no location
    open(gate, "w").close()
    assert rt.get(ref, timeout=60) == 1
    del ref
    assert wait_until(lambda: (gc.collect(), not driver.client().owns(oid))[1], timeout=30)
    with pytest.raises(repartir.ObjectLostError, match="freed by its owner") as info:
        rt.get(k.read.remote(), timeout=60)
    assert "task get raised" not in str(info.value)
    assert "task Keeper.read raised" in str(info.value)
    del k


@repartir.remote
class Keeper:
    def keep(self, box):
        self.box = box
        return True

    def read(self):
        return repartir.get(self.box[0], timeout=30)


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
