"""Life and death of a session: init/shutdown/re-init in this process, and drivers run as
subprocesses (``sys.executable -c``) that are SIGKILLed, SIGTERMed or interrupted (Ctrl-C)
in the middle of a run, or that simply exit.  Each time, within 5 s, no worker process of
that driver may remain and nothing it used may remain in ``/dev/shm``."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import repartir
from rtsupport import (
    REPO_ROOT,
    WORKER_MARK,
    is_gone,
    session_prefix,
    shm_entries,
    shm_used_by,
    wait_until,
    worker_processes,
)

CLEANUP_SECONDS = 5.0


@repartir.remote
def add(a, b):
    return a + b


# --------------------------------------------------------------------------- in this process


def test_init_shutdown_is_initialized(no_session):
    assert repartir.is_initialized() is False
    repartir.init(num_cpus=2)
    assert repartir.is_initialized() is True
    assert repartir.get(add.remote(1, 2)) == 3
    repartir.shutdown()
    assert repartir.is_initialized() is False


def test_second_init_raises_unless_ignored(no_session):
    repartir.init(num_cpus=1)
    with pytest.raises(repartir.RepartirError) as info:
        repartir.init(num_cpus=1)
    assert isinstance(info.value, RuntimeError), "a second init() raises a RuntimeError, as in Ray"
    repartir.init(num_cpus=1, ignore_reinit_error=True)
    assert repartir.is_initialized()
    assert repartir.get(add.remote(2, 2)) == 4


def test_shutdown_twice_and_without_init(no_session):
    repartir.shutdown()
    repartir.init(num_cpus=1)
    repartir.shutdown()
    repartir.shutdown()
    assert not repartir.is_initialized()


def test_implicit_init_at_first_remote(no_session):
    assert not repartir.is_initialized()
    ref = add.remote(20, 22)
    assert repartir.is_initialized()
    assert repartir.get(ref) == 42


def test_bad_num_cpus_is_a_value_error_and_init_works_after_it(no_session):
    for bad in (1.5, "2", True, -1):
        with pytest.raises(ValueError, match="num_cpus"):
            repartir.init(num_cpus=bad)
        assert not repartir.is_initialized()
    assert repartir.init(num_cpus=2.0)["num_cpus"] == 2
    repartir.shutdown()
    assert repartir.init(num_cpus=1)["num_cpus"] == 1  # the same second: a new session
    repartir.shutdown()


def test_init_shutdown_cycles_leave_no_mapping_or_descriptor(no_session):
    def held() -> tuple[int, int]:
        with open("/proc/self/maps") as f:
            maps = sum(1 for line in f if "repartir" in line)
        return maps, len(os.listdir("/proc/self/fd"))

    repartir.init(num_cpus=1)
    repartir.shutdown()
    before = held()
    for _ in range(3):
        repartir.init(num_cpus=1)
        assert repartir.get(repartir.put(7)) == 7
        time.sleep(1.1)  # a stopped node's segment is unmapped a second later
        repartir.shutdown()
    after = held()  # one segment kept for a second at most, never one per cycle
    assert after[0] <= before[0] and after[1] <= before[1], (before, after)


def test_a_thread_waiting_at_shutdown_gets_an_error(no_session):
    import threading

    repartir.init(num_cpus=1)

    @repartir.remote
    def slow():
        time.sleep(3)

    out = []

    def wait_for_it():
        try:
            out.append(repartir.get(slow.remote()))
        except repartir.ObjectLostError as exc:
            out.append(exc)

    t = threading.Thread(target=wait_for_it)
    t.start()
    assert wait_until(lambda: repartir.available_resources()["CPU"] == 0.0, 30)
    repartir.shutdown()
    t.join(10)
    assert not t.is_alive() and isinstance(out[0], repartir.ObjectLostError)


def test_actors_dropped_faster_than_they_exit_free_their_slots(no_session, monkeypatch):
    monkeypatch.setenv("REPARTIR_MAX_ACTORS", "3")
    repartir.init(num_cpus=1)

    @repartir.remote
    class Short:
        def f(self, i):
            return i

    refs = []
    for i in range(8):  # more than the node's actor slots, each dropped at once
        a = Short.remote()
        refs.append(a.f.remote(i))
        del a
    assert repartir.get(refs, timeout=60) == list(range(8))
    repartir.shutdown()


def test_more_tasks_than_the_deque_holds_queue_behind_a_busy_worker(no_session, monkeypatch,
                                                                   tmp_path):
    monkeypatch.setenv("REPARTIR_DEQUE_CAPACITY", "64")
    repartir.init(num_cpus=1)
    gate = tmp_path / "gate"

    @repartir.remote
    def wait_gate(path):
        while not os.path.exists(path):
            time.sleep(0.01)
        return "open"

    @repartir.remote
    def square(x):
        return x * x

    @repartir.remote
    def stamp():
        return time.monotonic_ns()

    blocker = wait_gate.remote(str(gate))
    refs = [square.remote(i) for i in range(1000)]  # the deque takes 64; the rest wait in order
    low = [stamp.options(priority="low").remote() for _ in range(200)]
    high = [stamp.options(priority="high").remote() for _ in range(200)]  # beyond capacity too
    gate.touch()
    assert repartir.get(blocker, timeout=60) == "open"
    assert repartir.get(refs, timeout=60) == [i * i for i in range(1000)]
    first_low = min(repartir.get(low, timeout=60))
    assert all(h < first_low for h in repartir.get(high, timeout=60))  # priority kept
    repartir.shutdown()


def test_reinit_after_shutdown(no_session):
    for i in range(2):
        repartir.init(num_cpus=2)
        assert repartir.get([add.remote(i, j) for j in range(4)]) == [i + j for j in range(4)]
        repartir.shutdown()


def test_workers_are_children_and_gone_after_shutdown(no_session):
    repartir.init(num_cpus=2)
    repartir.get([add.remote(i, 0) for i in range(10)])
    assert wait_until(lambda: len(worker_processes()) >= 1, 5.0)
    workers = worker_processes()
    mine = os.getpid()
    for w in workers:
        assert mine in {p.pid for p in w.parents()}
    names = shm_used_by([mine, *(w.pid for w in workers)])
    repartir.shutdown()
    assert wait_until(lambda: all(is_gone(w) for w in workers), CLEANUP_SECONDS)
    assert wait_until(lambda: not (names & shm_entries()), CLEANUP_SECONDS), names & shm_entries()


def test_views_stay_valid_after_shutdown(no_session):
    repartir.init(num_cpus=1)
    expected = np.arange(1_000_000, dtype=np.float64)
    view = repartir.get(repartir.put(expected))
    repartir.shutdown()
    np.testing.assert_array_equal(view, expected)  # the mapping outlives the session
    repartir.init(num_cpus=1)
    other = repartir.get(repartir.put(np.zeros(1_000_000)))
    np.testing.assert_array_equal(view, expected)
    assert float(other.sum()) == 0.0


@pytest.mark.timeout(60)
def test_ref_of_a_shut_down_session_fails_instead_of_hanging(no_session):
    """A ref whose session has ended names an object that is gone: ``get`` must raise
    (``ObjectLostError``), not wait for ever -- nor may a task that takes it as argument."""
    repartir.init(num_cpus=1)
    small, big, result = repartir.put(1), repartir.put(np.ones(300_000)), add.remote(1, 2)
    assert repartir.get(result) == 3
    repartir.shutdown()
    repartir.init(num_cpus=1)
    for ref in (small, big, result):
        with pytest.raises(repartir.RepartirError) as info:
            repartir.get(ref, timeout=3)
        assert not isinstance(info.value, repartir.GetTimeoutError), (
            f"get() of a ref of an ended session waits (for ever without a timeout): {info.value}"
        )
    with pytest.raises(repartir.RepartirError) as info:
        repartir.get(add.remote(small, 1), timeout=3)
    assert not isinstance(info.value, repartir.GetTimeoutError), (
        "a task whose argument is a ref of an ended session never runs nor fails"
    )
    assert repartir.get(add.remote(1, 1), timeout=10) == 2


def test_session_directory(no_session):
    """init() reports its session directory, ``<temp dir>/session_<time>_<pid>/``, which
    exists while the session lives."""
    info = repartir.init(num_cpus=1)
    try:
        session_dir = Path(info["session_dir"])
        assert session_dir.is_dir()
        assert session_dir.name.startswith("session_")
        assert session_dir.name.endswith(f"_{os.getpid()}")
        assert "repartir" in str(session_dir.parent)
    finally:
        repartir.shutdown()


def test_shutdown_removes_the_session_directory_and_its_logs(no_session, monkeypatch, tmp_path):
    """docs: the session directory (``session.json``, the workers' log files when their output
    is not forwarded) is removed by ``shutdown()``."""
    monkeypatch.setenv("REPARTIR_TEMP_DIR", str(tmp_path / "sessions"))
    monkeypatch.setenv("REPARTIR_LOG_TO_DRIVER", "0")
    info = repartir.init(num_cpus=1)
    session_dir = Path(info["session_dir"])
    try:
        assert session_dir.parent == tmp_path / "sessions"
        assert repartir.get(add.remote(1, 1), timeout=30) == 2
        assert (session_dir / "session.json").is_file()
        assert list(session_dir.glob("worker-*.log")), list(session_dir.iterdir())
    finally:
        repartir.shutdown()
    assert not session_dir.exists(), list(session_dir.rglob("*"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_start_up_sweeps_what_dead_sessions_left(no_session, monkeypatch, tmp_path):
    """docs: start-up removes the directories and the /dev/shm files of sessions whose driver
    is gone, and leaves those of live drivers alone."""
    import json

    temp = tmp_path / "sessions"
    monkeypatch.setenv("REPARTIR_TEMP_DIR", str(temp))
    dead, live = _dead_pid(), os.getppid()
    made = {}
    for kind, pid in (("dead", dead), ("live", live)):
        session = f"20000101-000000.{kind}{os.getpid()}_{pid}"
        d = temp / f"session_{session}"
        d.mkdir(parents=True)
        (d / "session.json").write_text(json.dumps({"pid": pid}))
        (d / "worker-1.log").write_text("old\n")
        shm = Path("/dev/shm") / f"repartir-{session}-arena"
        shm.write_bytes(b"\0" * 4096)
        made[kind] = (d, shm)
    try:
        info = repartir.init(num_cpus=1)
        repartir.shutdown()
        assert Path(info["session_dir"]).parent == temp
        d, shm = made["dead"]
        assert not d.exists() and not shm.exists(), "a dead session's leftovers were kept"
        d, shm = made["live"]
        assert d.exists() and shm.exists(), "a live session's files were swept"
    finally:
        for d, shm in made.values():
            shm.unlink(missing_ok=True)


# --------------------------------------------------------------------------- subprocess drivers

DRIVER = textwrap.dedent(
    """
    import os, sys, time
    import repartir

    mode, markers = sys.argv[1], sys.argv[2]
    if mode == "start":
        print("STARTING", flush=True)
    store = {}
    if mode == "spilled":  # a small store, spilling into a directory the test watches
        os.environ["REPARTIR_SPILL_DIR"] = os.path.join(markers, os.pardir, "spill")
        os.makedirs(os.environ["REPARTIR_SPILL_DIR"])
        store = {"object_store_memory": 32 << 20}
    repartir.init(num_cpus=2, **store)

    @repartir.remote
    def busy(kind, markers):
        import os, time
        open(os.path.join(markers, str(os.getpid())), "w").close()
        deadline = time.time() + 120
        if kind == "spin":
            while time.time() < deadline:
                pass
        else:
            time.sleep(120)

    @repartir.remote
    def quick(x):
        return x

    if mode in ("sleep", "spin"):
        refs = [busy.remote(mode, markers) for _ in range(4)]
        deadline = time.time() + 30
        while len(os.listdir(markers)) < 2 and time.time() < deadline:
            time.sleep(0.02)
        print("READY", flush=True)
        repartir.get(refs)
    elif mode == "spilled":  # 64 MiB put into a 32 MiB store: some of it on disk
        import numpy as np
        refs = [repartir.put(np.full(4 << 20, i, dtype=np.float32)) for i in range(4)]
        assert quick.remote(1) is not None
        print("READY", flush=True)
        time.sleep(120)
    elif mode == "idle":
        assert repartir.get([quick.remote(i) for i in range(8)]) == list(range(8))
        print("READY", flush=True)
        time.sleep(120)
    elif mode == "forked":  # a child forked after init() outlives the driver
        assert repartir.get([quick.remote(i) for i in range(8)]) == list(range(8))
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        with open(os.path.join(markers, "child"), "w") as f:
            f.write(str(child))
        print("READY", flush=True)
        time.sleep(120)
    elif mode == "start":
        print("READY", flush=True)
        while True:
            assert repartir.get([quick.remote(i) for i in range(4)]) == list(range(4))
    elif mode == "exit":
        assert repartir.get([quick.remote(i) for i in range(8)]) == list(range(8))
        print("READY", flush=True)
        sys.stdin.readline()
        # the interpreter exits without shutdown()
    elif mode == "exit_busy":
        refs = [busy.remote("sleep", markers) for _ in range(4)]
        deadline = time.time() + 30
        while len(os.listdir(markers)) < 2 and time.time() < deadline:
            time.sleep(0.02)
        print("READY", flush=True)
        sys.stdin.readline()
        # exits with tasks running and queued, without shutdown()
    """
)


class Driver:
    """A driver subprocess and what it holds (worker processes, /dev/shm names)."""

    def __init__(self, mode: str, tmp_path: Path, *, new_session: bool = False) -> None:
        markers = tmp_path / "markers"
        markers.mkdir()
        self.stderr_path = tmp_path / "stderr.txt"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.before = shm_entries()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, mode, str(markers)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr_path.open("w"),
            cwd=tmp_path,
            env=env,
            start_new_session=new_session,
        )
        self.workers: list[psutil.Process] = []
        self.shm: set[str] = set()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        buffer = b""
        while b"READY" not in buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                pytest.fail(f"driver not ready after {timeout}s:\n{self.stderr()}")
            readable, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if readable:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    self.kill()
                    pytest.fail(f"driver exited before ready (rc={self.proc.returncode}):"
                                f"\n{self.stderr()}")
                buffer += chunk

    def go(self) -> None:
        """Let a driver waiting on its stdin go on."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def snapshot(self) -> None:
        """Record the driver's workers and the /dev/shm names it and they use."""
        assert wait_until(lambda: len(worker_processes(self.proc.pid)) >= 1, 10.0), (
            f"no worker process under the driver:\n{self.stderr()}"
        )
        self.workers = worker_processes(self.proc.pid)
        self.shm = shm_used_by([self.proc.pid, *(w.pid for w in self.workers)])
        prefixes = {session_prefix(n) for n in self.shm}
        self.shm |= {n for n in shm_entries() - self.before if session_prefix(n) in prefixes}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        for w in self.workers:
            try:
                w.kill()
            except psutil.Error:
                pass

    def assert_cleaned_up(self, seconds: float = CLEANUP_SECONDS) -> None:
        start = time.monotonic()
        wait_until(
            lambda: all(is_gone(w) for w in self.workers) and not (self.shm & shm_entries()),
            seconds,
        )
        left_workers = [w.pid for w in self.workers if not is_gone(w)]
        left_shm = sorted(self.shm & shm_entries())
        took = time.monotonic() - start
        assert not left_workers, (
            f"workers still alive {took:.1f}s later: {left_workers}\n{self.stderr()}")
        assert not left_shm, f"/dev/shm entries left {took:.1f}s later: {left_shm}\n{self.stderr()}"


@pytest.fixture
def driver_factory(tmp_path):
    made: list[Driver] = []

    def make(mode: str, **kwargs) -> Driver:
        sub = tmp_path / f"d{len(made)}"
        sub.mkdir()
        d = Driver(mode, sub, **kwargs)
        made.append(d)
        return d

    yield make
    for d in made:  # never leave anything behind, even when a test failed
        d.kill()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("task", ["sleep", "spin"])
def test_driver_killed_mid_run_leaves_nothing(driver_factory, sig, task):
    d = driver_factory(task)
    d.wait_ready()
    d.snapshot()
    assert len(d.workers) >= 2, "two tasks run at once on two workers"
    d.proc.send_signal(sig)
    d.proc.wait(10)
    d.assert_cleaned_up()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_driver_leaves_no_spill_file(driver_factory, tmp_path, sig):
    """Spill files can be large and ``REPARTIR_SPILL_DIR`` may be a directory no later
    session sweeps: the workers of a driver that died remove its spill directory."""
    d = driver_factory("spilled")
    d.wait_ready()
    d.snapshot()
    spill = tmp_path / "d0" / "spill"
    assert any(f for _, _, files in os.walk(spill) for f in files), "nothing was spilled"
    d.proc.send_signal(sig)
    d.proc.wait(10)
    d.assert_cleaned_up()
    assert wait_until(lambda: not any(f for _, _, fs in os.walk(spill) for f in fs), 30), \
        list(os.walk(spill))


@pytest.mark.timeout(90)
def test_workers_exit_when_idle_driver_dies(driver_factory):
    d = driver_factory("idle")
    d.wait_ready()
    d.snapshot()
    d.proc.kill()
    d.proc.wait(10)
    d.assert_cleaned_up()


@pytest.mark.timeout(90)
def test_workers_exit_when_driver_dies_while_its_forked_child_lives(driver_factory, tmp_path):
    d = driver_factory("forked")
    d.wait_ready()
    d.snapshot()
    child = psutil.Process(int((tmp_path / "d0" / "markers" / "child").read_text()))
    d.workers = [w for w in d.workers if w.pid != child.pid]
    try:
        d.proc.kill()
        d.proc.wait(10)
        d.assert_cleaned_up()
        assert child.is_running()  # the workers left although the child still lives
    finally:
        child.kill()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("group", [False, True], ids=["driver-only", "process-group"])
def test_ctrl_c_in_get_leaves_nothing(driver_factory, group):
    """SIGINT while the driver blocks in ``get``: to the driver alone, and to its whole
    process group as a terminal's Ctrl-C does (workers then receive it too)."""
    d = driver_factory("sleep", new_session=group)
    d.wait_ready()
    d.snapshot()
    time.sleep(0.3)  # well inside get() by now
    if group:
        os.killpg(d.proc.pid, signal.SIGINT)
    else:
        d.proc.send_signal(signal.SIGINT)
    try:
        d.proc.wait(CLEANUP_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"driver did not exit within {CLEANUP_SECONDS}s of Ctrl-C:\n{d.stderr()}")
    assert d.proc.returncode != 0, "an interrupted get must not end the driver normally"
    d.assert_cleaned_up()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["exit", "exit_busy"], ids=["idle", "tasks-running"])
def test_driver_exiting_without_shutdown_leaves_nothing(driver_factory, mode):
    d = driver_factory(mode)
    d.wait_ready()
    d.snapshot()
    d.go()
    try:
        rc = d.proc.wait(CLEANUP_SECONDS + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"interpreter exit hangs on a live session ({mode}):\n{d.stderr()}")
    assert rc == 0, d.stderr()
    d.assert_cleaned_up()


def _session_workers(driver_pid: int) -> list[psutil.Process]:
    """Worker processes anywhere whose command line names a session of ``driver_pid``
    (``python -m repartir.runtime.worker <time>_<pid>``)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if any(WORKER_MARK in part for part in cmd) and any(
            part.endswith(f"_{driver_pid}") for part in cmd
        ):
            if not is_gone(p):
                found.append(p)
    return found


@pytest.mark.timeout(120)
@pytest.mark.parametrize("delay", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_driver_killed_during_start_leaves_nothing(driver_factory, delay):
    """SIGKILL at any moment of init() (creating shared memory, spawning workers) or of the
    first tasks: nothing of that session may stay in /dev/shm or the process table."""
    d = driver_factory("start")
    # STARTING is printed just before init(); kill `delay` seconds later.
    deadline = time.monotonic() + 60
    buffer = b""
    while b"STARTING" not in buffer and time.monotonic() < deadline:
        if select.select([d.proc.stdout], [], [], 0.5)[0]:
            chunk = os.read(d.proc.stdout.fileno(), 4096)
            assert chunk, d.stderr()
            buffer += chunk
    seen: dict[int, psutil.Process] = {}
    end = time.monotonic() + delay
    while True:
        for w in worker_processes(d.proc.pid):
            seen.setdefault(w.pid, w)
        if time.monotonic() >= end:
            break
        time.sleep(0.005)
    d.proc.kill()
    d.proc.wait(10)
    d.workers = [*seen.values(), *_session_workers(d.proc.pid)]
    d.assert_cleaned_up()
    assert wait_until(lambda: not _session_workers(d.proc.pid), 10.0)
    left = [n for n in shm_entries() if f"_{d.proc.pid}-" in n]
    assert not left, f"/dev/shm entries of the killed session: {left}"


INTERRUPTED_GET = textwrap.dedent(
    """
    import os, signal, threading, time, repartir
    repartir.init(num_cpus=2)

    @repartir.remote
    def nap(s):
        import time
        time.sleep(s)
        return s

    refs = [nap.remote(2.0) for _ in range(2)]
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    try:
        repartir.get(refs)
        print("NOT INTERRUPTED")
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    print("AFTER", repartir.get([nap.remote(0.05) for _ in range(4)], timeout=20), flush=True)
    outcomes = []
    for ref in refs:  # running tasks go on; queued ones may have been cancelled by Ctrl-C
        try:
            outcomes.append(repr(repartir.get(ref, timeout=20)))
        except repartir.RepartirError as exc:
            outcomes.append(type(exc).__name__)
    print("OLD", *outcomes, flush=True)
    repartir.shutdown()
    """
)


@pytest.mark.timeout(60)
def test_ctrl_c_in_get_leaves_the_session_usable(tmp_path):
    """Ctrl-C interrupts ``get`` but not the session: later calls work (an interactive user
    presses Ctrl-C and carries on); the interrupted tasks finish or are cancelled, each with
    a definite outcome."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_GET],
        capture_output=True, text=True, timeout=50, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["INTERRUPTED", "AFTER [0.05, 0.05, 0.05, 0.05]"], (
        proc.stdout + proc.stderr[-4000:])
    old = lines[2].split()
    assert old[0] == "OLD" and len(old) == 3, lines
    assert set(old[1:]) <= {"2.0", "TaskCancelledError"}, lines


# --------------------------------------------------------------------------- worker output

OUTPUT_DRIVER = textwrap.dedent(
    """
    import logging, os, sys, threading
    import repartir

    info = repartir.init(num_cpus=1)

    @repartir.remote
    def chatty():
        print("TASK-OUT", "é")
        logging.warning("TASK-WARN")
        sys.stdout.write("NO-NEWLINE")  # the worker's last output: forwarded when it exits
        return os.getpid()

    @repartir.remote
    class Greeter:
        def hi(self):
            print("ACTOR-OUT")
            return os.getpid()

    print("WORKER", repartir.get(chatty.remote(), timeout=30), flush=True)
    print("ACTOR", repartir.get(Greeter.remote().hi.remote(), timeout=30), flush=True)
    log = os.path.join(info["session_dir"], "worker-1.log")
    with open(log, "rb") if os.path.exists(log) else open(os.devnull, "rb") as f:
        print("LOG-HAS-OUTPUT", b"TASK-OUT" in f.read(), flush=True)
    repartir.shutdown()
    print("SHUTDOWN-DONE", [t.name for t in threading.enumerate() if t.name == "repartir-output"])
    """
)


def _run_driver(script: str, tmp_path: Path, **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("REPARTIR_LOG_TO_DRIVER", None)
    env.pop("PYTHONUNBUFFERED", None)  # the node must make the workers' output unbuffered
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, encoding="utf-8", errors="replace",
        timeout=60, cwd=tmp_path, env=env,
    )


def _value_after(stdout: str, word: str) -> str:
    line = next((ln for ln in stdout.splitlines() if ln.startswith(word + " ")), None)
    assert line is not None, f"no {word} line in:\n{stdout}"
    return line.split(" ", 1)[1]


@pytest.mark.timeout(90)
def test_task_and_actor_output_reaches_the_driver(tmp_path):
    """print, sys.stdout.write and logging in tasks and actor methods reach the driver's own
    stdout and stderr, each line prefixed with its process, all of it before shutdown()
    returns; the forwarding thread ends with shutdown()."""
    proc = _run_driver(OUTPUT_DRIVER, tmp_path, PYTHONIOENCODING="utf-8")
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err[-4000:]
    worker, actor = _value_after(out, "WORKER"), _value_after(out, "ACTOR")
    lines = out.splitlines()
    assert f"(worker pid={worker}) TASK-OUT é" in lines, out
    assert f"(Greeter pid={actor}) ACTOR-OUT" in lines, out
    assert f"(worker pid={worker}) NO-NEWLINE" in lines, out  # a last line without newline
    assert lines.index(f"(worker pid={worker}) NO-NEWLINE") < lines.index(
        next(ln for ln in lines if ln.startswith("SHUTDOWN-DONE"))), out
    assert any(ln.startswith(f"(worker pid={worker}) ") and "TASK-WARN" in ln
               for ln in err.splitlines()), err
    assert "TASK-OUT" not in err and "TASK-WARN" not in out
    assert _value_after(out, "SHUTDOWN-DONE") == "[]", "the forwarding thread outlives shutdown()"


@pytest.mark.timeout(90)
def test_log_to_driver_off_keeps_output_in_the_log_files(tmp_path):
    proc = _run_driver(OUTPUT_DRIVER, tmp_path, REPARTIR_LOG_TO_DRIVER="0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    for stream in (proc.stdout, proc.stderr):
        assert "pid=" not in stream and "TASK-" not in stream and "ACTOR-OUT" not in stream, stream
    assert _value_after(proc.stdout, "LOG-HAS-OUTPUT") == "True", proc.stdout


BROKEN_WORKERS = textwrap.dedent(
    """
    import os, sys
    import repartir

    # the workers (fresh interpreters) import this broken package instead of repartir
    broken = os.path.abspath("broken")
    os.makedirs(os.path.join(broken, "repartir"))
    with open(os.path.join(broken, "repartir", "__init__.py"), "w") as f:
        f.write("import sys\\n"
                "print('BROKEN-WORKER-MARK', file=sys.stderr)\\n"
                "raise SystemExit(3)\\n")
    os.environ["PYTHONPATH"] = broken

    repartir.init(num_cpus=1)

    @repartir.remote
    def one():
        return 1

    try:
        repartir.get(one.remote(), timeout=50)
        print("NO ERROR")
    except repartir.WorkerCrashedError as exc:
        print("ERROR", "fail to start" in str(exc), "BROKEN-WORKER-MARK" in str(exc))
    repartir.shutdown()
    """
)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("forward", ["1", "0"], ids=["forwarded", "log-files"])
def test_workers_that_fail_to_start_report_their_output(tmp_path, forward):
    """Workers that cannot start make ``get`` raise with what they wrote -- kept in memory
    when output is forwarded, read from the log file otherwise."""
    proc = _run_driver(BROKEN_WORKERS, tmp_path, REPARTIR_LOG_TO_DRIVER=forward)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _value_after(proc.stdout, "ERROR") == "True True", proc.stdout + proc.stderr[-4000:]
    forwarded = any(ln.startswith("(worker pid=") and ln.endswith(") BROKEN-WORKER-MARK")
                    for ln in proc.stderr.splitlines())
    assert forwarded == (forward == "1"), proc.stderr[-4000:]


def _pipes(pid: int | str = "self") -> dict[int, tuple[str, int]]:
    """fd -> (pipe inode, access mode) of ``pid``'s pipes."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                flags = next(int(ln.split()[1], 8) for ln in f if ln.startswith("flags:"))
        except (OSError, StopIteration):
            continue
        if target.startswith("pipe:"):
            found[int(fd)] = (target, flags & os.O_ACCMODE)
    return found


@repartir.remote
class Quiet:
    def pid(self):
        return os.getpid()


@pytest.mark.timeout(60)
def test_output_pipes_are_closed_and_not_inherited(no_session):
    """The driver holds one read end per worker and actor stream; no worker or actor holds
    the read end of any (not even its own); a dead process's pipes are closed; shutdown()
    closes the rest."""
    from repartir.runtime import driver

    before = _pipes()
    repartir.init(num_cpus=2)
    actor = Quiet.remote()
    actor_pid = repartir.get(actor.pid.remote(), timeout=30)
    new = [v for fd, v in _pipes().items() if fd not in before]
    # the read ends of output pipes: pipes of which the driver holds no write end (unlike
    # the workers' life pipe and the forwarder's wake-up pipe)
    reads = ({inode for inode, mode in new if mode == os.O_RDONLY}
             - {inode for inode, mode in new if mode == os.O_WRONLY})
    pids = [*driver.worker_pids(), actor_pid]
    assert len(reads) == 2 * len(pids), new
    for pid in pids:
        held = {inode: mode for inode, mode in _pipes(pid).values() if inode in reads}
        assert len(held) == 2 and set(held.values()) == {os.O_WRONLY}, (pid, held)

    victim = driver.worker_pids()[0]
    victim_pipes = {inode for inode, _ in _pipes(victim).values() if inode in reads}
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: not victim_pipes & {v[0] for v in _pipes().values()}, 10.0), (
        "the read ends of a dead worker's pipes stay open")
    assert repartir.get(add.remote(1, 2), timeout=30) == 3
    repartir.shutdown()
    assert _pipes() == before
