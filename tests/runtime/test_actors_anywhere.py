"""Actors from anywhere, as in Ray (``docs/architecture.md``, "Actors", "Handles"): tasks and
actor methods (sync, threaded, async) create actors, call them, pass and return their
handles, look them up with ``get_actor`` and end them with ``kill``, as the driver does; an
actor ends when its last handle *anywhere* is gone, handles held by tasks and actors
included; detached actors stay; a process that dies holding a handle does not keep the actor
alive.

An actor's end is checked on its process (gone, with psutil) and on the node's count of
handles (``driver._node.handles``); nothing here waits a fixed time for something to happen:
blocking points wait for gate files, and ends are awaited with ``wait_until``."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import psutil
import pytest

import repartir
from repartir import ActorDiedError, WorkerCrashedError
from repartir.runtime import driver
from rtsupport import kill_leftover_actors, is_gone, wait_file, wait_until

pytestmark = pytest.mark.timeout(120)

LONG = 60.0


@pytest.fixture(autouse=True)
def _no_actor_left(rt):
    """Kill every actor a test left alive; its process must be gone."""
    yield
    kill_leftover_actors()


def gone(pid: int) -> bool:
    try:
        return is_gone(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


def holders(actor_id: bytes) -> dict:
    """The processes the node counts as holding handles of the actor."""
    node = driver._node
    with node._handles_lock:
        return node.handles.holders(actor_id)


def driver_holds(actor_id: bytes) -> bool:
    return any(slot == 0 for slot, _ in holders(actor_id))


# --------------------------------------------------------------------------- remote code


@repartir.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def inc(self, d=1):
        self.n += d
        return self.n

    def pid(self):
        return os.getpid()


@repartir.remote
class Maker:
    """Creates, looks up and kills actors inside its methods."""

    def make(self, start):
        return Counter.remote(start)

    def make_and_call(self, start):
        c = Counter.remote(start)
        return repartir.get(c.inc.remote(), timeout=LONG)

    def lookup(self, name):
        return repartir.get(repartir.get_actor(name).inc.remote(), timeout=LONG)

    def kill(self, h):
        repartir.kill(h)
        return h.state


@repartir.remote
class AsyncMaker:
    async def make(self, start):
        return Counter.remote(start)

    async def lookup(self, name):
        return await repartir.get_actor(name).inc.remote()


@repartir.remote
class Keeper:
    """Holds a handle between calls."""

    def __init__(self):
        self.h = None

    def keep(self, h):
        self.h = h
        return True

    def call(self):
        return repartir.get(self.h.inc.remote(), timeout=LONG)

    def drop(self):
        self.h = None
        gc.collect()
        return True


@repartir.remote
def make_and_return(start):
    c = Counter.remote(start)
    assert repartir.get(c.inc.remote(), timeout=LONG) == start + 1
    return c


@repartir.remote
def call_after_gate(h, gate):
    assert wait_file(gate, LONG), "gate never opened"
    return repartir.get(h.inc.remote(), timeout=LONG)


@repartir.remote
def inc_in_subtask(h):
    return repartir.get(h.inc.remote(), timeout=LONG)


@repartir.remote
def make_and_pass_to_subtask():
    c = Counter.remote(100)
    value = repartir.get(inc_in_subtask.remote(c), timeout=LONG)
    return value, repartir.get(c.pid.remote(), timeout=LONG)


@repartir.remote
def lookup_in_task(name, namespace=None):
    h = repartir.get_actor(name, namespace=namespace)
    return repartir.get(h.inc.remote(), timeout=LONG)


@repartir.remote
def kill_in_task(h):
    repartir.kill(h)
    return h.state


@repartir.remote
def create_named(name, lifetime=None, get_if_exists=False):
    c = Counter.options(name=name, lifetime=lifetime, get_if_exists=get_if_exists).remote(0)
    return repartir.get(c.pid.remote(), timeout=LONG)


@repartir.remote(max_retries=0)
def hold_then_die(h):
    assert repartir.get(h.inc.remote(), timeout=LONG) == 1
    os._exit(3)


# --------------------------------------------------------------------------- creation


def test_actor_created_in_a_task_is_returned_and_called_in_the_driver(rt):
    c = repartir.get(make_and_return.remote(10), timeout=LONG)
    assert repartir.get(c.inc.remote(), timeout=LONG) == 12
    pid = repartir.get(c.pid.remote(), timeout=LONG)
    assert not gone(pid)
    actor_id = c._actor_id
    # the task's handles are gone: the driver is the only holder
    assert wait_until(lambda: holders(actor_id) == {(0, os.getpid()): 1}, timeout=LONG), \
        holders(actor_id)
    del c
    gc.collect()
    assert wait_until(lambda: gone(pid), timeout=LONG), "the actor outlived its last handle"
    assert wait_until(lambda: driver._node.handles.count(actor_id) is None, timeout=LONG)


@pytest.mark.parametrize("opts", [{}, {"max_concurrency": 3}], ids=["sync", "threaded"])
def test_actor_created_in_an_actor_method(rt, opts):
    m = Maker.options(**opts).remote()
    c = repartir.get(m.make.remote(5), timeout=LONG)
    assert repartir.get(c.inc.remote(), timeout=LONG) == 6
    assert repartir.get(m.make_and_call.remote(7), timeout=LONG) == 8
    pid = repartir.get(c.pid.remote(), timeout=LONG)
    del c
    gc.collect()
    assert wait_until(lambda: gone(pid), timeout=LONG)


def test_actor_created_in_an_async_actor_method(rt):
    m = AsyncMaker.remote()
    c = repartir.get(m.make.remote(20), timeout=LONG)
    assert repartir.get(c.inc.remote(), timeout=LONG) == 21


def test_a_task_creates_an_actor_and_passes_it_to_a_subtask(rt):
    value, pid = repartir.get(make_and_pass_to_subtask.remote(), timeout=LONG)
    assert value == 101
    # nobody holds a handle any more: the task's and the subtask's copies are gone
    assert wait_until(lambda: gone(pid), timeout=LONG), "the actor outlived its handles"


def test_creation_errors_in_a_task_are_the_drivers(rt):
    a = Counter.options(name="taken").remote()
    with pytest.raises(ValueError, match="already exists"):
        repartir.get(create_named.remote("taken"), timeout=LONG)
    pid = repartir.get(a.pid.remote(), timeout=LONG)
    assert repartir.get(create_named.remote("taken", get_if_exists=True), timeout=LONG) == pid
    assert repartir.get(a.inc.remote(), timeout=LONG) == 1  # still the same instance


# --------------------------------------------------------------------------- lifetime


def test_a_handle_passed_to_a_task_outlives_the_drivers_copy(rt, tmp_path):
    gate = str(tmp_path / "gate")
    a = Counter.remote()
    pid = repartir.get(a.pid.remote(), timeout=LONG)
    ref = call_after_gate.remote(a, gate)
    del a
    gc.collect()
    Path(gate).touch()
    assert repartir.get(ref, timeout=LONG) == 1  # the actor was alive for the task's call
    del ref
    assert wait_until(lambda: gone(pid), timeout=LONG), "the actor outlived the task's copy"


def test_an_actor_lives_while_another_actor_holds_its_handle(rt):
    k = Keeper.remote()
    a = Counter.remote()
    actor_id = a._actor_id
    pid = repartir.get(a.pid.remote(), timeout=LONG)
    assert repartir.get(k.keep.remote(a), timeout=LONG)
    del a
    gc.collect()
    assert wait_until(lambda: not driver_holds(actor_id), timeout=LONG), holders(actor_id)
    assert [slot for slot, _ in holders(actor_id)] == [k._slot]  # only the keeper
    assert repartir.get(k.call.remote(), timeout=LONG) == 1
    assert not gone(pid)
    assert repartir.get(k.drop.remote(), timeout=LONG)
    assert wait_until(lambda: gone(pid), timeout=LONG), "the actor outlived its last handle"
    assert repartir.get(k.keep.remote(None), timeout=LONG)  # the keeper itself lives on


def test_detached_actor_survives_all_handles(rt):
    pid = repartir.get(create_named.remote("stays", lifetime="detached"), timeout=LONG)
    h = repartir.get_actor("stays")
    actor_id = h._actor_id
    del h
    gc.collect()
    assert wait_until(lambda: not holders(actor_id), timeout=LONG), holders(actor_id)
    assert driver._node.handles.count(actor_id) == 0  # no handle anywhere
    assert not gone(pid)
    assert repartir.get(lookup_in_task.remote("stays"), timeout=LONG) == 1
    h = repartir.get_actor("stays")
    assert h.state == "ALIVE"
    repartir.kill(h)
    assert wait_until(lambda: gone(pid), timeout=LONG)


def test_a_worker_that_dies_holding_a_handle_does_not_keep_the_actor(rt):
    a = Counter.remote()
    actor_id = a._actor_id
    pid = repartir.get(a.pid.remote(), timeout=LONG)
    ref = hold_then_die.remote(a)
    with pytest.raises(WorkerCrashedError):
        repartir.get(ref, timeout=LONG)
    del a, ref
    gc.collect()
    assert wait_until(lambda: gone(pid), timeout=LONG), holders(actor_id)


# --------------------------------------------------------------------------- get_actor, kill


def test_get_actor_from_a_task_and_from_actor_methods(rt):
    a = Counter.options(name="shared", namespace="ns").remote()
    assert repartir.get(lookup_in_task.remote("shared", "ns"), timeout=LONG) == 1
    m = Maker.remote()
    b = Counter.options(name="shared").remote(10)  # in the default namespace
    assert repartir.get(m.lookup.remote("shared"), timeout=LONG) == 11
    assert repartir.get(AsyncMaker.remote().lookup.remote("shared"), timeout=LONG) == 12
    assert repartir.get(a.inc.remote(), timeout=LONG) == 2
    with pytest.raises(ValueError, match="no live actor named 'nobody'"):
        repartir.get(lookup_in_task.remote("nobody"), timeout=LONG)
    del b


def test_kill_from_a_task_and_from_an_actor_method(rt):
    a = Counter.remote()
    assert repartir.get(a.inc.remote(), timeout=LONG) == 1
    assert repartir.get(kill_in_task.remote(a), timeout=LONG) == "DEAD"
    assert a.state == "DEAD"
    with pytest.raises(ActorDiedError, match=r"kill\(\)"):
        repartir.get(a.inc.remote(), timeout=LONG)
    b = Counter.options(name="victim").remote()
    assert repartir.get(Maker.remote().kill.remote(b), timeout=LONG) == "DEAD"
    with pytest.raises(ValueError):
        repartir.get_actor("victim")  # its name is free at once
    assert repartir.get(kill_in_task.remote(b), timeout=LONG) == "DEAD"  # dead: harmless
