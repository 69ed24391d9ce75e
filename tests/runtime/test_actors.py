"""Actors (``docs/architecture.md``, "Actors"): stateful workers, async and threaded actors,
streaming generators, ``await ref`` / ``ref.future()``, and actor fault tolerance.

- ``@remote`` on a class, ``Cls.remote(...)`` -> ``ActorHandle``, ``h.m.remote()`` -> refs;
  one caller's calls run in submission order (also when an earlier call waits for an
  ``ObjectRef`` argument); handles passed to tasks and to other actors.
- Options: ``num_cpus`` (default 0), ``num_gpus``, ``resources``, ``name``, ``namespace``,
  ``lifetime="detached"``, ``get_if_exists``, ``max_restarts``, ``max_task_retries``,
  ``max_concurrency``; ``get_actor``; ``kill``; creation in tasks and actors too.
- Async actors (``async def``: concurrent calls, capped by ``max_concurrency``) and threaded
  actors (``max_concurrency > 1``).
- ``await ref`` in asyncio code, ``ref.future()``.
- Streaming generators (``num_returns="streaming"``) for tasks and actor methods: items
  arrive while the generator still runs; an error mid-stream; no option -> streams too.
- Lifetime: an actor ends once its last handle is gone, after the calls made before; a
  handle held in another process keeps it (more in ``test_actors_anywhere.py``).
- Faults: a constructor that raises or exits; an actor process SIGKILLed mid-call (restart,
  retry, state reset, ``ActorDiedError``); ``handle.state``.

Blocking points inside tasks/actors wait for *gate files* in ``tmp_path`` (shared with the
actor processes), never for a fixed sleep, so nothing here depends on the machine's speed.
After every test all actor processes of the test are killed and must be gone; at the end of
the module the conftest checks that no worker/actor process and no /dev/shm entry is left.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

import psutil
import pytest

import repartir
from repartir import ActorDiedError
from repartir.runtime import driver
import rtsupport
from rtsupport import REPO_ROOT, is_gone, wait_until

pytestmark = pytest.mark.timeout(120)

LONG = 60.0  # generous timeout for anything that must eventually happen (shared machine)
GATE_S = 60.0  # how long code inside an actor waits for a gate file before giving up
PROMPT = 3.0  # "promptly": once a death/restart is known, the answers follow this fast


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rt(_leaves_nothing_behind):
    """A node with 2 CPUs, 1 GPU and one custom resource, for the whole module."""
    if repartir.is_initialized():
        repartir.shutdown()
    repartir.init(num_cpus=2, num_gpus=1, resources={"licence": 1})
    _leaves_nothing_behind.record()
    yield repartir
    _leaves_nothing_behind.record()
    repartir.shutdown()


def _actor_procs() -> list:
    node = driver._node
    if node is None:
        return []
    with node._lock:
        return list(node.actor_procs.items())


@pytest.fixture(autouse=True)
def _no_actor_left(rt):
    """Kill every actor the test left alive and check that its process is gone."""
    yield
    procs = _actor_procs()
    for slot, _ in procs:
        driver._node.kill_actor(slot, no_restart=True)
    assert wait_until(lambda: all(p.poll() is not None for _, p in procs), timeout=30), \
        f"actor processes survived kill: {[p.pid for _, p in procs if p.poll() is None]}"


# --------------------------------------------------------------------------- helpers


def wait_file(path: str, timeout: float = GATE_S) -> bool:
    return rtsupport.wait_file(path, timeout)


def append_line(path: str, text: str) -> int:
    """Append a line; return the number of lines now in the file."""
    with open(path, "a") as f:
        f.write(text + "\n")
    with open(path) as f:
        return len(f.read().splitlines())


def lines(path) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


def kill_and_reap(pid: int) -> None:
    """SIGKILL the actor process ``pid`` and wait until it is gone."""
    p = psutil.Process(pid)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: is_gone(p), timeout=LONG)


# --------------------------------------------------------------------------- remote code


@repartir.remote
def square(x):
    return x * x


@repartir.remote
def boom(msg):
    raise ValueError(msg)


@repartir.remote
def gate_opened(gate: str, timeout: float) -> bool:
    """Whether ``gate`` appears within ``timeout`` seconds."""
    return wait_file(gate, timeout)


@repartir.remote
def gated_value(gate: str, value):
    """Return ``value`` once ``gate`` exists."""
    assert wait_file(gate), "gate never opened"
    return value


@repartir.remote
class Counter:
    def __init__(self, start=0, log=None):
        self.n = start
        self.log = log
        if log:
            append_line(log, f"init {os.getpid()}")

    def inc(self, d=1):
        self.n += d
        return self.n

    def value(self):
        return self.n

    def pid(self):
        return os.getpid()

    def fail(self, msg):
        raise ValueError(msg)

    def block(self, started: str, gate: str):
        """Announce the call started, wait for ``gate``; return the counter."""
        append_line(started, str(os.getpid()))
        assert wait_file(gate), "gate never opened"
        return self.n

    def pair(self):
        return self.n, self.n + 1

    @repartir.method(num_returns=3)
    def triple(self):
        return "a", "b", "c"


@repartir.remote
class Recorder:
    """Appends what each call brings to a list, in the order the calls run."""

    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)
        return len(self.items)

    def items_(self):
        return self.items


@repartir.remote
class Caller:
    """An actor holding another actor's handle."""

    def __init__(self, other):
        self.other = other

    def via_ctor_handle(self, x):
        return repartir.get(self.other.add.remote(x), timeout=LONG)

    def via_arg_handle(self, h, x):
        return repartir.get(h.add.remote(x), timeout=LONG)

    def create_actor(self):
        return Counter.remote()

    def ping(self):
        return "pong"


@repartir.remote
def call_actor_n_times(h, tag, n):
    """A task that calls an actor ``n`` times and waits for the results."""
    return repartir.get([h.add.remote((tag, i)) for i in range(n)], timeout=LONG)


@repartir.remote
def create_actor_in_task():
    return Counter.remote()


@repartir.remote
def add_through_handles(handles, x):
    return repartir.get([h.add.remote(x) for h in handles], timeout=LONG)


# --------------------------------------------------------------------------- basics


def test_actor_keeps_state_and_returns_refs(rt):
    a = Counter.remote(10)
    assert isinstance(a, repartir.ActorHandle)
    ref = a.inc.remote()
    assert isinstance(ref, repartir.ObjectRef)
    assert repartir.get(ref, timeout=LONG) == 11
    assert repartir.get([a.inc.remote(5), a.inc.remote(), a.value.remote()],
                        timeout=LONG) == [16, 17, 17]
    assert a.state == "ALIVE"
    # a second instance has its own state and its own process
    b = Counter.remote(0)
    assert repartir.get(b.inc.remote(), timeout=LONG) == 1
    assert (repartir.get(a.pid.remote(), timeout=LONG)
            != repartir.get(b.pid.remote(), timeout=LONG))
    assert repartir.get(a.value.remote(), timeout=LONG) == 17


def test_actor_misuse_is_reported(rt):
    with pytest.raises(TypeError, match=r"\.remote"):
        Counter()
    a = Counter.remote()
    with pytest.raises(TypeError, match=r"\.remote"):
        a.inc()
    with pytest.raises(AttributeError, match="no_such_method"):
        a.no_such_method.remote()
    # a method that raises: its own error, the actor lives on with its state
    assert repartir.get(a.inc.remote(), timeout=LONG) == 1
    with pytest.raises(ValueError, match="bad input") as info:
        repartir.get(a.fail.remote("bad input"), timeout=LONG)
    assert isinstance(info.value, repartir.TaskError)
    assert repartir.get(a.inc.remote(), timeout=LONG) == 2
    assert a.state == "ALIVE"


def test_num_returns_by_options_and_by_method_decorator(rt):
    a = Counter.remote(4)
    r1, r2 = a.pair.options(num_returns=2).remote()
    assert repartir.get([r1, r2], timeout=LONG) == [4, 5]
    refs = a.triple.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert repartir.get(refs, timeout=LONG) == ["a", "b", "c"]
    # the plain method still returns one ref (the tuple)
    assert repartir.get(a.pair.remote(), timeout=LONG) == (4, 5)


def test_calls_of_one_caller_run_in_submission_order(rt):
    rec = Recorder.remote()
    refs = [rec.add.remote(i) for i in range(300)]
    assert repartir.get(refs, timeout=LONG) == list(range(1, 301))
    assert repartir.get(rec.items_.remote(), timeout=LONG) == list(range(300))


def test_call_waiting_for_a_ref_argument_holds_back_later_calls(rt, tmp_path):
    gate = str(tmp_path / "gate")
    rec = Recorder.remote()
    assert repartir.get(rec.add.remote("first"), timeout=LONG) == 1
    slow = gated_value.remote(gate, "from-ref")
    r_ref = rec.add.remote(slow)  # waits for its argument
    r_later = [rec.add.remote(x) for x in ("b", "c")]
    # while the argument is not ready, the later calls must not run
    ready, _ = repartir.wait(r_later, num_returns=1, timeout=0.5)
    assert ready == []
    Path(gate).touch()
    assert repartir.get([r_ref, *r_later], timeout=LONG) == [2, 3, 4]
    assert repartir.get(rec.items_.remote(), timeout=LONG) == ["first", "from-ref", "b", "c"]


def test_handles_passed_to_tasks_and_to_other_actors(rt):
    rec = Recorder.remote()
    # to a task: its calls arrive in its submission order, interleaved with the driver's
    from_task = call_actor_n_times.remote(rec, "t", 40)
    driver_refs = [rec.add.remote(("d", i)) for i in range(40)]
    repartir.get([from_task, *driver_refs], timeout=LONG)
    items = repartir.get(rec.items_.remote(), timeout=LONG)
    assert len(items) == 80
    for tag in ("t", "d"):
        assert [i for t, i in items if t == tag] == list(range(40))
    # nested in a list argument of a task
    assert repartir.get(add_through_handles.remote([rec, rec], "n"), timeout=LONG) == [81, 82]
    # to another actor: in its constructor and as a method argument
    caller = Caller.remote(rec)
    assert repartir.get(caller.via_ctor_handle.remote("x"), timeout=LONG) == 83
    assert repartir.get(caller.via_arg_handle.remote(rec, "y"), timeout=LONG) == 84
    assert repartir.get(rec.items_.remote(), timeout=LONG)[-4:] == ["n", "n", "x", "y"]


def test_actors_are_created_in_tasks_and_actor_methods_too(rt):
    # (was: "created from the driver only"; tests/runtime/test_actors_anywhere.py has more)
    made_in_task = repartir.get(create_actor_in_task.remote(), timeout=LONG)
    assert repartir.get(made_in_task.inc.remote(), timeout=LONG) == 1
    caller = Caller.remote(None)
    made_in_actor = repartir.get(caller.create_actor.remote(), timeout=LONG)
    assert made_in_actor != made_in_task
    assert repartir.get(made_in_actor.inc.remote(), timeout=LONG) == 1
    assert repartir.get(caller.ping.remote(), timeout=LONG) == "pong"


# --------------------------------------------------------------------------- options


def test_invalid_actor_options(rt):
    with pytest.raises(ValueError, match="unknown"):
        Counter.options(no_such_option=1)
    with pytest.raises(ValueError, match="max_concurrency"):
        Counter.options(max_concurrency=0)
    with pytest.raises(ValueError, match="max_restarts"):
        Counter.options(max_restarts=-2)
    with pytest.raises(ValueError, match="lifetime"):
        Counter.options(lifetime="forever")
    with pytest.raises(repartir.InfeasibleTaskError, match="GPU"):
        Counter.options(num_gpus=2).remote()
    with pytest.raises(repartir.InfeasibleTaskError):
        Counter.options(resources={"unknown-thing": 1}).remote()


def _available():
    a = repartir.available_resources()
    return a["CPU"], a["GPU"], a["licence"]


def test_actor_resources_are_reserved_while_it_lives(rt):
    assert wait_until(lambda: _available() == (2.0, 1.0, 1.0), timeout=LONG), _available()
    plain = Counter.remote()  # num_cpus defaults to 0
    assert repartir.get(plain.inc.remote(), timeout=LONG) == 1
    assert _available() == (2.0, 1.0, 1.0)
    big = Counter.options(num_cpus=1, num_gpus=1, resources={"licence": 1}).remote()
    assert repartir.get(big.inc.remote(), timeout=LONG) == 1
    assert _available() == (1.0, 0.0, 0.0)
    # tasks still run on the remaining CPU
    assert repartir.get(square.remote(7), timeout=LONG) == 49
    repartir.kill(big)
    assert wait_until(lambda: _available() == (2.0, 1.0, 1.0), timeout=LONG), _available()


def test_an_actor_waits_for_its_resources(rt):
    a, b = (Counter.options(num_cpus=1).remote() for _ in range(2))  # every CPU
    assert repartir.get([a.inc.remote(), b.inc.remote()], timeout=LONG) == [1, 1]
    c = Counter.options(num_cpus=1).remote(10)
    call = c.inc.remote()
    ready, _ = repartir.wait([call], timeout=0.5)
    assert not ready and c.state == "STARTING"  # pending, as in Ray: no oversubscription
    repartir.kill(a)
    assert repartir.get(call, timeout=LONG) == 11  # started once a CPU came back
    d = Counter.options(num_cpus=1).remote()
    doomed = d.inc.remote()
    repartir.kill(d)  # killed before it could start: its calls fail, nothing is released
    with pytest.raises(ActorDiedError):
        repartir.get(doomed, timeout=LONG)
    repartir.kill(b)
    repartir.kill(c)
    assert wait_until(lambda: _available() == (2.0, 1.0, 1.0), timeout=LONG), _available()


def test_actors_waiting_for_resources_start_oldest_first(rt, tmp_path):
    """Several actors wait for the one licence: each time it comes back, the one created
    first among those still waiting starts (docs/architecture.md, as in Ray)."""
    log = str(tmp_path / "starts")
    holder = Counter.options(resources={"licence": 1}).remote(0, log)
    assert repartir.get(holder.inc.remote(), timeout=LONG) == 1
    waiting = [Counter.options(resources={"licence": 1}).remote(10 * (k + 1), log)
               for k in range(4)]
    calls = [w.inc.remote() for w in waiting]
    ready, _ = repartir.wait(calls, num_returns=1, timeout=0.5)
    assert not ready and len(lines(log)) == 1  # all four wait
    order = []
    previous = holder
    for _ in waiting:
        repartir.kill(previous)  # gives the licence back: exactly one waiting actor starts
        ready, _ = repartir.wait(calls, num_returns=len(order) + 1, timeout=LONG)
        assert len(ready) == len(order) + 1, "no waiting actor started"
        k = next(i for i, c in enumerate(calls) if c in ready and i not in order)
        order.append(k)
        assert repartir.get(calls[k], timeout=LONG) == 10 * (k + 1) + 1
        previous = waiting[k]
    repartir.kill(previous)
    assert order == [0, 1, 2, 3], f"start order of the waiting actors: {order}"
    assert wait_until(lambda: _available() == (2.0, 1.0, 1.0), timeout=LONG), _available()


@repartir.remote
class Stateful:
    def state(self):
        return "user state"


def test_force_cancel_of_an_actor_call_is_refused_and_user_methods_win(rt, tmp_path):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    a = Counter.remote()
    call = a.block.remote(started, gate)
    with pytest.raises(ValueError, match="repartir.kill"):
        repartir.cancel(call, force=True)
    Path(gate).touch()
    assert repartir.get(call, timeout=LONG) == 0
    s = Stateful.remote()
    assert repartir.get(s.state.remote(), timeout=LONG) == "user state"


def test_tasks_starved_by_actors_get_a_warning(rt):
    hogs = [Counter.options(num_cpus=1).remote() for _ in range(2)]  # every CPU of the node
    assert repartir.get([h.inc.remote() for h in hogs], timeout=LONG) == [1, 1]
    driver._node.stuck_warning_s = 0.2
    try:
        with pytest.warns(RuntimeWarning, match="none can start.*2 live actor") as seen:
            ref = square.remote(4)
            assert wait_until(lambda: len(seen) > 0, LONG)  # the node's supervisor warns
    finally:
        driver._node.stuck_warning_s = 10.0
    del hogs
    gc.collect()
    assert repartir.get(ref, timeout=LONG) == 16  # runs once the actors are gone


def test_named_actors_namespaces_and_get_if_exists(rt):
    a = Counter.options(name="counter").remote(1)
    assert repartir.get(a.inc.remote(), timeout=LONG) == 2
    same = repartir.get_actor("counter")
    assert same == a
    assert repartir.get(same.inc.remote(), timeout=LONG) == 3
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="counter").remote()
    again = Counter.options(name="counter", get_if_exists=True).remote(100)
    assert again == a
    assert repartir.get(again.inc.remote(), timeout=LONG) == 4  # not a new instance
    # the same name in another namespace is another actor
    other = Counter.options(name="counter", namespace="elsewhere").remote(50)
    assert other != a
    assert repartir.get_actor("counter", namespace="elsewhere") == other
    assert repartir.get(repartir.get_actor("counter", "elsewhere").inc.remote(),
                        timeout=LONG) == 51
    with pytest.raises(ValueError, match="no-such-actor"):
        repartir.get_actor("no-such-actor")
    with pytest.raises(ValueError):
        repartir.get_actor("counter", namespace="third")
    # after kill the name is free again, at once
    repartir.kill(a)
    assert a.state == "DEAD"
    with pytest.raises(ValueError):
        repartir.get_actor("counter")
    b = Counter.options(name="counter").remote(7)
    assert b != a
    assert repartir.get(repartir.get_actor("counter").inc.remote(), timeout=LONG) == 8


def test_detached_actor_outlives_its_handle(rt):
    h = Counter.options(name="keeper", lifetime="detached").remote(41)
    assert repartir.get(h.inc.remote(), timeout=LONG) == 42
    del h
    gc.collect()
    time.sleep(0.2)
    h2 = repartir.get_actor("keeper")
    assert h2.state == "ALIVE"
    assert repartir.get(h2.inc.remote(), timeout=LONG) == 43


# --------------------------------------------------------------------------- lifetime


def _gone(pid: int) -> bool:
    try:
        return is_gone(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


def test_actor_ends_when_its_last_handle_is_dropped(rt, tmp_path):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    a = Counter.options(num_cpus=1).remote(10)
    pid = repartir.get(a.pid.remote(), timeout=LONG)
    blocked = a.block.remote(started, gate)  # running when the handle goes
    later = [a.inc.remote() for _ in range(3)]  # queued behind it
    del a
    gc.collect()
    assert wait_until(lambda: lines(started), timeout=LONG)
    time.sleep(0.3)
    assert not _gone(pid), "the actor stopped before the calls made before its end ran"
    Path(gate).touch()
    assert repartir.get(later, timeout=LONG) == [11, 12, 13]  # every call ran, in order
    assert repartir.get(blocked, timeout=LONG) == 10
    assert wait_until(lambda: _gone(pid), timeout=LONG), "the actor outlived its handles"
    assert wait_until(lambda: _available() == (2.0, 1.0, 1.0), timeout=LONG), _available()
    assert repartir.get(later, timeout=LONG) == [11, 12, 13]  # results outlive the actor


def test_threaded_and_async_actors_finish_running_calls_before_ending(rt):
    for cls, opts in ((Meter, {"max_concurrency": 3}), (AsyncMeter, {})):
        m = cls.options(**opts).remote()
        refs = [m.hold.remote(3, LONG) for _ in range(3)]
        del m
        gc.collect()
        assert repartir.get(refs, timeout=LONG) == [3, 3, 3]
    assert wait_until(lambda: not _actor_procs(), timeout=LONG), _actor_procs()


def test_handles_share_the_count_and_named_actors_end_too(rt):
    a = Counter.options(name="short-lived").remote(1)
    b = repartir.get_actor("short-lived")  # another handle of the same actor
    pid = repartir.get(a.pid.remote(), timeout=LONG)
    del a
    gc.collect()
    time.sleep(0.3)
    assert repartir.get(b.inc.remote(), timeout=LONG) == 2  # b still keeps it alive
    del b
    gc.collect()
    assert wait_until(lambda: _gone(pid), timeout=LONG)
    with pytest.raises(ValueError):
        repartir.get_actor("short-lived")


def test_a_handle_held_by_another_actor_keeps_its_actor(rt):
    r = Recorder.remote()
    c = Caller.remote(r)  # r's handle now lives in c's process too
    assert repartir.get(c.via_ctor_handle.remote(5), timeout=LONG) == 1
    del r
    gc.collect()
    time.sleep(0.3)
    assert repartir.get(c.via_ctor_handle.remote(6), timeout=LONG) == 2


def test_kill(rt, tmp_path):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    a = Counter.remote()
    running = a.block.remote(started, gate)
    assert wait_until(lambda: lines(started), timeout=LONG)
    repartir.kill(a)
    with pytest.raises(ActorDiedError, match=r"kill\(\)"):
        repartir.get(running, timeout=LONG)
    assert wait_until(lambda: a.state == "DEAD", timeout=LONG)
    with pytest.raises(ActorDiedError, match=r"kill\(\)"):
        repartir.get(a.inc.remote(), timeout=LONG)
    repartir.kill(a)  # killing a dead actor is harmless
    with pytest.raises(TypeError):
        repartir.kill("not a handle")
    # no_restart=False: an actor with restarts left comes back, state reset
    log = str(tmp_path / "log")
    b = Counter.options(max_restarts=1).remote(0, log)
    assert repartir.get(b.inc.remote(), timeout=LONG) == 1
    old_pid = repartir.get(b.pid.remote(), timeout=LONG)
    repartir.kill(b, no_restart=False)
    assert repartir.get(b.inc.remote(), timeout=LONG) == 1
    assert repartir.get(b.pid.remote(), timeout=LONG) != old_pid
    assert len(lines(log)) == 2
    assert b.state == "ALIVE"


def test_killed_actors_free_their_slot(tmp_path):
    """With room for one actor, kill it, and another can be created."""
    script = textwrap.dedent("""
        import repartir
        repartir.init(num_cpus=1)

        @repartir.remote
        class A:
            def f(self):
                return 1

        a = A.remote()
        assert repartir.get(a.f.remote(), timeout=60) == 1
        repartir.kill(a)
        import time
        end = time.monotonic() + 60
        while a.state != "DEAD" and time.monotonic() < end:
            time.sleep(0.01)
        b = A.remote()
        assert repartir.get(b.f.remote(), timeout=60) == 1
        repartir.shutdown()
        print("OK")
    """)
    env = dict(os.environ, REPARTIR_MAX_ACTORS="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, check=False,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


# --------------------------------------------------------------------------- concurrency


@repartir.remote
class Meter:
    """Counts calls running at once; ``k``-rendezvous makes peaks deterministic."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.arrived = 0

    def _enter(self):
        with self.lock:
            self.active += 1
            self.arrived += 1
            self.peak = max(self.peak, self.active)

    def _leave(self):
        with self.lock:
            self.active -= 1

    def gated(self, started, gate, done):
        """Announce the call, wait for ``gate``, record that the last line ran."""
        append_line(started, "started")
        assert wait_file(gate), "gate never opened"
        append_line(done, "ended")
        return "ended"

    def hold(self, k, timeout):
        """Threaded/sync: wait (up to ``timeout``) until ``k`` calls run at once."""
        self._enter()
        try:
            end = time.monotonic() + timeout
            while self.active < k and time.monotonic() < end:
                time.sleep(0.005)
            time.sleep(0.02)
            return self.peak
        finally:
            self._leave()

    def peak_(self):
        return self.peak


@repartir.remote
class AsyncMeter:
    def __init__(self):
        self.active = 0
        self.peak = 0
        self.arrived = 0

    async def hold(self, k, timeout):
        self.active += 1
        self.arrived += 1
        self.peak = max(self.peak, self.active)
        try:
            end = time.monotonic() + timeout
            while self.active < k and time.monotonic() < end:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.02)
            return self.peak
        finally:
            self.active -= 1

    async def gated(self, started, gate, done):
        append_line(started, "started")
        end = time.monotonic() + GATE_S
        while not os.path.exists(gate) and time.monotonic() < end:
            await asyncio.sleep(0.01)
        append_line(done, "ended")
        return "ended"

    async def meet(self, n, timeout):
        """True once ``n`` calls have arrived (they must be running concurrently)."""
        self.arrived += 1
        end = time.monotonic() + timeout
        while self.arrived < n and time.monotonic() < end:
            await asyncio.sleep(0.005)
        return self.arrived >= n

    async def square_via_task(self, x):
        return await square.remote(x)  # await a ref inside the actor's event loop

    async def peak_(self):
        return self.peak


def test_plain_actor_runs_one_call_at_a_time(rt):
    m = Meter.remote()
    # each call would wait (0.3 s) for a second one to join it: none may
    assert repartir.get([m.hold.remote(2, 0.3) for _ in range(4)], timeout=LONG) == [1] * 4


def test_threaded_actor_runs_up_to_max_concurrency_calls(rt):
    m = Meter.options(max_concurrency=3).remote()
    peaks = repartir.get([m.hold.remote(3, 30) for _ in range(9)], timeout=LONG)
    assert max(peaks) == 3
    assert repartir.get(m.peak_.remote(), timeout=LONG) == 3


def test_async_actor_runs_calls_concurrently(rt):
    m = AsyncMeter.remote()  # default max_concurrency: 1000
    n = 60
    assert repartir.get([m.meet.remote(n, 30) for _ in range(n)], timeout=LONG) == [True] * n
    assert repartir.get([m.square_via_task.remote(i) for i in range(5)],
                        timeout=LONG) == [0, 1, 4, 9, 16]


def test_async_actor_respects_max_concurrency(rt):
    m = AsyncMeter.options(max_concurrency=2).remote()
    peaks = repartir.get([m.hold.remote(2, 30) for _ in range(6)], timeout=LONG)
    assert max(peaks) == 2
    assert repartir.get(m.peak_.remote(), timeout=LONG) == 2


# --------------------------------------------------------------------------- await, future


def test_await_refs_in_asyncio_code(rt, tmp_path):
    a = Counter.remote(0)

    async def main():
        values = await asyncio.gather(*[square.remote(i) for i in range(10)])
        first = await a.inc.remote(2)
        second = await a.inc.remote(3)
        with pytest.raises(ValueError, match="awaited failure"):
            await boom.remote("awaited failure")
        # the loop stays free while a ref is pending: the awaited task waits for a gate that
        # only another coroutine of this loop opens, after the await has begun (a blocking
        # await would hold the loop until the task gave up and returned False)
        pending = asyncio.ensure_future(_await(gate_opened.remote(gate, 20.0)))
        await asyncio.sleep(0.05)
        awaiting = not pending.done()
        Path(gate).touch()
        return values, first, second, awaiting, await pending

    async def _await(ref):
        return await ref

    gate = str(tmp_path / "loop-gate")
    values, first, second, awaiting, opened = asyncio.run(asyncio.wait_for(main(), LONG))
    assert values == [i * i for i in range(10)]
    assert (first, second) == (2, 5)
    assert awaiting, "the awaited ref was ready before its gate opened"
    assert opened is True, "await blocked the event loop until the task gave up on its gate"


def test_ref_future(rt):
    fut = square.remote(12).future()
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=LONG) == 144
    bad = boom.remote("future failure").future()
    exc = bad.exception(timeout=LONG)
    assert isinstance(exc, ValueError) and "future failure" in str(exc)
    with pytest.raises(ValueError):
        bad.result(timeout=LONG)
    a = Counter.remote(0)
    futs = [a.inc.remote().future() for _ in range(5)]
    _, not_done = concurrent.futures.wait(futs, timeout=LONG)
    assert not not_done
    assert sorted(f.result() for f in futs) == [1, 2, 3, 4, 5]
    seen = []
    f = square.remote(3).future()
    f.add_done_callback(lambda ff: seen.append(ff.result()))
    f.result(timeout=LONG)
    assert wait_until(lambda: seen == [9], timeout=10)


# --------------------------------------------------------------------------- streaming


@repartir.remote
def gated_gen(n, gate):
    """Yield 0, then wait for ``gate``, then yield 1..n-1."""
    yield 0
    assert wait_file(gate), "gate never opened"
    yield from range(1, n)


@repartir.remote
def failing_gen(n):
    yield from range(n)
    raise ValueError(f"failed after {n} items")


@repartir.remote
def range_gen(n):
    yield from range(n)


@repartir.remote
def big_gen(n, size):
    for i in range(n):
        yield bytes([i]) * size


@repartir.remote
class Streamer:
    def gen(self, n, gate):
        yield "first"
        assert wait_file(gate), "gate never opened"
        yield from range(1, n)

    def failing(self, n):
        yield from range(n)
        raise KeyError("stream broke")

    def pid(self):
        return os.getpid()

    @repartir.method(num_returns="streaming")
    def declared(self, n):
        for i in range(n):
            yield i * 10

    def alive(self):
        return True


def test_streaming_task_items_arrive_before_the_generator_finishes(rt, tmp_path):
    gate = str(tmp_path / "gate")
    gen = gated_gen.options(num_returns="streaming").remote(4, gate)
    first = next(gen)  # the generator is blocked on the gate until we open it
    assert isinstance(first, repartir.ObjectRef)
    assert repartir.get(first, timeout=LONG) == 0
    assert not gen.completed()
    Path(gate).touch()
    assert [repartir.get(r, timeout=LONG) for r in gen] == [1, 2, 3]
    assert gen.completed()
    with pytest.raises(StopIteration):
        next(gen)


def test_streaming_large_items(rt):
    gen = big_gen.options(num_returns="streaming").remote(5, 300_000)
    values = [repartir.get(r, timeout=LONG) for r in gen]
    assert [bytes(v) == bytes([i]) * 300_000 for i, v in enumerate(values)] == [True] * 5


def test_streaming_error_mid_stream(rt):
    refs = list(failing_gen.options(num_returns="streaming").remote(2))
    assert len(refs) == 3
    assert repartir.get(refs[:2], timeout=LONG) == [0, 1]
    with pytest.raises(ValueError, match="failed after 2 items"):
        repartir.get(refs[2], timeout=LONG)


@repartir.remote
def endless_gen():
    i = 0
    while True:
        yield i
        i += 1


def test_streaming_more_items_than_return_ids(rt):
    n = 70_000  # return ids of a task stop at 65,534; stream items take fresh ids
    gen = range_gen.options(num_returns="streaming").remote(n)
    total = count = 0
    for ref in gen:
        total += repartir.get(ref, timeout=LONG)
        count += 1
    assert (count, total) == (n, n * (n - 1) // 2)
    assert repartir.get(square.remote(3), timeout=LONG) == 9  # the session is fine


def test_cancel_a_streaming_task(rt):
    gen = endless_gen.options(num_returns="streaming").remote()
    assert repartir.get(next(gen), timeout=LONG) == 0
    repartir.cancel(gen)
    refs = list(gen)  # ends: the items made before the cancel, then the error
    with pytest.raises(repartir.TaskCancelledError):
        repartir.get(refs[-1], timeout=LONG)
    assert wait_until(lambda: repartir.available_resources()["CPU"] == 2.0, timeout=LONG)
    with pytest.raises(TypeError, match="ObjectRefGenerator"):
        repartir.cancel("not a ref")


@repartir.remote
def arrays_gen(n, gate, sent, end_gate):
    for i in range(n):
        if i == 1:
            assert wait_file(gate), "gate never opened"
        yield np.full(100_000, i)
    Path(sent).touch()
    assert wait_file(end_gate), "end gate never opened"  # the task still runs meanwhile


def test_items_of_a_dropped_generator_are_freed_as_they_come(rt, tmp_path):
    gate, sent, end_gate = (str(tmp_path / n) for n in ("gate", "sent", "end"))
    base = driver.arena_bytes_by_owner()["driver"]
    gen = arrays_gen.options(num_returns="streaming").remote(30, gate, sent, end_gate)
    assert repartir.get(next(gen), timeout=LONG)[0] == 0
    del gen
    gc.collect()
    Path(gate).touch()  # 29 more items of 800 kB arrive after the drop
    assert wait_until(lambda: os.path.exists(sent), LONG)
    # while the task still runs, the items it sent are gone (the function's blob stays)
    # (within 20 s: the task waits up to 60 s for the end gate, then would free them anyway)
    assert wait_until(lambda: driver.arena_bytes_by_owner()["driver"] < base + 100_000, 20), \
        driver.arena_bytes_by_owner()
    Path(end_gate).touch()
    assert wait_until(lambda: repartir.available_resources()["CPU"] == 2.0, LONG)


def test_cancel_of_a_running_actor_call(rt, tmp_path):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    a = Counter.remote(7)
    call = a.block.remote(started, gate)
    assert wait_until(lambda: lines(started), timeout=LONG)
    repartir.cancel(call)  # raised inside the call; the actor and its state survive
    with pytest.raises(repartir.TaskCancelledError):
        repartir.get(call, timeout=LONG)
    assert repartir.get(a.inc.remote(), timeout=LONG) == 8


def test_calls_behind_a_cancelled_call_waiting_for_its_argument_go(rt, tmp_path):
    """A call waiting for an argument holds the calls behind it (they keep submission
    order); cancelling it lets them go at once, before that argument is ready."""
    gate = str(tmp_path / "gate")
    a = Counter.remote(0)
    slow = gated_value.remote(gate, 5)
    waiting = a.inc.remote(slow)
    behind = [a.inc.remote() for _ in range(3)]
    repartir.cancel(waiting)
    with pytest.raises(repartir.TaskCancelledError):
        repartir.get(waiting, timeout=LONG)
    assert repartir.get(behind, timeout=LONG) == [1, 2, 3]
    assert not os.path.exists(gate)  # the argument never became ready meanwhile
    Path(gate).touch()
    assert repartir.get(slow, timeout=LONG) == 5


@pytest.mark.parametrize("cls", ["threaded", "async"])
def test_cancel_of_a_running_call_of_a_threaded_or_async_actor_lets_it_end(rt, tmp_path, cls):
    """Documented (``repartir.cancel``): such a call cannot be interrupted and ends normally --
    it runs to its last line and ``get`` returns its value; the actor lives on."""
    started, gate, done = (str(tmp_path / n) for n in ("started", "gate", "done"))
    m = (Meter.options(max_concurrency=2) if cls == "threaded" else AsyncMeter).remote()
    call = m.gated.remote(started, gate, done)
    assert wait_until(lambda: lines(started), timeout=LONG)  # running, not queued
    repartir.cancel(call)
    Path(gate).touch()
    assert repartir.get(call, timeout=LONG) == "ended"
    assert lines(done) == ["ended"]
    assert m.state == "ALIVE" and repartir.get(m.peak_.remote(), timeout=LONG) == 0


def test_generator_streams_without_the_option(rt):
    """As in Ray: a generator function or method streams unless num_returns says otherwise
    (tests/runtime/test_generators.py covers num_returns=N and "dynamic")."""
    refs = list(failing_gen.remote(2))
    assert repartir.get(refs[:2], timeout=LONG) == [0, 1]
    with pytest.raises(ValueError, match="failed after 2 items"):
        repartir.get(refs[2], timeout=LONG)
    s = Streamer.remote()
    refs = list(s.failing.remote(2))
    assert repartir.get(refs[:2], timeout=LONG) == [0, 1]
    with pytest.raises(KeyError, match="stream broke"):
        repartir.get(refs[2], timeout=LONG)
    assert repartir.get(s.alive.remote(), timeout=LONG) is True


def test_streaming_actor_method(rt, tmp_path):
    gate = str(tmp_path / "gate")
    s = Streamer.remote()
    gen = s.gen.options(num_returns="streaming").remote(3, gate)
    assert repartir.get(next(gen), timeout=LONG) == "first"
    assert not gen.completed()
    Path(gate).touch()
    assert [repartir.get(r, timeout=LONG) for r in gen] == [1, 2]
    # declared with @repartir.method(num_returns="streaming")
    assert [repartir.get(r, timeout=LONG) for r in s.declared.remote(3)] == [0, 10, 20]
    # an error mid-stream
    refs = list(s.failing.options(num_returns="streaming").remote(2))
    assert repartir.get(refs[:2], timeout=LONG) == [0, 1]
    with pytest.raises(KeyError, match="stream broke"):
        repartir.get(refs[2], timeout=LONG)
    assert repartir.get(s.alive.remote(), timeout=LONG) is True


def test_streaming_actor_killed_mid_stream(rt, tmp_path):
    s = Streamer.remote()
    pid = repartir.get(s.pid.remote(), timeout=LONG)
    gen = s.gen.options(num_returns="streaming").remote(5, str(tmp_path / "never"))
    assert repartir.get(next(gen), timeout=LONG) == "first"
    kill_and_reap(pid)
    rest = list(gen)  # ends: the error as the last ref
    assert len(rest) == 1
    with pytest.raises(ActorDiedError, match="SIGKILL"):
        repartir.get(rest[0], timeout=LONG)


@repartir.remote
class AsyncStreamer:
    async def agen(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async def fail(self):
        raise KeyError("async failure")


def test_streaming_async_generator_method(rt):
    s = AsyncStreamer.remote()
    with pytest.raises(KeyError, match="async failure"):
        repartir.get(s.fail.remote(), timeout=LONG)
    gen = s.agen.options(num_returns="streaming").remote(3)
    assert [repartir.get(r, timeout=LONG) for r in gen] == [0, 1, 2]


# --------------------------------------------------------------------------- faults


@repartir.remote
class BadInit:
    def __init__(self, how, arg=None):
        if how == "raise":
            raise ValueError("cannot configure the widget")
        if how == "exit":
            os._exit(3)
        if how == "sys.exit":
            sys.exit(4)

    def m(self):
        return "ran"


@pytest.mark.parametrize("how, cause", [
    ("raise", "cannot configure the widget"),
    ("exit", "exit code 3"),
    ("sys.exit", "SystemExit"),
])
def test_constructor_failure_kills_the_actor(rt, how, cause):
    h = BadInit.remote(how)
    pending = [h.m.remote() for _ in range(3)]  # sent before the constructor ends
    for ref in pending:
        with pytest.raises(ActorDiedError, match=cause):
            repartir.get(ref, timeout=LONG)
    assert h.state == "DEAD"
    with pytest.raises(ActorDiedError, match=cause):
        repartir.get(h.m.remote(), timeout=LONG)


def test_constructor_that_raises_is_not_restarted(rt):
    h = BadInit.options(max_restarts=3).remote("raise")
    with pytest.raises(ActorDiedError, match="cannot configure the widget"):
        repartir.get(h.m.remote(), timeout=LONG)
    assert h.state == "DEAD"


def test_constructor_failure_after_waiting_for_a_ref_argument(rt, tmp_path):
    gate = str(tmp_path / "gate")
    arg = gated_value.remote(gate, 1)  # kept alive: see the test below
    h = BadInit.remote("raise", arg)
    pending = [h.m.remote() for _ in range(3)]
    time.sleep(0.3)  # the calls reach the actor while its constructor waits
    Path(gate).touch()
    assert wait_until(lambda: h.state == "DEAD", timeout=LONG)
    ready, _ = repartir.wait(pending, num_returns=3, timeout=PROMPT)
    assert len(ready) == 3, "calls sent during the constructor never got an answer"
    for ref in pending:
        with pytest.raises(ActorDiedError, match="cannot configure"):
            repartir.get(ref, timeout=1)


@repartir.remote
class Holder:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


def test_constructor_ref_argument_is_resolved(rt, tmp_path):
    gate = str(tmp_path / "gate")
    arg = gated_value.remote(gate, {"weights": [1, 2, 3]})
    h = Holder.remote(arg)
    Path(gate).touch()
    assert repartir.get(h.get.remote(), timeout=LONG) == {"weights": [1, 2, 3]}
    assert repartir.get(Holder.remote(repartir.put(b"x" * 200_000)).get.remote(),
                        timeout=LONG) == b"x" * 200_000


def test_constructor_ref_argument_is_kept_alive_by_the_actor(rt, tmp_path):
    gate = str(tmp_path / "gate")
    h = Holder.remote(gated_value.remote(gate, 7))  # the caller keeps no ref
    gc.collect()
    time.sleep(0.2)
    Path(gate).touch()
    assert wait_until(lambda: h.state in ("ALIVE", "DEAD"), timeout=LONG)
    assert h.state == "ALIVE", "the constructor lost its argument"
    assert repartir.get(h.get.remote(), timeout=LONG) == 7


def test_states_starting_and_alive(rt, tmp_path):
    gate = str(tmp_path / "gate")
    h = GatedInit.remote(gate, str(tmp_path / "log"))
    assert wait_until(lambda: len(lines(tmp_path / "log")) == 1, timeout=LONG)
    assert h.state == "STARTING"  # the constructor is waiting for the gate
    Path(gate).touch()
    assert repartir.get(h.pid.remote(), timeout=LONG) > 0
    assert h.state == "ALIVE"
    repartir.kill(h)
    assert wait_until(lambda: h.state == "DEAD", timeout=LONG)


@repartir.remote
class GatedInit:
    """The constructor logs itself; on its ``block_on``-th run it waits for ``gate``."""

    def __init__(self, gate, log, block_on=1):
        n = append_line(log, str(os.getpid()))
        if n == block_on:
            assert wait_file(gate), "gate never opened"
        self.n = 0

    def pid(self):
        return os.getpid()

    def inc(self):
        self.n += 1
        return self.n


def test_state_restarting(rt, tmp_path):
    gate, log = str(tmp_path / "gate"), str(tmp_path / "log")
    h = GatedInit.options(max_restarts=1).remote(gate, log, 2)
    pid = repartir.get(h.pid.remote(), timeout=LONG)
    assert h.state == "ALIVE"
    kill_and_reap(pid)
    # the second constructor now waits for the gate: the actor is restarting
    assert wait_until(lambda: len(lines(log)) == 2, timeout=LONG)
    try:
        assert h.state == "RESTARTING"
    finally:
        Path(gate).touch()
    assert repartir.get(h.inc.remote(), timeout=LONG) == 1
    assert h.state == "ALIVE"


def test_killed_mid_call_restarts_and_retries(rt, tmp_path):
    log, started, gate = (str(tmp_path / n) for n in ("log", "started", "gate"))
    a = Counter.options(max_restarts=1, max_task_retries=1).remote(0, log)
    assert repartir.get([a.inc.remote(), a.inc.remote()], timeout=LONG) == [1, 2]
    pid = repartir.get(a.pid.remote(), timeout=LONG)
    ref = a.block.remote(started, gate)
    assert wait_until(lambda: lines(started) == [str(pid)], timeout=LONG)
    kill_and_reap(pid)
    Path(gate).touch()
    # the call ran again on a fresh instance: the constructor ran again, state reset
    assert repartir.get(ref, timeout=LONG) == 0
    assert len(lines(started)) == 2
    assert len(lines(log)) == 2
    new_pid = repartir.get(a.pid.remote(), timeout=LONG)
    assert new_pid != pid
    assert repartir.get(a.inc.remote(), timeout=LONG) == 1
    assert a.state == "ALIVE"


def test_killed_mid_call_without_task_retries(rt, tmp_path):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    a = Counter.options(max_restarts=1).remote(5)
    pid = repartir.get(a.pid.remote(), timeout=LONG)
    ref = a.block.remote(started, gate)
    assert wait_until(lambda: lines(started), timeout=LONG)
    kill_and_reap(pid)
    with pytest.raises(ActorDiedError, match="max_task_retries"):
        repartir.get(ref, timeout=LONG)
    # the actor itself was restarted, from its constructor
    assert repartir.get(a.inc.remote(), timeout=LONG) == 6
    assert a.state == "ALIVE"
    assert len(lines(started)) == 1  # the call was not run again


def test_killed_mid_call_without_restarts(rt, tmp_path):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    a = Counter.options(max_task_retries=3).remote()
    pid = repartir.get(a.pid.remote(), timeout=LONG)
    ref = a.block.remote(started, gate)
    assert wait_until(lambda: lines(started), timeout=LONG)
    kill_and_reap(pid)
    with pytest.raises(ActorDiedError, match="SIGKILL"):
        repartir.get(ref, timeout=LONG)
    assert wait_until(lambda: a.state == "DEAD", timeout=LONG)
    with pytest.raises(ActorDiedError, match="SIGKILL"):
        repartir.get(a.inc.remote(), timeout=LONG)


def test_restarts_run_out(rt, tmp_path):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    a = Counter.options(max_restarts=1, max_task_retries=-1).remote()
    ref = a.block.remote(started, gate)
    for attempt in (1, 2):
        assert wait_until(lambda n=attempt: len(lines(started)) == n, timeout=LONG)
        kill_and_reap(int(lines(started)[-1]))
    with pytest.raises(ActorDiedError, match="max_restarts"):
        repartir.get(ref, timeout=LONG)
    assert wait_until(lambda: a.state == "DEAD", timeout=LONG)
    with pytest.raises(ActorDiedError):
        repartir.get(a.inc.remote(), timeout=LONG)


def queue_behind_a_running_call(a, tmp_path):
    """Make actor ``a`` run a call blocked on a gate that is never opened, with three more
    calls already received by the actor process (sent while an earlier call held it, so
    that it took them from its inbox together).  Returns (pid, running ref, queued refs)."""
    pid = repartir.get(a.pid.remote(), timeout=LONG)
    hold_started, hold_gate = str(tmp_path / "hold-started"), str(tmp_path / "hold-gate")
    hold = a.block.remote(hold_started, hold_gate)
    assert wait_until(lambda: lines(hold_started), timeout=LONG)
    started = str(tmp_path / "started")
    running = a.block.remote(started, str(tmp_path / "gate"))
    queued = [a.inc.remote() for _ in range(3)]  # in the actor's inbox on return
    Path(hold_gate).touch()
    assert repartir.get(hold, timeout=LONG) == 0
    assert wait_until(lambda: lines(started), timeout=LONG)
    return pid, running, queued


def test_calls_queued_behind_a_killed_call_fail_promptly(rt, tmp_path):
    a = Counter.remote()
    pid, running, queued = queue_behind_a_running_call(a, tmp_path)
    kill_and_reap(pid)
    with pytest.raises(ActorDiedError):
        repartir.get(running, timeout=LONG)
    # "every pending call raises ActorDiedError, promptly"
    ready, _ = repartir.wait(queued, num_returns=3, timeout=PROMPT)
    assert len(ready) == 3, "calls queued behind the killed call never got an answer"
    for r in queued:
        with pytest.raises(ActorDiedError):
            repartir.get(r, timeout=1)


def test_calls_queued_behind_a_killed_call_run_after_restart(rt, tmp_path):
    a = Counter.options(max_restarts=1, max_task_retries=1).remote()
    pid, running, queued = queue_behind_a_running_call(a, tmp_path)
    kill_and_reap(pid)
    (tmp_path / "gate").touch()
    assert repartir.get(running, timeout=LONG) in (0, 1, 2, 3)  # retried on the new instance
    ready, _ = repartir.wait(queued, num_returns=3, timeout=PROMPT)
    assert len(ready) == 3, "calls queued behind the killed call never got an answer"
    assert sorted(repartir.get(queued, timeout=1)) == [1, 2, 3]  # each ran once, afresh
