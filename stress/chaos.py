"""Chaos run: workers are SIGKILLed at random while tasks run; nothing may be lost or wrong.

::

    python stress/chaos.py --short     # 15 s of chaos, about 25 s in all (CI)
    python stress/chaos.py             # 10 minutes
    python stress/chaos.py --duration 3600 --num-cpus 4 --kill-interval 0.01 0.2

::

    main thread                                   killer thread
    ┌──────────────────────────────────────┐      ┌───────────────────────────────────────┐
    │ keep --inflight tasks outstanding:   │      │ sleep uniform(--kill-interval)        │
    │  sleep / compute / large array /     │      │ pid = random worker_pids()            │
    │  read a put array / nested children /│      │ (checked: our child, an attached      │
    │  compute holding num_cpus=0.5 and a  │      │  worker; --kill-starting: any)        │
    │  custom resource                     │      │                                       │
    │ harvest with wait(), check each value│      │ SIGKILL                               │
    └──────────────────────────────────────┘      └───────────────────────────────────────┘
    after --duration: stop the killer, drain (global --deadline), then check the node healed

Every task's value is known in advance (it is a function of the task's number), so each result
is checked exactly.  Most tasks run with ``max_retries=--max-retries`` (default 100): all of them
must come back correct.  A fraction (``--fragile``) run with ``max_retries=0``: each must be
correct or raise ``WorkerCrashedError`` naming the signal (``SIGKILL``).  Anything else fails
the run (exit status 1):

* a wrong value, or any other exception;
* fewer SIGKILLs than ``--min-kills`` (default: one per two of the longest kill intervals of
  the chaos time; 7 in a ``--short`` run): a run that killed nothing proved nothing;
* a task not back by the global deadline (lost, or a hang);
* an exception escaping any thread of the driver (the runtime's background threads);
* after the chaos: the node not back to ``num_cpus`` workers; ``available_resources()`` not
  back to ``cluster_resources()`` (a worker reserves a task's resources and records them as
  held by its slot in one critical section of the scheduler segment, so the node gives back
  everything a killed worker held); a probe batch failing;
  objects left in the driver's table; the arena bytes of the driver and of dead processes not
  back to their level before the chaos once every ref is dropped (``--arena-slack``
  tolerates some), or live workers holding more than the function blobs they exported.  A
  task's result is owned by the worker that wrote it until the owner claims it on arrival,
  so a worker killed before, or while, it sends a result leaks nothing.

``repartir.shutdown()`` runs in every case.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import random
import signal
import sys
import threading
import time

import numpy as np
import psutil

import repartir
from repartir.runtime import driver

MiB = 2**20
WORKER_MARK = "repartir.runtime.worker"
KINDS = ("sleep", "compute", "large", "read", "nested", "resource")
CHAOS_RESOURCE = 4  # units of the custom resource "chaos" the node offers
COMPUTE_N = 20_000
READ_ELEMENTS = 1 << 18  # the shared put array: 2 MiB of float64


class ThreadErrors:
    """Records exceptions that escape any thread of this process (the runtime's own
    background threads included): each one fails the run."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._previous = threading.excepthook
        threading.excepthook = self._hook

    def _hook(self, hook_args) -> None:
        name = hook_args.thread.name if hook_args.thread is not None else "?"
        self.errors.append(f"uncaught {hook_args.exc_type.__name__} in thread {name}: "
                           f"{hook_args.exc_value}")
        self._previous(hook_args)


# --------------------------------------------------------------------------- tasks


@repartir.remote
def sleep_task(i: int, seconds: float) -> tuple:
    time.sleep(seconds)
    return ("sleep", i)


def compute_value(i: int) -> int:
    return sum(range(i, i + COMPUTE_N))


@repartir.remote
def compute_task(i: int) -> int:
    total = 0
    for k in range(i, i + COMPUTE_N):  # pure-Python work, ~1 ms
        total += k
    return total


def large_elements(i: int) -> int:
    return (1 + i % 4) * MiB // 8  # 1 to 4 MiB of float64


@repartir.remote
def large_task(i: int) -> np.ndarray:
    return np.arange(large_elements(i), dtype=np.float64) + i


@repartir.remote
def read_task(i: int, a: np.ndarray) -> float:
    return float(a[i % len(a)]) + i


@repartir.remote
def nested_task(i: int, retries: int) -> int:
    children = [compute_task.options(max_retries=retries).remote(i + k) for k in range(2)]
    return sum(repartir.get(children, timeout=600))


def check(kind: str, i: int, value) -> str | None:
    """``None`` when ``value`` is task ``i``'s right result, else what is wrong."""
    if kind == "sleep":
        ok = value == ("sleep", i)
    elif kind == "compute":
        ok = value == compute_value(i)
    elif kind == "large":
        n = large_elements(i)
        ok = (isinstance(value, np.ndarray) and value.shape == (n,) and value[0] == i
              and value[-1] == n - 1 + i and float(value.sum()) == n * (n - 1) / 2 + n * i)
    elif kind == "read":
        ok = value == float(i % READ_ELEMENTS) + i
    elif kind == "nested":
        ok = value == compute_value(i) + compute_value(i + 1)
    elif kind == "resource":
        ok = value == compute_value(i)
    else:
        return f"unknown kind {kind}"
    return None if ok else f"{kind} task {i} returned a wrong value ({str(value)[:80]})"


# --------------------------------------------------------------------------- killer


def attached(pid: int, shm_prefix: str) -> bool:
    """Whether worker ``pid`` has mapped the node's shared memory, whose files start with
    ``shm_prefix`` (the configured ``shm_dir`` + ``/repartir-``; it attaches right after it
    starts: a worker killed before that counts as one that failed to start)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(shm_prefix in line for line in f)
    except OSError:
        return False


class Killer(threading.Thread):
    """SIGKILLs a random worker of this driver every ``uniform(lo, hi)`` seconds: one that
    has attached to the node, unless ``kill_starting``."""

    def __init__(self, lo: float, hi: float, rng: random.Random, shm_prefix: str,
                 kill_starting: bool = False) -> None:
        super().__init__(daemon=True, name="chaos-killer")
        self.lo, self.hi, self.rng, self.kill_starting = lo, hi, rng, kill_starting
        self.shm_prefix = shm_prefix
        self.stop = threading.Event()
        self.kills = 0
        self.errors: list[str] = []

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.wait(self.rng.uniform(self.lo, self.hi)):
            candidates = []
            for pid in driver.worker_pids():
                try:
                    p = psutil.Process(pid)  # never kill a recycled pid that is not ours
                    if (p.ppid() == me and any(WORKER_MARK in a for a in p.cmdline())
                            and (self.kill_starting or attached(pid, self.shm_prefix))):
                        candidates.append(pid)
                except psutil.Error:
                    continue
            if not candidates:
                continue
            pid = self.rng.choice(candidates)
            try:
                os.kill(pid, signal.SIGKILL)
                self.kills += 1
            except ProcessLookupError:
                continue
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"killer: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- run


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="15 s of chaos (CI)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of chaos (default 600; --short: 15)")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds for the whole run before it counts as hung "
                        "(default: duration + 90)")
    p.add_argument("--num-cpus", type=int, default=None, help="worker processes (default: cores)")
    p.add_argument("--inflight", type=int, default=64, help="tasks outstanding (default 64)")
    p.add_argument("--max-retries", type=int, default=100)
    p.add_argument("--fragile", type=float, default=0.1,
                   help="fraction of tasks with max_retries=0 (default 0.1)")
    p.add_argument("--kill-interval", type=float, nargs=2, default=(0.05, 0.5),
                   metavar=("MIN", "MAX"), help="seconds between kills (default 0.05 0.5)")
    p.add_argument("--kill-starting", action="store_true",
                   help="also kill workers still starting (not attached to the node yet), "
                        "which exercises the node's guard against workers that cannot start")
    p.add_argument("--kinds", default=",".join(KINDS),
                   help=f"task kinds to mix (default {','.join(KINDS)})")
    p.add_argument("--arena-slack", type=int, default=None,
                   help="bytes the arena may stay above its level before the chaos "
                        "(default: none allowed)")
    p.add_argument("--min-kills", type=int, default=None,
                   help="fewer SIGKILLs fail the run (default: duration / (2 x the longest "
                        "kill interval))")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 15.0 if args.short else 600.0
    if args.deadline is None:
        args.deadline = args.duration + 90.0
    if args.seed is None:
        args.seed = int(time.time())
    if args.min_kills is None:
        args.min_kills = int(args.duration / (2 * args.kill_interval[1]))
    args.kinds = tuple(k for k in args.kinds.split(",") if k)
    bad = set(args.kinds) - set(KINDS)
    if bad or not args.kinds:
        p.error(f"unknown kinds {sorted(bad)}; choose from {KINDS}")
    return args


WORKER_BYTES_LIMIT = 256 * 1024  # per live worker: the function blobs it exported


def settled_used_bytes(target: int, timeout: float = 10.0) -> int:
    """Arena bytes held by the driver and by slots of no live process, once they fall to
    ``target`` (or ``timeout`` passes).  Blocks of live workers are not counted: a worker
    that submits tasks keeps the blobs of their functions while it lives, and which worker
    ran a nested task changes with every kill (they are bounded separately)."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        by = driver.arena_bytes_by_owner()
        used = by["driver"] + by["other"]
        if used <= target or time.monotonic() > deadline:
            return used
        time.sleep(0.05)


class Abort(Exception):
    """The run cannot go on (the node failed as a whole)."""


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    failures: list[str] = []
    counts = collections.Counter()
    thread_errors = ThreadErrors()
    t_start = time.monotonic()
    hard_deadline = t_start + args.deadline
    info = repartir.init(num_cpus=args.num_cpus, resources={"chaos": CHAOS_RESOURCE})
    num_cpus = info["num_cpus"]
    shm_prefix = os.path.join(driver.client().config.shm_dir, "repartir-")
    killer = Killer(*args.kill_interval, rng=random.Random(rng.random()),
                    shm_prefix=shm_prefix, kill_starting=args.kill_starting)
    pending: dict = {}  # ref -> (kind, i, fragile)
    try:
        # warm-up (functions exported, workers up) and the arena's level before the chaos
        assert repartir.get(compute_task.remote(0), timeout=60) == compute_value(0)
        shared = np.arange(READ_ELEMENTS, dtype=np.float64)
        warm_ref = repartir.put(shared)
        repartir.get([large_task.remote(0), read_task.remote(0, warm_ref),
                      nested_task.remote(0, 1), sleep_task.remote(0, 0.0),
                      compute_task.options(num_cpus=0.5, resources={"chaos": 1}).remote(0)],
                     timeout=60)
        del warm_ref
        baseline_used = settled_used_bytes(0, timeout=1.0)
        shared_ref = repartir.put(shared)  # read by the "read" tasks; dropped before the end
        print(f"[chaos] seed {args.seed}, {num_cpus} workers, {args.duration:.0f} s of chaos, "
              f"kills every {args.kill_interval[0]}-{args.kill_interval[1]} s", flush=True)

        end_used = None
        try:
            killer.start()
            chaos_end = time.monotonic() + args.duration
            i = 0
            last_report = time.monotonic()

            def submit() -> None:
                nonlocal i
                i += 1
                kind = rng.choice(args.kinds)
                fragile = rng.random() < args.fragile
                retries = 0 if fragile else args.max_retries
                if kind == "sleep":
                    ref = sleep_task.options(max_retries=retries).remote(i, rng.uniform(0, 0.03))
                elif kind == "compute":
                    ref = compute_task.options(max_retries=retries).remote(i)
                elif kind == "large":
                    ref = large_task.options(max_retries=retries).remote(i)
                elif kind == "read":
                    # (deleted from the enclosing scope only after the last submit)
                    ref = read_task.options(max_retries=retries).remote(i, shared_ref)  # noqa: F821
                elif kind == "nested":
                    ref = nested_task.options(max_retries=retries).remote(i, retries)
                else:  # reserved resources: half a CPU and a unit of a custom resource
                    ref = compute_task.options(max_retries=retries, num_cpus=0.5,
                                               resources={"chaos": 1}).remote(i)
                pending[ref] = (kind, i, fragile)
                counts["submitted"] += 1

            def harvest(timeout: float) -> None:
                if not pending:
                    return
                refs = list(pending)
                try:
                    ready, _ = repartir.wait(refs, num_returns=len(refs), timeout=timeout)
                except Exception as exc:  # noqa: BLE001 -- the node itself failed
                    failures.append(f"wait() raised {type(exc).__name__}: {exc}")
                    raise Abort() from exc
                for ref in ready:
                    kind, n, fragile = pending.pop(ref)
                    try:
                        value = repartir.get(ref, timeout=60)
                    except repartir.WorkerCrashedError as exc:
                        if fragile and "SIGKILL" in str(exc):
                            counts["crashed (fragile, allowed)"] += 1
                        else:
                            failures.append(f"{kind} task {n} (max_retries="
                                            f"{0 if fragile else args.max_retries}): "
                                            f"WorkerCrashedError: {exc}")
                        continue
                    except Exception as exc:  # noqa: BLE001
                        failures.append(f"{kind} task {n}: {type(exc).__name__}: {exc}")
                        continue
                    problem = check(kind, n, value)
                    del value
                    if problem:
                        failures.append(problem)
                    else:
                        counts["correct"] += 1

            while time.monotonic() < chaos_end and len(failures) < 20:
                while len(pending) < args.inflight:
                    submit()
                harvest(0.05)
                if time.monotonic() > hard_deadline:
                    break
                if not args.quiet and time.monotonic() - last_report > 5:
                    last_report = time.monotonic()
                    print(f"[chaos] {time.monotonic() - t_start:6.1f} s  {killer.kills} kills  "
                          f"{counts['correct']:,} correct  "
                          f"{counts['crashed (fragile, allowed)']} fragile crashed  "
                          f"{len(pending)} pending  {len(failures)} failures", flush=True)
            killer.stop.set()
            killer.join(5)
            failures.extend(killer.errors)
            if killer.kills < args.min_kills:
                failures.append(f"only {killer.kills} workers were killed in {args.duration:.0f} s "
                                f"(at least {args.min_kills} required; workers are found by "
                                f"their mappings of {shm_prefix}*)")

            # drain: everything submitted must come back before the global deadline
            while pending and time.monotonic() < hard_deadline:
                harvest(min(1.0, max(0.0, hard_deadline - time.monotonic())))
            if pending:
                lost = collections.Counter(k for k, _, _ in pending.values())
                failures.append(f"{len(pending)} tasks not back {args.deadline:.0f} s after the "
                                f"start (lost or hung): {dict(lost)}")
                for ref in list(pending):
                    repartir.cancel(ref, force=True)
                pending.clear()

            # the node heals: workers back, resources free, probe batch right, nothing left
            healed = _wait_for(lambda: len(driver.worker_pids()) == num_cpus, 15)
            if not healed:
                failures.append(f"{len(driver.worker_pids())} workers after the chaos, "
                                f"expected {num_cpus}")
            total = {k: v for k, v in repartir.cluster_resources().items()
                     if k != "object_store_memory"}
            free = lambda: {k: repartir.available_resources().get(k) for k in total}  # noqa
            if not _wait_for(lambda: free() == total, 15):
                failures.append(f"resources not released after the chaos: available "
                                f"{free()}, total {total}")
            try:
                probe = repartir.get([compute_task.remote(k) for k in range(200)], timeout=60)
                if probe != [compute_value(k) for k in range(200)]:
                    failures.append("the probe batch after the chaos returned wrong values")
            except Exception as exc:  # noqa: BLE001
                failures.append(f"the probe batch after the chaos failed: {type(exc).__name__}: "
                                f"{exc}")
            del shared_ref
            gc.collect()
            slack = args.arena_slack or 0
            end_used = settled_used_bytes(baseline_used + slack)
            if end_used > baseline_used + slack:
                failures.append(f"arena used bytes did not return to the level before the chaos: "
                                f"{end_used:,} B now, {baseline_used:,} B before "
                                f"({(end_used - baseline_used) / MiB:+.2f} MiB)")
            worker_bytes = driver.arena_bytes_by_owner()["workers"]
            if worker_bytes > WORKER_BYTES_LIMIT * num_cpus:
                failures.append(f"live workers hold {worker_bytes:,} arena bytes after the "
                                f"chaos (function blobs should be a few KiB each)")
            st = driver.store_statistics()
            if st.num_objects:
                failures.append(f"{st.num_objects} objects left in the driver's table")
        except Abort:
            pass
        finally:
            killer.stop.set()
        failures.extend(thread_errors.errors)

        elapsed = time.monotonic() - t_start
        print("[chaos] summary")
        print(f"  seed           {args.seed}")
        print(f"  time           {elapsed:.1f} s ({args.duration:.0f} s of chaos)")
        print(f"  kills          {killer.kills} SIGKILLs of workers")
        print(f"  tasks          {counts['submitted']:,} submitted, {counts['correct']:,} "
              f"correct, {counts['crashed (fragile, allowed)']} fragile ones crashed "
              f"(allowed)")
        print(f"  arena used     {baseline_used:,} B before, "
              f"{'n/a' if end_used is None else f'{end_used:,}'} B after")
        if failures:
            print(f"[chaos] FAILED ({len(failures)} problems)")
            for f in failures[:30]:
                print(f"  - {f}")
            return 1
        print("[chaos] PASSED")
        return 0
    finally:
        killer.stop.set()
        repartir.shutdown()


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


if __name__ == "__main__":
    sys.exit(main())
