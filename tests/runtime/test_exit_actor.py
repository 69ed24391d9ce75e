"""Ending an actor on purpose, as Ray does, for sync, threaded and async actors:

- ``repartir.actor.exit_actor()`` in a method: the method's ref and every later call raise
  ``ActorDiedError`` saying it exited on purpose (exit_actor); the process's ``atexit``
  handlers run (a handler writes a file, read after); never restarted, despite
  ``max_restarts``; in threaded and async actors a call already running ends first;
- ``handle.__ray_terminate__.remote()`` and ``handle.__repartir_terminate__.remote()``: the
  same, after the calls made before it;
- ``exit_actor()`` outside an actor method raises ``TypeError``; ``repartir.actor`` is a
  module (``repartir.actor.exit_actor``).

Blocking points wait for gate files, never for a fixed sleep.
"""

from __future__ import annotations

import asyncio
import gc
import atexit
import os
from pathlib import Path

import psutil
import pytest

import repartir
import repartir.actor
from repartir import ActorDiedError
from repartir.actor import exit_actor
from rtsupport import wait_file, wait_until

LONG = 60.0  # generous timeout for anything that must eventually happen (shared machine)


class _Base:
    def __init__(self, atexit_file):
        def bye():
            with open(atexit_file, "w") as f:
                f.write(f"bye from {os.getpid()}")
        atexit.register(bye)

    def pid(self):
        return os.getpid()

    def hello(self):
        return "hi"

    def quit(self):
        exit_actor()
        return "not reached"

    def quit_catching(self):
        try:
            exit_actor()
        except Exception:  # an ActorExit is a SystemExit: not caught here
            return "swallowed"

    def gated(self, started, gate):
        Path(started).touch()
        assert wait_file(gate, LONG), "gate never opened"
        return "ended"


@repartir.remote(max_restarts=2)
class Sync(_Base):
    pass


@repartir.remote(max_restarts=2)
class AsyncActor(_Base):
    async def hello(self):
        return "hi"

    async def quit(self):
        exit_actor()
        return "not reached"

    async def gated(self, started, gate):
        Path(started).touch()
        for _ in range(int(LONG / 0.01)):
            if os.path.exists(gate):
                return "ended"
            await asyncio.sleep(0.01)
        raise AssertionError("gate never opened")


def make(kind, atexit_file):
    if kind == "sync":
        return Sync.remote(atexit_file)
    if kind == "threaded":
        return Sync.options(max_concurrency=4).remote(atexit_file)
    return AsyncActor.remote(atexit_file)


KINDS = ["sync", "threaded", "async"]


def assert_exited(ref, match):
    with pytest.raises(ActorDiedError, match=match):
        repartir.get(ref, timeout=LONG)


@pytest.mark.parametrize("kind", KINDS)
def test_exit_actor_ends_the_actor_and_runs_atexit(rt, tmp_path, kind):
    atexit_file = str(tmp_path / "atexit")
    a = make(kind, atexit_file)
    pid = repartir.get(a.pid.remote(), timeout=LONG)
    assert repartir.get(a.hello.remote(), timeout=LONG) == "hi"
    quit_ref = a.quit.remote()
    assert_exited(quit_ref, r"exited on purpose: .*quit called repartir\.actor\.exit_actor\(\)")
    # the node reports the death once the process has exited: its atexit handlers ran
    assert Path(atexit_file).read_text() == f"bye from {pid}"
    assert_exited(a.hello.remote(), r"exited on purpose: .*exit_actor")
    assert a.state == "DEAD"  # max_restarts=2, not restarted


@pytest.mark.parametrize("kind", KINDS)
def test_atexit_runs_when_the_last_handle_is_dropped(rt, tmp_path, kind):
    """An actor whose last handle is gone ends after its earlier calls, as one that exits
    on purpose does: its ``atexit`` handlers run (newer Ray ends such actors gracefully)."""
    atexit_file = str(tmp_path / "atexit")
    a = make(kind, atexit_file)
    pid = repartir.get(a.pid.remote(), timeout=LONG)
    del a
    gc.collect()
    assert wait_until(lambda: not psutil.pid_exists(pid) or
                      psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, LONG)
    assert Path(atexit_file).read_text() == f"bye from {pid}"


@pytest.mark.parametrize("kind", ["sync", "threaded"])
def test_except_exception_does_not_swallow_exit_actor(rt, tmp_path, kind):
    a = make(kind, str(tmp_path / "atexit"))
    assert_exited(a.quit_catching.remote(), "exit_actor")
    assert a.state == "DEAD"


@pytest.mark.parametrize("kind", ["threaded", "async"])
def test_a_running_call_ends_before_the_actor_exits(rt, tmp_path, kind):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    atexit_file = str(tmp_path / "atexit")
    a = make(kind, atexit_file)
    running = a.gated.remote(started, gate)
    assert wait_file(started, LONG)
    quit_ref = a.quit.remote()
    # the actor waits for the running call: it stays alive until the gate opens
    assert not Path(atexit_file).exists()
    assert a.state == "ALIVE"
    Path(gate).touch()
    assert repartir.get(running, timeout=LONG) == "ended"
    assert_exited(quit_ref, "exit_actor")
    assert Path(atexit_file).exists()
    assert_exited(a.hello.remote(), "exit_actor")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["__ray_terminate__", "__repartir_terminate__"])
def test_terminate_runs_after_the_earlier_calls(rt, tmp_path, kind, name):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    atexit_file = str(tmp_path / "atexit")
    a = make(kind, atexit_file)
    before = [a.gated.remote(started, gate), a.hello.remote()]
    assert wait_file(started, LONG)
    term = getattr(a, name).remote()
    after = a.hello.remote()
    Path(gate).touch()
    assert repartir.get(before, timeout=LONG) == ["ended", "hi"]
    assert_exited(term, f"exited on purpose: .*{name} was called")
    assert_exited(after, "exited on purpose")
    assert Path(atexit_file).read_text().startswith("bye from")
    assert wait_until(lambda: a.state == "DEAD", LONG)


def test_terminate_takes_no_arguments(rt, tmp_path):
    a = make("sync", str(tmp_path / "atexit"))
    with pytest.raises(TypeError):
        a.__ray_terminate__.remote(1)
    assert repartir.get(a.hello.remote(), timeout=LONG) == "hi"


@repartir.remote(max_retries=0)
def exit_in_a_task():
    try:
        exit_actor()
    except TypeError as exc:
        return str(exc)
    return "no error"


def test_exit_actor_outside_an_actor_is_a_type_error(rt):
    with pytest.raises(TypeError, match="only be called inside an actor method"):
        exit_actor()
    assert "only be called inside an actor method" in repartir.get(exit_in_a_task.remote(),
                                                                   timeout=LONG)


def test_repartir_actor_is_a_module():
    assert repartir.actor.exit_actor is exit_actor
    assert repartir.actor.ActorHandle is repartir.ActorHandle
    assert issubclass(repartir.ActorExit, SystemExit)
