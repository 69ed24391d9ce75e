"""``repartir.get_runtime_context()`` as in Ray: node, job, task and actor ids (hex strings)
in the driver, in a task, in a nested task, in an actor's constructor and methods (one call
at a time, threaded, async: each call sees its own task id), ``was_current_actor_reconstructed``
after a restart, and before ``init()``.

Calls that must overlap wait for *gate files* in ``tmp_path``, never for a fixed sleep.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading

import pytest

import repartir
from repartir import ids
from repartir.runtime import driver
import rtsupport
from rtsupport import wait_until

LONG = 60.0
HEX = re.compile(r"[0-9a-f]+")


@pytest.fixture(autouse=True)
def _no_actor_left():
    yield
    node = driver._node
    if node is None:
        return
    with node._lock:
        procs = list(node.actor_procs.items())
    for slot, _ in procs:
        node.kill_actor(slot, no_restart=True)
    assert wait_until(lambda: all(p.poll() is not None for _, p in procs), timeout=30)


def task_of(ref) -> str:
    """The hex id of the task (or actor call) computing ``ref``."""
    return ids.task_of(ref.binary()).hex()


def ids_here() -> dict:
    c = repartir.get_runtime_context()
    return {"node": c.get_node_id(), "job": c.get_job_id(), "task": c.get_task_id(),
            "actor": c.get_actor_id(), "restarted": c.was_current_actor_reconstructed,
            "pid": os.getpid()}


@repartir.remote
def in_a_task() -> dict:
    return ids_here()


@repartir.remote
def parent() -> dict:
    before = repartir.get_runtime_context().get_task_id()
    child_ref = in_a_task.remote()
    child = repartir.get(child_ref)
    return {"before": before, "after": repartir.get_runtime_context().get_task_id(),
            "child": child["task"], "child_ref_task": task_of(child_ref)}


@repartir.remote(max_restarts=1)
class Plain:
    def __init__(self) -> None:
        self.at_creation = ids_here()

    def created(self) -> dict:
        return self.at_creation

    def here(self) -> dict:
        return ids_here()


@repartir.remote(max_concurrency=2)
class Threaded:
    def held(self, gate: str) -> tuple:
        before = repartir.get_runtime_context().get_task_id()
        opened = rtsupport.wait_file(gate, LONG)  # another call runs meanwhile
        return before, repartir.get_runtime_context().get_task_id(), opened, \
            threading.get_ident()

    def quick(self) -> tuple:
        return repartir.get_runtime_context().get_task_id(), threading.get_ident()


@repartir.remote
class Async:
    async def held(self, gate: str) -> tuple:
        before = repartir.get_runtime_context().get_task_id()
        for _ in range(int(LONG / 0.01)):  # another call runs meanwhile, on the same loop
            if os.path.exists(gate):
                break
            await asyncio.sleep(0.01)
        return before, repartir.get_runtime_context().get_task_id()

    async def quick(self) -> str:
        return repartir.get_runtime_context().get_task_id()


def test_in_the_driver(rt):
    here = ids_here()
    assert here["task"] is None and here["actor"] is None and here["restarted"] is False
    assert len(here["node"]) == 56 and HEX.fullmatch(here["node"])  # 28 bytes, as Ray's
    assert here["job"] == "01000000"
    assert repartir.nodes()[0]["NodeID"] == here["node"]
    assert isinstance(repartir.get_runtime_context(), repartir.RuntimeContext)


def test_in_a_task(rt):
    refs = [in_a_task.remote() for _ in range(3)]
    got = repartir.get(refs, timeout=LONG)
    driver_node = repartir.get_runtime_context().get_node_id()
    for ref, here in zip(refs, got):
        assert here["task"] == task_of(ref)  # the task's own id, as its caller knows it
        assert len(here["task"]) == 32 and HEX.fullmatch(here["task"])
        assert here["actor"] is None and here["restarted"] is False
        assert here["node"] == driver_node and here["job"] == "01000000"
        assert here["pid"] != os.getpid()
    assert len({here["task"] for here in got}) == 3


def test_a_nested_task_has_its_own_id_and_its_parent_keeps_its_own(rt):
    ref = parent.remote()
    got = repartir.get(ref, timeout=LONG)
    assert got["before"] == got["after"] == task_of(ref)
    assert got["child"] == got["child_ref_task"] != got["before"]


def test_in_an_actor_and_after_its_restart(rt):
    a = Plain.remote()
    ref = a.here.remote()
    here = repartir.get(ref, timeout=LONG)
    actor_id = a._actor_id.hex()
    assert here["actor"] == actor_id and len(actor_id) == 32
    assert here["task"] == task_of(ref)
    assert here["node"] == repartir.get_runtime_context().get_node_id()
    assert here["restarted"] is False
    created = repartir.get(a.created.remote(), timeout=LONG)
    assert created["actor"] == actor_id and created["task"] is None  # the constructor
    assert created["restarted"] is False

    repartir.kill(a, no_restart=False)  # max_restarts=1: a new process, constructor again
    again = repartir.get(a.here.remote(), timeout=LONG)
    assert again["pid"] != here["pid"]
    assert again["actor"] == actor_id and again["restarted"] is True
    assert repartir.get(a.created.remote(), timeout=LONG)["restarted"] is True
    assert ids_here()["restarted"] is False  # the driver is no actor


def test_threaded_actor_calls_each_see_their_own_task(rt, tmp_path):
    gate = str(tmp_path / "gate")
    a = Threaded.remote()
    held = a.held.remote(gate)
    quick = a.quick.remote()
    quick_id, quick_thread = repartir.get(quick, timeout=LONG)
    assert quick_id == task_of(quick)
    open(gate, "w").close()
    before, after, opened, held_thread = repartir.get(held, timeout=LONG)
    assert opened and before == after == task_of(held)
    assert held_thread != quick_thread  # they did overlap, on two threads


def test_async_actor_calls_each_see_their_own_task(rt, tmp_path):
    gate = str(tmp_path / "gate")
    a = Async.remote()
    held = a.held.remote(gate)
    quick = a.quick.remote()
    assert repartir.get(quick, timeout=LONG) == task_of(quick)  # while held waits
    open(gate, "w").close()
    before, after = repartir.get(held, timeout=LONG)
    assert before == after == task_of(held)


def test_before_init(no_session):
    c = repartir.get_runtime_context()
    assert c.get_task_id() is None and c.get_actor_id() is None
    with pytest.raises(repartir.RepartirError, match=r"call repartir\.init\(\)"):
        c.get_node_id()
    with pytest.raises(repartir.RepartirError, match=r"call repartir\.init\(\)"):
        c.get_job_id()
    repartir.init(num_cpus=1)
    first = c.get_node_id()  # the same object answers once a session runs
    repartir.shutdown()
    repartir.init(num_cpus=1)
    assert repartir.get_runtime_context().get_node_id() != first  # one per session
    repartir.shutdown()
