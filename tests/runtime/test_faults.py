"""Faults, retries, timeouts, cancellation, Ctrl-C and driver threads
(``docs/architecture.md``, "Scheduler": "Faults" and "Cancellation and time-outs").

- A worker that dies mid-task -- SIGKILL sent by the test to a pid from ``worker_pids()``,
  ``os._exit``, a segfault (``ctypes.string_at(0)``), ``abort()``, SIGKILL of itself (what
  the kernel's OOM killer does) -- is replaced; its task is retried up to ``max_retries``
  (default 3), then ``get`` raises ``WorkerCrashedError`` naming the exit code or signal.
  Other tasks are not affected.  A ``MemoryError`` raised in Python is the task's own error.
- ``retry_exceptions`` (``True`` or a list of types) re-runs application errors.
- ``timeout=``: a task running too long is stopped (killed if it ignores the request) and
  ``get`` raises ``TaskTimeoutError``; time spent queued does not count.
- ``cancel(ref)``: a queued task never runs (also one already stolen by a worker); a running
  one gets ``TaskCancelledError`` raised inside it; ``force=True`` kills its worker.
- Ctrl-C (SIGINT to the whole process group) in a driver subprocess blocked in ``get``:
  ``KeyboardInterrupt`` promptly, its queued tasks cancelled, workers untouched, the session
  still usable.
- 8 driver threads x 2,000 tasks at once all get their own results.

Tasks count their attempts by appending to a file in ``tmp_path`` (shared with the
workers), so "retried exactly n times" is observable.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import repartir
from repartir.runtime import driver
from rtsupport import is_gone, wait_until
from sessionsupport import Sessions

pytestmark = pytest.mark.timeout(120)

MAIN = dict(num_cpus=2)


@pytest.fixture(scope="module")
def node(_leaves_nothing_behind):
    """Sessions for this module (``node(num_cpus=2)``); shut down at its end, after which
    the conftest checks that no worker process and no /dev/shm entry is left."""
    sessions = Sessions(_leaves_nothing_behind)
    yield sessions
    sessions.close()


@pytest.fixture
def rt(node):
    """The module's 2-CPU session, with both workers alive and idle before the test."""
    r = node(**MAIN)
    assert wait_until(lambda: len(driver.worker_pids()) == 2, timeout=15), driver.worker_pids()
    assert wait_until(lambda: r.available_resources()["CPU"] == 2.0, timeout=15)
    return r


# --------------------------------------------------------------------------- task bodies


def attempt(path: str) -> int:
    """Append one line to ``path``; return how many attempts (this one included)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(path) as f:
        return len(f.read().splitlines())


def attempts(path) -> int:
    try:
        return len(Path(path).read_text().splitlines())
    except FileNotFoundError:
        return 0


def crash(kind: str) -> None:
    if kind == "exit":
        os._exit(3)
    if kind == "segfault":
        ctypes.string_at(0)
    if kind == "abort":
        os.abort()
    if kind == "sigkill":  # what the kernel's OOM killer sends
        os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError(f"unknown crash kind {kind}")


@repartir.remote
def crash_first(path: str, crashes: int, kind: str = "exit") -> int:
    """Crash on the first ``crashes`` attempts, then return the attempt number."""
    n = attempt(path)
    if n <= crashes:
        crash(kind)
    return n


@repartir.remote
def raise_first(path: str, failures: int, exc_type: type = ValueError) -> int:
    n = attempt(path)
    if n <= failures:
        raise exc_type(f"failure on attempt {n}")
    return n


@repartir.remote
def announce_and_sleep(path: str, seconds: float, result: str = "finished") -> str:
    """Write this worker's pid to ``path`` (atomically), then sleep."""
    tmp = f"{path}.tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(seconds)
    return result


@repartir.remote
def catch_cancel(path: str, seconds: float) -> str:
    """Write its pid, sleep; on the interrupt raised inside (a KeyboardInterrupt, as in
    Ray), write a marker and re-raise."""
    Path(f"{path}.pid").write_text(str(os.getpid()))
    try:
        time.sleep(seconds)
    except repartir.TaskInterrupted:
        Path(f"{path}.cancelled-inside").touch()
        raise
    return "not cancelled"


@repartir.remote
def stubborn(path: str, seconds: float) -> str:
    """Count the attempt, write the pid, then ignore every exception until ``seconds``
    pass (only a kill stops it early)."""
    attempt(path)
    Path(f"{path}.pid").write_text(str(os.getpid()))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except BaseException:
            pass
    return "outlived"


@repartir.remote
def hold_until(flag: str, deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while not Path(flag).exists():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


@repartir.remote
def mark(path: str, seconds: float = 0.0) -> str:
    """Sleep, then touch ``path`` (a task cancelled while sleeping leaves no mark)."""
    if seconds:
        time.sleep(seconds)
    Path(path).touch()
    return path


@repartir.remote
def add(a, b):
    return a + b


@repartir.remote
def whoami() -> int:
    return os.getpid()


def read_pid(path: Path, timeout: float = 30.0) -> int:
    """The pid a task wrote (the file exists, empty, before the task writes into it)."""
    assert wait_until(lambda: path.exists() and path.read_text().strip(), timeout), (
        f"{path} never got a pid (task did not start)")
    return int(path.read_text())


def occupy_workers(tmp_path: Path, n: int = 2):
    """Hold ``n`` workers with tasks that wait for a flag; returns (flag, refs)."""
    flag = tmp_path / "release"
    refs = [hold_until.remote(str(flag), 60.0) for _ in range(n)]
    assert wait_until(lambda: repartir.available_resources()["CPU"] == 0.0, timeout=30)
    return flag, refs


# --------------------------------------------------------------------------- crashes


@pytest.mark.parametrize("kind, detail", [
    ("exit", "exit code 3"),
    ("segfault", "SIGSEGV"),
    ("abort", "SIGABRT"),
    ("sigkill", "SIGKILL"),
])
def test_crash_without_retries_raises_worker_crashed(rt, tmp_path, kind, detail):
    path = str(tmp_path / "attempts")
    ref = crash_first.options(max_retries=0).remote(path, 10, kind)
    with pytest.raises(repartir.WorkerCrashedError) as info:
        rt.get(ref, timeout=60)
    assert detail in str(info.value), str(info.value)
    assert "crash_first" in str(info.value)
    assert attempts(path) == 1
    # the worker was replaced and the session works
    assert wait_until(lambda: len(driver.worker_pids()) == 2, timeout=15)
    assert rt.get(add.remote(2, 3), timeout=30) == 5


def test_sigkill_from_outside_while_task_sleeps(rt, tmp_path):
    pid_file = tmp_path / "pid"
    ref = announce_and_sleep.options(max_retries=0).remote(str(pid_file), 60.0)
    others = [add.remote(i, i) for i in range(50)]
    pid = read_pid(pid_file)
    assert pid in driver.worker_pids()
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(repartir.WorkerCrashedError, match="SIGKILL"):
        rt.get(ref, timeout=30)
    assert time.monotonic() - t0 < 20
    assert rt.get(others, timeout=30) == [2 * i for i in range(50)]
    assert wait_until(lambda: len(driver.worker_pids()) == 2
                      and pid not in driver.worker_pids(), timeout=15), driver.worker_pids()
    proc_gone = wait_until(lambda: not psutil.pid_exists(pid) or is_gone(psutil.Process(pid)),
                           timeout=10)
    assert proc_gone


def test_sigkill_from_outside_then_retry_succeeds(rt, tmp_path):
    pid_file = tmp_path / "pid"
    path = tmp_path / "attempts"

    @repartir.remote(max_retries=1)
    def sleeps_on_first_attempt():
        n = attempt(str(path))
        if n == 1:
            Path(pid_file).write_text(str(os.getpid()))
            time.sleep(60)
        return n

    ref = sleeps_on_first_attempt.remote()
    os.kill(read_pid(pid_file), signal.SIGKILL)
    assert rt.get(ref, timeout=60) == 2
    assert attempts(path) == 2


@pytest.mark.parametrize("kind", ["exit", "segfault", "sigkill"])
def test_retries_then_success(rt, tmp_path, kind):
    path = str(tmp_path / "attempts")
    assert rt.get(crash_first.options(max_retries=2).remote(path, 2, kind), timeout=60) == 3
    assert attempts(path) == 3


def test_default_max_retries_is_three(rt, tmp_path):
    ok = str(tmp_path / "ok")
    assert rt.get(crash_first.remote(ok, 3), timeout=60) == 4
    bad = str(tmp_path / "bad")
    with pytest.raises(repartir.WorkerCrashedError, match="exit code 3") as info:
        rt.get(crash_first.remote(bad, 4), timeout=60)
    assert attempts(bad) == 4
    assert "max_retries=3" in str(info.value) or "4 time" in str(info.value), str(info.value)


def test_max_retries_exhausted_counts_attempts(rt, tmp_path):
    path = str(tmp_path / "attempts")
    with pytest.raises(repartir.WorkerCrashedError):
        rt.get(crash_first.options(max_retries=2).remote(path, 100, "segfault"), timeout=60)
    assert attempts(path) == 3


def test_max_retries_minus_one_retries_until_success(rt, tmp_path):
    path = str(tmp_path / "attempts")
    assert rt.get(crash_first.options(max_retries=-1).remote(path, 6), timeout=90) == 7


def test_other_tasks_unaffected_by_crashes(rt, tmp_path):
    crashing = [crash_first.options(max_retries=0).remote(str(tmp_path / f"c{i}"), 1, kind)
                for i, kind in enumerate(["exit", "segfault", "sigkill", "exit", "abort"])]
    normal = [add.remote(i, 1) for i in range(200)]
    assert rt.get(normal, timeout=60) == [i + 1 for i in range(200)]
    for ref in crashing:
        with pytest.raises(repartir.WorkerCrashedError):
            rt.get(ref, timeout=60)
    assert wait_until(lambda: len(driver.worker_pids()) == 2, timeout=15)


def test_crash_of_a_nested_child_reaches_the_parent(rt, tmp_path):
    """The child's crash reaches the parent's get: either as the parent's own error
    (child ran elsewhere) or the parent's worker died with it (child ran nested on the
    parent's stack) -- a WorkerCrashedError either way, no hang."""

    @repartir.remote(max_retries=0)
    def child():
        os._exit(5)

    @repartir.remote(max_retries=1)
    def parent():
        return repartir.get(child.remote(), timeout=60)

    with pytest.raises(repartir.WorkerCrashedError, match="exit code 5"):
        rt.get(parent.remote(), timeout=60)
    assert rt.get(add.remote(1, 1), timeout=30) == 2


def test_memory_error_in_python_is_the_tasks_error(rt):
    """An allocation over the address-space limit raises MemoryError inside the task:
    reported as the task's error, the worker lives on."""

    @repartir.remote(max_retries=0)
    def allocate_too_much():
        import resource

        import numpy as np

        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
        old = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm + 256 * 2**20, old[1]))
        try:
            np.ones(2**31, dtype=np.uint8)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, old)
        return os.getpid()

    with pytest.raises(MemoryError):
        rt.get(allocate_too_much.remote(), timeout=60)
    assert len(driver.worker_pids()) == 2
    assert rt.get(add.remote(1, 2), timeout=30) == 3


# --------------------------------------------------------------------------- retry_exceptions


def test_exceptions_not_retried_by_default(rt, tmp_path):
    path = str(tmp_path / "a")
    with pytest.raises(ValueError, match="attempt 1"):
        rt.get(raise_first.remote(path, 2), timeout=30)
    assert attempts(path) == 1


def test_retry_exceptions_true(rt, tmp_path):
    path = str(tmp_path / "a")
    assert rt.get(raise_first.options(retry_exceptions=True).remote(path, 2), timeout=30) == 3
    assert attempts(path) == 3


def test_retry_exceptions_true_limited_by_max_retries(rt, tmp_path):
    path = str(tmp_path / "a")
    f = raise_first.options(retry_exceptions=True, max_retries=2)
    with pytest.raises(ValueError, match="attempt 3"):
        rt.get(f.remote(path, 100), timeout=30)
    assert attempts(path) == 3


def test_retry_exceptions_list_retries_listed_types_only(rt, tmp_path):
    f = raise_first.options(retry_exceptions=[ValueError, OSError])
    listed = str(tmp_path / "listed")
    assert rt.get(f.remote(listed, 2, ValueError), timeout=30) == 3
    subclass = str(tmp_path / "subclass")  # FileNotFoundError is an OSError
    assert rt.get(f.remote(subclass, 1, FileNotFoundError), timeout=30) == 2
    other = str(tmp_path / "other")
    with pytest.raises(TypeError, match="attempt 1"):
        rt.get(f.remote(other, 2, TypeError), timeout=30)
    assert attempts(other) == 1


def test_retry_exceptions_from_decorator(rt, tmp_path):
    path = str(tmp_path / "a")

    @repartir.remote(retry_exceptions=[KeyError], max_retries=5)
    def flaky():
        n = attempt(path)
        if n < 4:
            raise KeyError(n)
        return n

    assert rt.get(flaky.remote(), timeout=30) == 4


# --------------------------------------------------------------------------- timeouts


def test_timeout_stops_a_sleeping_task(rt, tmp_path):
    path = str(tmp_path / "a")

    @repartir.remote(timeout=0.5)
    def too_slow():
        attempt(path)
        time.sleep(60)
        return "finished"

    t0 = time.monotonic()
    with pytest.raises(repartir.TaskTimeoutError) as info:
        rt.get(too_slow.remote(), timeout=60)
    assert time.monotonic() - t0 < 30
    assert isinstance(info.value, TimeoutError)
    assert attempts(path) == 1, "a timed-out task is not retried"
    assert rt.get(add.remote(1, 1), timeout=30) == 2


def test_timeout_kills_a_task_that_ignores_it(rt, tmp_path):
    path = str(tmp_path / "a")
    ref = stubborn.options(timeout=0.5).remote(path, 60.0)
    pid = read_pid(Path(f"{path}.pid"))
    t0 = time.monotonic()
    with pytest.raises(repartir.TaskTimeoutError):
        rt.get(ref, timeout=60)
    assert time.monotonic() - t0 < 30
    assert wait_until(lambda: pid not in driver.worker_pids()
                      and len(driver.worker_pids()) == 2, timeout=15)
    assert attempts(path) == 1
    assert rt.get(add.remote(1, 1), timeout=30) == 2


def test_timeout_not_reached(rt):
    assert rt.get(add.options(timeout=30).remote(1, 2), timeout=30) == 3


def test_timeout_counts_running_time_not_queue_time(rt, tmp_path):
    flag, blockers = occupy_workers(tmp_path)
    quick = mark.options(timeout=1.0).remote(str(tmp_path / "quick"), 0.1)
    time.sleep(2.0)  # queued for twice its timeout
    flag.touch()
    assert rt.get(blockers, timeout=30) == [True, True]
    assert rt.get(quick, timeout=30) == str(tmp_path / "quick")


def test_timeout_does_not_leak_to_the_next_task_on_that_worker(rt):
    @repartir.remote(timeout=0.3)
    def fast():
        return os.getpid()

    pids = set(rt.get([fast.remote() for _ in range(10)], timeout=30))
    # plain tasks sleeping past the earlier tasks' timeout, on the same workers
    results = rt.get([mark.remote(os.devnull, 0.8) for _ in range(4)], timeout=30)
    assert results == [os.devnull] * 4
    assert pids <= set(driver.worker_pids())


# --------------------------------------------------------------------------- cancel


def test_cancel_queued_task_never_runs(rt, tmp_path):
    flag, blockers = occupy_workers(tmp_path)
    marker = tmp_path / "ran"
    ref = mark.remote(str(marker))
    rt.cancel(ref)
    t0 = time.monotonic()
    with pytest.raises(repartir.TaskCancelledError):
        rt.get(ref, timeout=30)
    assert time.monotonic() - t0 < 10, "a queued task's cancellation needs no worker"
    flag.touch()
    assert rt.get(blockers, timeout=30) == [True, True]
    assert rt.get([add.remote(i, 0) for i in range(20)], timeout=30) == list(range(20))
    time.sleep(0.3)
    assert not marker.exists(), "the cancelled task ran"


def test_cancel_task_waiting_for_its_argument(rt, tmp_path):
    flag = tmp_path / "release"
    dep = hold_until.remote(str(flag), 60.0)
    marker = tmp_path / "ran"

    @repartir.remote
    def after(ok):
        Path(marker).touch()
        return ok

    ref = after.remote(dep)
    rt.cancel(ref)
    with pytest.raises(repartir.TaskCancelledError):
        rt.get(ref, timeout=30)
    flag.touch()
    assert rt.get(dep, timeout=30) is True
    time.sleep(0.3)
    assert not marker.exists()


def test_cancel_many_queued_including_stolen_copies(rt, tmp_path):
    """Cancel half of a burst right after submitting it.  Whatever was queued (in the
    driver's deque, or already stolen into a worker's deque) never runs: a task either
    returns its value and left its mark, or raises TaskCancelledError and left none."""
    refs = [mark.remote(str(tmp_path / f"m{i}"), 0.02) for i in range(100)]
    for ref in refs[50:]:
        rt.cancel(ref)
    outcomes = []
    for ref in refs:
        try:
            rt.get(ref, timeout=60)
            outcomes.append("ok")
        except repartir.TaskCancelledError:
            outcomes.append("cancelled")
    time.sleep(0.5)
    for i, outcome in enumerate(outcomes):
        assert (tmp_path / f"m{i}").exists() == (outcome == "ok"), (i, outcome)
    assert outcomes[:50] == ["ok"] * 50
    assert outcomes[50:].count("cancelled") >= 40, outcomes[50:]


def test_cancel_running_task_raises_inside_it(rt, tmp_path):
    path = str(tmp_path / "t")
    ref = catch_cancel.remote(path, 60.0)
    pid = read_pid(Path(f"{path}.pid"))
    rt.cancel(ref)
    t0 = time.monotonic()
    with pytest.raises(repartir.TaskCancelledError):
        rt.get(ref, timeout=30)
    assert time.monotonic() - t0 < 20
    assert Path(f"{path}.cancelled-inside").exists()
    assert pid in driver.worker_pids(), "a plain cancel does not kill the worker"
    assert rt.get(add.remote(1, 2), timeout=30) == 3


def test_cancel_force_kills_the_worker(rt, tmp_path):
    path = str(tmp_path / "a")
    ref = stubborn.remote(path, 60.0)  # default max_retries=3: a forced cancel is no crash
    pid = read_pid(Path(f"{path}.pid"))
    rt.cancel(ref, force=True)
    t0 = time.monotonic()
    with pytest.raises(repartir.TaskCancelledError):
        rt.get(ref, timeout=30)
    assert time.monotonic() - t0 < 20
    assert wait_until(lambda: pid not in driver.worker_pids()
                      and len(driver.worker_pids()) == 2, timeout=15), driver.worker_pids()
    time.sleep(0.5)
    assert attempts(path) == 1, "a cancelled task is not retried"
    assert rt.get(add.remote(1, 2), timeout=30) == 3


def test_cancel_finished_task_is_a_no_op(rt):
    ref = add.remote(20, 22)
    assert rt.get(ref, timeout=30) == 42
    rt.cancel(ref)
    rt.cancel(ref, force=True)
    assert rt.get(ref, timeout=30) == 42


def test_cancel_twice_and_type_check(rt, tmp_path):
    flag, blockers = occupy_workers(tmp_path)
    ref = add.remote(1, 1)
    rt.cancel(ref)
    rt.cancel(ref)
    with pytest.raises(repartir.TaskCancelledError):
        rt.get(ref, timeout=30)
    with pytest.raises(TypeError):
        rt.cancel("not a ref")
    flag.touch()
    assert rt.get(blockers, timeout=30) == [True, True]


# --------------------------------------------------------------------------- Ctrl-C


CTRL_C_DRIVER = textwrap.dedent("""
    import json, os, sys, time
    import repartir
    from repartir.runtime import driver

    def say(**kw):
        print(json.dumps(kw), flush=True)

    @repartir.remote
    def slow(path, seconds):
        time.sleep(seconds)
        open(path, "w").close()
        return path

    @repartir.remote
    def add(a, b):
        return a + b

    d = sys.argv[1]
    repartir.init(num_cpus=2)
    assert repartir.get(add.remote(0, 0), timeout=60) == 0
    refs = [slow.remote(f"{d}/t{i}", 2.0) for i in range(8)]
    say(ready=True, pids=sorted(driver.worker_pids()))
    try:
        repartir.get(refs, timeout=60)
        say(error="get returned without an interrupt")
        sys.exit(2)
    except KeyboardInterrupt:
        caught = time.monotonic()
    say(caught=caught)
    outcomes = []
    for r in refs:
        try:
            repartir.get(r, timeout=60)
            outcomes.append("ok")
        except repartir.TaskCancelledError:
            outcomes.append("cancelled")
    say(outcomes=outcomes, add=repartir.get(add.remote(1, 2), timeout=60),
        pids=sorted(driver.worker_pids()))
    repartir.shutdown()
    say(done=True)
""")


def _read_json_line(proc: subprocess.Popen, timeout: float) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no line from the driver within {timeout} s "
                         f"(exit code {proc.poll()})")


def test_ctrl_c_during_get_in_a_driver_subprocess(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(CTRL_C_DRIVER)
    package_root = str(Path(repartir.__file__).resolve().parents[1])  # the repartir under test
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("REPARTIR_NUM_CPUS", None)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        first = _read_json_line(proc, 60)
        assert first.get("ready"), first
        pids = first["pids"]
        time.sleep(1.0)  # let it enter get (the running tasks sleep 2 s)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: driver and workers
        caught = _read_json_line(proc, 30)
        assert "caught" in caught, caught
        latency = caught["caught"] - sent
        print(f"KeyboardInterrupt {latency * 1000:.1f} ms after SIGINT")
        # the figure (goal: 100 ms) is the benchmark's ctrl_c workload; a generous bound here
        assert latency < 10.0, f"KeyboardInterrupt came {latency * 1000:.0f} ms after SIGINT"
        after = _read_json_line(proc, 60)
        outcomes = after["outcomes"]
        assert after["add"] == 3, "the session is usable after Ctrl-C"
        assert after["pids"] == pids, "workers ignore SIGINT (same processes before and after)"
        assert outcomes.count("ok") <= 2, f"only the two running tasks finish: {outcomes}"
        assert outcomes.count("cancelled") >= 6, outcomes
        for i, outcome in enumerate(outcomes):
            assert (tmp_path / f"t{i}").exists() == (outcome == "ok"), (i, outcomes)
        assert _read_json_line(proc, 30).get("done")
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# --------------------------------------------------------------------------- driver threads


@pytest.mark.timeout(300)
def test_many_driver_threads_submit_and_get(rt):
    threads, per_thread = 8, 2_000

    def work(tid: int) -> int:
        done = 0
        i = 0
        while i < per_thread:
            if i % 500 == 0:  # now and then a single round trip
                assert rt.get(add.remote(tid, i), timeout=120) == tid + i
                i += 1
                done += 1
                continue
            batch = range(i, min(i + 97, per_thread))
            refs = [add.remote(tid * 1_000_000, k) for k in batch]
            assert rt.get(refs, timeout=120) == [tid * 1_000_000 + k for k in batch]
            i += len(batch)
            done += len(batch)
        return done

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        counts = list(pool.map(work, range(threads)))
    assert counts == [per_thread] * threads
    assert wait_until(lambda: driver.store_statistics().tasks_in_flight == 0, timeout=30)
