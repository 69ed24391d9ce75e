"""Helpers shared by the repartir tests: polling, worker processes, /dev/shm entries.

Imported by ``conftest.py`` and by test modules (``tests/`` is on ``sys.path`` because it
holds the root ``conftest.py``).
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import psutil

from repartir.runtime import driver as _driver

WORKER_MARK = "repartir.runtime.worker"
SHM_DIR = Path("/dev/shm")
REPO_ROOT = Path(__file__).resolve().parents[1]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def wait_file(path: str, timeout: float) -> bool:
    """Wait until ``path`` exists (a gate file another process touches); ``False`` after
    ``timeout`` seconds.  Used inside tasks and actors too (they import this module)."""
    return wait_until(lambda: os.path.exists(path), timeout, interval=0.01)


def is_repartir_shm(name: str) -> bool:
    """True for a ``/dev/shm`` entry name that a repartir session may create."""
    return name.startswith("repartir") or name.startswith("sem.repartir")


def shm_entries() -> set[str]:
    """Names of repartir entries now in ``/dev/shm``."""
    try:
        return {n for n in os.listdir(SHM_DIR) if is_repartir_shm(n)}
    except FileNotFoundError:
        return set()


def _shm_name_of(path: str) -> str | None:
    path = path.strip()
    if path.endswith(" (deleted)"):
        path = path[: -len(" (deleted)")]
    if not path.startswith("/dev/shm/"):
        return None
    name = path[len("/dev/shm/"):]
    return name if is_repartir_shm(name) else None


def shm_used_by(pids: Iterable[int]) -> set[str]:
    """repartir ``/dev/shm`` names mapped or held open by the given processes."""
    names: set[str] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    parts = line.split(None, 5)
                    if len(parts) == 6:
                        n = _shm_name_of(parts[5])
                        if n:
                            names.add(n)
        except OSError:
            pass
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    n = _shm_name_of(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except OSError:
                    continue
                if n:
                    names.add(n)
        except OSError:
            pass
    return names


def is_gone(proc: psutil.Process) -> bool:
    """True when ``proc`` no longer runs (exited, reaped, or a zombie)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def worker_processes(root: int | None = None) -> list[psutil.Process]:
    """Live (non-zombie) descendants of ``root`` (default: this process) that are workers."""
    try:
        parent = psutil.Process(root if root is not None else os.getpid())
        children = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(WORKER_MARK in part for part in child.cmdline()):
                found.append(child)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return found


def _our_tree() -> set[int]:
    me = psutil.Process()
    pids = {me.pid}
    try:
        pids.update(c.pid for c in me.children(recursive=True))
    except psutil.NoSuchProcess:
        pass
    return pids


def held_by_foreign_process(names: set[str]) -> set[str]:
    """Those of ``names`` that a live process outside this process tree maps or holds open."""
    if not names:
        return set()
    ours = _our_tree()
    held: set[str] = set()
    for pid_s in os.listdir("/proc"):
        if not pid_s.isdigit() or int(pid_s) in ours:
            continue
        held |= shm_used_by([int(pid_s)]) & names
        if held == names:
            break
    return held


def session_prefix(name: str) -> str:
    """``repartir-<session>`` of an entry named ``repartir-<session>-<part>`` (the session
    itself may contain dashes: ``repartir-2026-11-29_08-20-13_12007-arena``)."""
    base = name[len("sem."):] if name.startswith("sem.") else name
    return base.rsplit("-", 1)[0] if base.count("-") >= 2 else base


class Tracker:
    """What repartir sessions of this pytest process used during one module."""

    def __init__(self) -> None:
        self.shm_before = shm_entries()
        self.shm_names: set[str] = set()
        self.worker_pids: dict[int, psutil.Process] = {}

    def record(self) -> None:
        workers = worker_processes()
        for w in workers:
            self.worker_pids.setdefault(w.pid, w)
        self.shm_names |= shm_used_by([os.getpid(), *(w.pid for w in workers)])

    def leftovers(self) -> tuple[list[str], set[str]]:
        procs = [
            f"pid {p.pid}: {' '.join(_safe_cmdline(p))}"
            for p in {*worker_processes(),
                      *(p for p in self.worker_pids.values() if not is_gone(p))}
        ]
        present = shm_entries()
        prefixes = {session_prefix(n) for n in self.shm_names}
        ours = {n for n in present if n in self.shm_names or session_prefix(n) in prefixes}
        unexplained = present - self.shm_before - ours
        if unexplained:  # not ours for sure; ignore what another live session holds
            unexplained -= held_by_foreign_process(unexplained)
        return procs, ours | unexplained


def _safe_cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return ["?"]


def assert_nothing_left(tracker: Tracker, timeout: float = 5.0) -> None:
    """Fail unless every worker process and /dev/shm entry of this module is gone."""
    gc.collect()
    wait_until(lambda: tracker.leftovers() == ([], set()), timeout, interval=0.1)
    procs, shm = tracker.leftovers()
    assert not procs, f"worker processes left after shutdown(): {procs}"
    assert not shm, f"/dev/shm entries left after shutdown(): {sorted(shm)}"



def store_statistics():
    from repartir.runtime import driver

    return driver.store_statistics()


def used_bytes_back_to(level: int, slack: int = 1 << 20, timeout: float = 30.0) -> int:
    """Wait until the store's ``used_bytes`` is below ``level + slack`` (frees are
    asynchronous: dropped refs, loans released by their owners' next poll, slower on a
    loaded machine); returns the last value seen, for the assertion's message.  A leak never
    gets there, so the caller's assertion still fails on one."""
    now = store_statistics().used_bytes
    deadline = time.monotonic() + timeout
    while now >= level + slack and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
        now = store_statistics().used_bytes
    return now


def settled_used_bytes(timeout: float = 3.0) -> int:
    """``used_bytes`` once it has stopped changing (frees of earlier tests are asynchronous)."""
    gc.collect()
    last = store_statistics().used_bytes
    deadline = time.monotonic() + timeout
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
        now = store_statistics().used_bytes
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 0.3:
            break
    return last


def kill_leftover_actors() -> None:
    """Kill every actor the running session still has (tests that leave actors alive on
    purpose: queues passed to tasks, handles held elsewhere); their processes must be gone
    within 30 s."""
    node = _driver._node
    with node._lock:
        procs = list(node.actor_procs.items())
    for slot, _ in procs:
        node.kill_actor(slot, no_restart=True)
    assert wait_until(lambda: all(p.poll() is not None for _, p in procs), timeout=30)
