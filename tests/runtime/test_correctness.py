"""Programs that used to hang, lose a result or swallow a cancel (``docs/architecture.md``,
"Nested tasks", "Faults", "Cancellation and time-outs"), each with neighbours of its kind:

- a task blocked in ``get`` never runs, on its own stack, a task that may wait on a task
  below it (stacked gets through refs nested in arguments; an actor in the chain); a
  hypothesis property over random dependency graphs of nested tasks at 1 and 2 CPUs;
- results of any type and size come back (large ``bytes``/``int``/``str``, many returns, a
  large error, a large streamed item, an actor method), and one larger than the store
  spills to disk;
- ``get`` of a list fails fast on the first error;
- queued tasks start in submission order after a forced cancel replaced their worker;
- a cancel reaches code that catches ``Exception``, ``force=True`` kills what ignored it;
- cancelling the head of a chain of dependent tasks fails every link;
- ``sys.exit()`` in a task or an actor method;
- ``retry_exceptions`` for streaming tasks;
- an actor waiting for resources warns.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import repartir
from repartir.runtime import driver
import rtsupport
from rtsupport import settled_used_bytes, used_bytes_back_to, wait_until

pytestmark = pytest.mark.timeout(180)

LONG = 60


def wait_file(path: str, timeout: float = LONG) -> bool:
    return rtsupport.wait_file(path, timeout)


# --------------------------------------------------------------------------- stacked gets


@repartir.remote
def slow(seconds=1.0, value=1):
    time.sleep(seconds)
    return value


@repartir.remote
def wait_for(lst):
    return repartir.get(lst[0], timeout=LONG)


@repartir.remote
class Waiter:
    def wait_for(self, lst):
        return repartir.get(lst[0], timeout=LONG)


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_stacked_get_through_nested_refs(node, num_cpus):
    """The issue's input: o3 waits on o2 which waits on o1, each through a ref inside a
    list.  Before, the worker blocked in o2 ran o3 on its stack, and o3 could never see
    o2 finish."""
    rt = node(num_cpus=num_cpus)
    o1 = slow.remote()
    o2 = wait_for.remote([o1])
    o3 = wait_for.remote([o2])
    assert rt.get(o3, timeout=20) == 1


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_long_and_parallel_chains_of_nested_waits(node, num_cpus):
    """Three chains of seven links: more waiting tasks than the worker cap (2 x num_cpus),
    so the node must start workers beyond it while every worker is blocked."""
    rt = node(num_cpus=num_cpus)
    ends = []
    for c in range(3):
        r = slow.remote(0.2, c)
        for _ in range(6):
            r = wait_for.remote([r])
        ends.append(r)
    assert rt.get(ends, timeout=LONG) == [0, 1, 2]


def test_stacked_get_with_an_actor_in_the_chain(node):
    rt = node(num_cpus=1)
    a = Waiter.remote()
    o1 = slow.remote()
    o2 = a.wait_for.remote([o1])
    o3 = wait_for.remote([o2])
    assert rt.get(o3, timeout=20) == 1
    o1 = slow.remote(0.2, 5)
    o2 = wait_for.remote([o1])
    o3 = a.wait_for.remote([o2])
    o4 = wait_for.remote([o3])
    assert rt.get(o4, timeout=20) == 5
    rt.kill(a)


@repartir.remote
def graph_task(nested, spawn, *top):
    """1 + the values of the refs nested in ``nested`` (got here) + the values passed at
    the top level; with ``spawn`` the same is computed by a child task it waits for."""
    if spawn:
        return repartir.get(graph_task.remote(nested, False, *top), timeout=LONG)
    return 1 + sum(top) + sum(repartir.get(list(nested), timeout=LONG))


@st.composite
def graphs(draw):
    n = draw(st.integers(2, 8))
    tasks = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        nested = [d for d in deps if draw(st.booleans())]
        top = [d for d in deps if d not in nested]
        tasks.append((nested, top, draw(st.booleans())))
    return tasks


def _run_graph(rt, tasks) -> None:
    refs, expected = [], []
    for nested, top, spawn in tasks:
        refs.append(graph_task.remote([refs[d] for d in nested], spawn,
                                      *[refs[d] for d in top]))
        expected.append(1 + sum(expected[d] for d in nested + top))
    assert rt.get(refs, timeout=LONG) == expected


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_random_graphs_of_nested_tasks_all_finish(node, num_cpus):
    """Every graph of tasks that wait (through nested refs, top-level refs and children)
    on earlier ones finishes, at one CPU and at two: no stack order can deadlock."""
    rt = node(num_cpus=num_cpus)

    @settings(max_examples=25, deadline=None)
    @given(graphs())
    def check(tasks):
        _run_graph(rt, tasks)

    check()


# --------------------------------------------------------------------------- large results


@repartir.remote
def big_value(kind):
    if kind == "bytes":
        return b"\0" * 2_100_000
    if kind == "int":
        return 1 << 24_000_000  # 3 MB
    if kind == "str":
        return "x" * 3_000_000
    if kind == "tuple":
        return tuple(range(400_000))
    raise ValueError(kind)


@repartir.remote(num_returns=30)
def many_returns():
    return [bytes([i]) * 90_000 for i in range(30)]  # inline each, 2.7 MB together


@repartir.remote(max_retries=0)
def huge_error():
    raise ValueError("e" * 3_000_000)


@repartir.remote(num_returns="streaming")
def big_items(n):
    for i in range(n):
        yield bytes([i]) * 2_500_000


@repartir.remote
def big_result_with_arg(arr):
    return b"\1" * 2_100_000


@repartir.remote
class BigActor:
    def bytes_(self):
        return b"\0" * 2_100_000

    def alive(self):
        return True


@pytest.mark.parametrize("kind", ["bytes", "int", "str", "tuple"])
def test_large_results_of_inline_types_come_back(node, kind):
    rt = node(num_cpus=2)
    value = rt.get(big_value.remote(kind), timeout=LONG)
    expected = {"bytes": lambda: b"\0" * 2_100_000, "int": lambda: 1 << 24_000_000,
                "str": lambda: "x" * 3_000_000, "tuple": lambda: tuple(range(400_000))}[kind]()
    assert value == expected


def test_many_inline_returns_a_large_error_and_large_streamed_items(node):
    rt = node(num_cpus=2)
    values = rt.get(many_returns.remote(), timeout=LONG)
    assert [v == bytes([i]) * 90_000 for i, v in enumerate(values)] == [True] * 30
    with pytest.raises(ValueError) as info:
        rt.get(huge_error.remote(), timeout=LONG)
    assert "e" * 1000 in str(info.value)
    items = [rt.get(r, timeout=LONG) for r in big_items.remote(3)]
    assert items == [bytes([i]) * 2_500_000 for i in range(3)]


def test_large_result_releases_its_argument_and_actor_survives(node):
    rt = node(num_cpus=2)
    rt.get(big_result_with_arg.remote(np.zeros(10)), timeout=LONG)  # warm up
    before = settled_used_bytes()
    arg = rt.put(np.zeros(20 * 2**20 // 8))
    assert len(rt.get(big_result_with_arg.remote(arg), timeout=LONG)) == 2_100_000
    del arg
    assert used_bytes_back_to(before) - before < 1 << 20  # the 20 MiB argument was freed
    a = BigActor.remote()
    for _ in range(3):
        assert len(rt.get(a.bytes_.remote(), timeout=LONG)) == 2_100_000
    assert rt.get(a.alive.remote(), timeout=LONG) is True
    rt.kill(a)


@repartir.remote(max_retries=0)
def too_big_for_the_store():
    return b"\0" * (100 * 2**20)


def test_result_too_big_for_the_store_spills(node):
    """A result larger than the store goes to disk (docs/architecture.md, "Spilling"); one
    that fits nowhere fails its task: tests/store/test_spill.py."""
    rt = node(num_cpus=1, object_store_memory=64 * 2**20)
    value = rt.get(too_big_for_the_store.remote(), timeout=LONG)
    assert len(value) == 100 * 2**20 and value[:4] == b"\0\0\0\0" and value.count(0) == len(value)
    del value
    assert rt.get(slow.remote(0, 3), timeout=LONG) == 3  # the worker still serves


# --------------------------------------------------------------------------- fail-fast get


@repartir.remote(max_retries=0)
def fails_now(message="failed at once"):
    raise ValueError(message)


@repartir.remote
def waits_for_gate(gate):
    wait_file(gate, LONG)
    return "late"


@pytest.mark.parametrize("order", ["error_first", "error_last"])
def test_get_of_a_list_fails_fast(node, tmp_path, order):
    rt = node(num_cpus=2)
    gate = str(tmp_path / "gate")
    refs = [fails_now.remote(), waits_for_gate.remote(gate)]
    if order == "error_last":
        refs.reverse()
    try:
        with pytest.raises(ValueError, match="failed at once"):
            rt.get(refs, timeout=LONG)
        slow = refs[0 if order == "error_last" else 1]
        # raised while the other task still waits for its gate (without fail-fast, get
        # would have returned only once it gave up waiting and ended)
        assert rt.wait([slow], num_returns=1, timeout=0)[0] == []
    finally:
        Path(gate).touch()
    assert rt.get(refs[0 if order == "error_last" else 1], timeout=LONG) == "late"


@repartir.remote
def get_both_inside(running):
    return repartir.get([fails_now.remote("inner"), running[0]], timeout=LONG)


@repartir.remote
def started_then_waits(started, gate):
    Path(started).touch()
    wait_file(gate, LONG)
    return "late"


def test_get_inside_a_task_fails_fast_too(node, tmp_path):
    """The slow task runs on another worker; the inner get raises at once.  (A task the
    waiting worker runs on its own stack while it waits -- see docs/architecture.md,
    "Nested tasks" -- ends before the error can be raised.)"""
    rt = node(num_cpus=2)
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    try:
        running = started_then_waits.remote(started, gate)
        assert wait_file(started)
        with pytest.raises(ValueError, match="inner"):
            rt.get(get_both_inside.remote([running]), timeout=LONG)
        assert rt.wait([running], num_returns=1, timeout=0)[0] == []  # still waiting
    finally:
        Path(gate).touch()
    assert rt.get(running, timeout=LONG) == "late"


# --------------------------------------------------------------------------- order after force


@repartir.remote
def logged(i, endless, log):
    with open(log, "a") as f:
        f.write(f"{i}\n")
    if endless:
        time.sleep(1000)
    return i


def test_queued_tasks_start_in_order_after_forced_cancels(node, tmp_path):
    """One CPU, one endless task, 100 queued tasks (the odd ones endless): each endless task
    is force-cancelled once it started, which replaces the worker; the others still start
    in submission order (before: task 54 before task 8)."""
    rt = node(num_cpus=1)
    log = str(tmp_path / "log")
    head = logged.remote(-1, True, log)
    assert wait_until(lambda: os.path.exists(log), LONG)
    refs = [logged.remote(i, i % 2 == 1, log) for i in range(100)]
    rt.cancel(head, force=True)
    cancelled = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        started = [int(x) for x in Path(log).read_text().split() if int(x) >= 0]
        if started and started[-1] % 2 == 1 and started[-1] not in cancelled:
            cancelled.add(started[-1])
            rt.cancel(refs[started[-1]], force=True)
        if len(started) == 100:
            break
        time.sleep(0.02)
    assert started == list(range(100))
    assert rt.get(refs[98], timeout=LONG) == 98
    with pytest.raises(repartir.TaskCancelledError):
        rt.get(refs[99], timeout=LONG)


# --------------------------------------------------------------------------- cancels that land


@repartir.remote
def swallows_exceptions(path):
    Path(path).touch()
    while True:
        try:
            time.sleep(0.05)
        except Exception:  # noqa: BLE001 -- the point of the test
            pass


@repartir.remote
def swallows_everything(path):
    Path(path).touch()
    while True:
        try:
            time.sleep(0.05)
        except BaseException:  # noqa: BLE001 -- ignores even the interrupt
            pass


def test_cancel_reaches_code_that_catches_exception(node, tmp_path):
    rt = node(num_cpus=2)
    started = str(tmp_path / "started")
    ref = swallows_exceptions.remote(started)
    assert wait_file(started)
    rt.cancel(ref)
    with pytest.raises(repartir.TaskCancelledError):
        rt.get(ref, timeout=LONG)


def test_force_kills_a_task_that_ignored_the_cancel(node, tmp_path):
    rt = node(num_cpus=2)
    started = str(tmp_path / "started")
    ref = swallows_everything.remote(started)
    assert wait_file(started)
    rt.cancel(ref)
    with pytest.raises(repartir.GetTimeoutError):
        rt.get(ref, timeout=1)  # it ignores the interrupt
    rt.cancel(ref, force=True)  # not ignored: its worker is killed
    with pytest.raises(repartir.TaskCancelledError):
        rt.get(ref, timeout=LONG)
    assert rt.get(slow.remote(0, 4), timeout=LONG) == 4


@repartir.remote(num_returns="streaming")
def endless_items():
    i = 0
    while True:
        yield i
        i += 1


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_cancels_landing_inside_shared_memory_locks_never_hang_a_worker(node, num_cpus):
    """A streaming task spends most of its time inside the inbox's mutex (one message per
    item); a cancel raised there would leave the mutex held and the next locker hung.  The
    stop waits until the worker leaves the lock; 150 cancels at varied moments, and the
    pool serves after each."""
    rt = node(num_cpus=num_cpus)
    for i in range(150):
        gen = endless_items.remote()
        assert rt.get(next(gen), timeout=LONG) == 0
        time.sleep(0.0005 * (i % 5))
        rt.cancel(gen)
        assert rt.get(link.remote(i), timeout=LONG) == i + 1
        del gen


@repartir.remote
def link(x):
    return x + 1


@repartir.remote
def nested_link(lst):
    return repartir.get(lst[0], timeout=LONG) + 1


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("kind", ["top_level", "nested"])
def test_cancelling_the_head_of_a_chain_fails_every_link(node, tmp_path, force, kind):
    rt = node(num_cpus=1)
    started = str(tmp_path / "started")
    head = swallows_exceptions.remote(started)
    chain = [head]
    for _ in range(5):
        chain.append(link.remote(chain[-1]) if kind == "top_level"
                     else nested_link.remote([chain[-1]]))
    assert wait_file(started)
    rt.cancel(head, force=force)
    for ref in chain:
        with pytest.raises(repartir.TaskCancelledError):
            rt.get(ref, timeout=LONG)


# --------------------------------------------------------------------------- sys.exit


@repartir.remote(max_retries=0)
def exits(code):
    sys.exit(code)


@repartir.remote(max_retries=2)
def exits_once(marker):
    if not os.path.exists(marker):
        Path(marker).touch()
        sys.exit(3)
    return "second attempt"


@pytest.mark.parametrize("code", [3, 0, None, "a message"])
def test_sys_exit_in_a_task_exits_its_worker(node, code):
    rt = node(num_cpus=2)
    pids = set(driver.worker_pids())
    with pytest.raises(repartir.WorkerCrashedError, match=r"sys\.exit"):
        rt.get(exits.remote(code), timeout=LONG)
    assert wait_until(lambda: set(driver.worker_pids()) != pids, LONG)  # one was replaced
    assert rt.get(slow.remote(0, 5), timeout=LONG) == 5


def test_sys_exit_in_a_task_is_retried(node, tmp_path):
    rt = node(num_cpus=2)
    assert rt.get(exits_once.remote(str(tmp_path / "m")), timeout=LONG) == "second attempt"


@repartir.remote(max_restarts=2)
class Quitter:
    def quit(self):
        sys.exit(0)

    def hello(self):
        return "hi"


@repartir.remote(max_restarts=2)
class AsyncQuitter:
    async def quit(self):
        sys.exit(1)

    async def hello(self):
        return "hi"


@pytest.mark.parametrize("cls", [Quitter, AsyncQuitter])
def test_sys_exit_in_an_actor_method_ends_the_actor(node, cls):
    rt = node(num_cpus=2)
    a = cls.remote()
    assert rt.get(a.hello.remote(), timeout=LONG) == "hi"
    with pytest.raises(repartir.ActorDiedError, match="exited on purpose"):
        rt.get(a.quit.remote(), timeout=LONG)
    with pytest.raises(repartir.ActorDiedError, match="exited on purpose"):
        rt.get(a.hello.remote(), timeout=LONG)  # not restarted despite max_restarts


# --------------------------------------------------------------------------- streaming retries


@repartir.remote(num_returns="streaming", retry_exceptions=[KeyError], max_retries=2)
def flaky_stream(marker, n=5, fail_at=3, exc=KeyError, always=False):
    for i in range(n):
        if i == fail_at and (always or not os.path.exists(marker)):
            Path(marker).touch()
            raise exc("first attempt")
        yield i


def test_streaming_task_retried_on_listed_exception(node, tmp_path):
    rt = node(num_cpus=2)
    gen = flaky_stream.remote(str(tmp_path / "m"))
    assert [rt.get(r, timeout=LONG) for r in gen] == [0, 1, 2, 3, 4]


def test_streaming_task_not_retried_on_other_exception(node, tmp_path):
    rt = node(num_cpus=2)
    gen = flaky_stream.remote(str(tmp_path / "m"), 5, 3, ValueError)
    got = []
    with pytest.raises(ValueError, match="first attempt"):
        for r in gen:
            got.append(rt.get(r, timeout=LONG))
    assert got == [0, 1, 2]


def test_streaming_retry_exceptions_true_and_exhausted(node, tmp_path):
    rt = node(num_cpus=2)
    gen = flaky_stream.options(retry_exceptions=True).remote(str(tmp_path / "m"), 4, 0,
                                                            RuntimeError)
    assert [rt.get(r, timeout=LONG) for r in gen] == [0, 1, 2, 3]
    always = flaky_stream.options(retry_exceptions=True, max_retries=1)
    gen = always.remote(str(tmp_path / "m2"), 4, 2, RuntimeError, True)
    got = []
    with pytest.raises(Exception):
        for r in gen:
            got.append(rt.get(r, timeout=LONG))
    assert got == [0, 1]  # the retry's items 0 and 1 are not delivered twice


# --------------------------------------------------------------------------- actor resources


@repartir.remote(num_cpus=1)
class Hog:
    def ping(self):
        return 1


def test_actor_waiting_for_resources_warns(node):
    rt = node(num_cpus=2)
    hogs = [Hog.remote() for _ in range(2)]
    assert rt.get([h.ping.remote() for h in hogs], timeout=LONG) == [1, 1]
    driver._node.stuck_warning_s = 0.2
    try:
        with pytest.warns(RuntimeWarning, match="actor Hog has waited.*free now") as seen:
            late = Hog.remote()
            assert wait_until(lambda: len(seen) > 0, LONG)
    finally:
        driver._node.stuck_warning_s = 10.0
    for h in hogs:
        rt.kill(h)
    del hogs
    gc.collect()
    assert rt.get(late.ping.remote(), timeout=LONG) == 1  # it starts once they are gone
