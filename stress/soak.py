"""Soak run: many tiny tasks, and resident memory that must stay flat.

::

    python stress/soak.py              # 1,000,000 tiny tasks (minutes)
    python stress/soak.py --short      # 100,000 (CI: well under a minute on 2 cores)
    python stress/soak.py --tasks 200000 --batch 2000 --num-cpus 4

Tasks go in batches (submit a batch, ``get`` it, check every value).  Every batch also carries
a few tasks whose results live in the arena (arrays over the inline limit) and one ``put``, so
both the inline path and the arena path are soaked.  After every batch the run samples

* the driver's private resident memory (``RssAnon`` of ``/proc/self/status``: heap and malloc
  arenas, not the shared-memory pages of the arena and the rings, which count in the RSS as
  they are first touched and then stay flat), its full RSS, and the summed RSS of the worker
  processes (both reported only: workers are replaced and extra ones come and go);
* the arena's used bytes (``repartir.runtime.driver.store_statistics().used_bytes``), the
  driver's object-table size and its tasks in flight.

Failure (exit status 1), after a summary on stdout:

* a wrong value, an error, or the global ``--deadline`` passing;
* driver memory growth per task: the least-squares slope of the driver's private memory over
  the tasks done (every batch after ``--warmup``) above ``--growth-per-task`` bytes (default
  25). A leak of 100 bytes per task fails a ``--short`` run (100,000 tasks): it adds ~9 MiB
  over the measured batches, where the healthy driver's private memory moves by well under
  one (``--leak-per-task N``, a self-test, makes the driver keep ``N`` bytes per task);
* an exception escaping any thread of the driver (the runtime's background threads);
* the arena's used bytes not coming back to the level measured after the warm-up (within
  ``--arena-slack`` bytes) once every ref is dropped, or objects left in the driver's table.

``repartir.shutdown()`` runs in every case.  Exit status 0 means the soak passed.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import threading
import time

import numpy as np
import psutil

import repartir
from repartir.runtime import driver

MiB = 2**20
LARGE_ELEMENTS = 32_768  # 256 KiB of float64: above the inline limit, so it goes to the arena


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


@repartir.remote
def tiny(i: int) -> int:
    return i + 1


@repartir.remote
def large(i: int) -> np.ndarray:
    a = np.empty(LARGE_ELEMENTS, dtype=np.float64)
    a.fill(i)
    return a


@repartir.remote
def reads(a: np.ndarray) -> float:
    return float(a[0] + a[-1])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="100,000 tasks (CI)")
    p.add_argument("--tasks", type=int, default=None,
                   help="tiny tasks in all (default 1,000,000; --short: 100,000)")
    p.add_argument("--batch", type=int, default=1_000, help="tasks per batch (default 1,000)")
    p.add_argument("--large-per-batch", type=int, default=2,
                   help="tasks per batch returning a 256 KiB array (arena path; default 2)")
    p.add_argument("--num-cpus", type=int, default=None, help="worker processes (default: cores)")
    p.add_argument("--warmup", type=int, default=3, help="batches ignored before the baseline")
    p.add_argument("--growth-per-task", type=float, default=25.0,
                   help="bytes per task the driver's private memory may grow by (slope over "
                        "the measured batches; default 25)")
    p.add_argument("--leak-per-task", type=int, default=0,
                   help="self-test: the driver keeps this many bytes per task (the run must "
                        "then fail when it is above --growth-per-task)")
    p.add_argument("--arena-slack", type=int, default=64 * 1024,
                   help="bytes the arena may stay above its warm-up level (default 64 KiB)")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds for the whole run (default: 120 with --short, none otherwise)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    if args.tasks is None:
        args.tasks = 100_000 if args.short else 1_000_000
    if args.deadline is None and args.short:
        args.deadline = 120.0
    if args.batch < 1 or args.tasks < args.batch:
        p.error("--batch must be >= 1 and <= --tasks")
    return args


def private_bytes() -> int:
    """This process's anonymous resident memory (``RssAnon``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs``."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def workers_rss() -> int:
    total = 0
    for pid in driver.worker_pids():
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def settled_used_bytes(timeout: float = 10.0, target: int | None = None) -> int:
    """Arena used bytes once frees have landed: stable for 0.3 s (or at ``target``)."""
    gc.collect()
    last = driver.store_statistics().used_bytes
    deadline = time.monotonic() + timeout
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        if target is not None and last <= target:
            return last
        time.sleep(0.05)
        gc.collect()
        now = driver.store_statistics().used_bytes
        if now != last:
            last, stable_since = now, time.monotonic()
        elif target is None and time.monotonic() - stable_since >= 0.3:
            break
    return last


def run_batch(start: int, n: int, n_large: int) -> list[str]:
    """One batch: ``n`` tiny tasks (+ ``n_large`` arena results, one put read by a task);
    returns the problems found (empty: all correct)."""
    problems = []
    refs = [tiny.remote(i) for i in range(start, start + n)]
    big_refs = [large.remote(start + k) for k in range(n_large)]
    put_ref = repartir.put(np.full(LARGE_ELEMENTS, float(start)))
    read_ref = reads.remote(put_ref)
    values = repartir.get(refs, timeout=300)
    expected = range(start + 1, start + n + 1)
    if values != list(expected):
        bad = next(i for i, (v, e) in enumerate(zip(values, expected)) if v != e)
        problems.append(f"batch at {start}: task {start + bad} returned {values[bad]!r}, "
                        f"expected {expected[bad]}")
    for k, arr in enumerate(repartir.get(big_refs, timeout=300)):
        if arr.shape != (LARGE_ELEMENTS,) or arr[0] != start + k or arr[-1] != start + k:
            problems.append(f"batch at {start}: large result {k} is wrong")
        del arr
    if repartir.get(read_ref, timeout=300) != 2.0 * start:
        problems.append(f"batch at {start}: a task read a wrong put value")
    return problems


def main(argv=None) -> int:
    args = parse_args(argv)
    me = psutil.Process()
    failures: list[str] = []
    # done, private, rss, workers' rss, arena used, objects, in flight
    samples: list[tuple[int, int, int, int, int, int, int]] = []
    leaked: list[bytes] = []  # --leak-per-task
    thread_errors = ThreadErrors()
    t_start = time.monotonic()
    repartir.init(num_cpus=args.num_cpus)
    try:
        num_batches = args.tasks // args.batch
        baseline_used = None
        done = 0
        for b in range(num_batches):
            if args.deadline is not None and time.monotonic() - t_start > args.deadline:
                failures.append(f"deadline of {args.deadline:.0f} s passed after {done:,} "
                                f"tasks ({b} of {num_batches} batches)")
                break
            try:
                problems = run_batch(done, args.batch, args.large_per_batch)
            except Exception as exc:  # noqa: BLE001 -- any error fails the soak
                failures.append(f"batch {b}: {type(exc).__name__}: {exc}")
                break
            if problems:
                failures.extend(problems[:5])
                break
            done += args.batch
            if args.leak_per_task:
                leaked.append(bytes(args.leak_per_task * args.batch))
            if b + 1 == args.warmup:
                baseline_used = settled_used_bytes()
            st = driver.store_statistics()
            samples.append((done, private_bytes(), me.memory_info().rss, workers_rss(),
                            st.used_bytes, st.num_objects, st.tasks_in_flight))
            if not args.quiet and (b % max(1, num_batches // 20) == 0 or b + 1 == num_batches):
                rate = done / (time.monotonic() - t_start)
                print(f"[soak] {done:>10,} tasks  {rate:>9,.0f}/s  driver RSS "
                      f"{samples[-1][1] / MiB:7.1f} MiB private, {samples[-1][2] / MiB:7.1f} MiB"
                      f"  workers RSS {samples[-1][3] / MiB:7.1f}"
                      f" MiB  arena used {st.used_bytes / MiB:8.2f} MiB  objects "
                      f"{st.num_objects}", flush=True)
        elapsed = time.monotonic() - t_start

        # -- memory verdicts -------------------------------------------------------------
        growth_verdict = "n/a"
        measured = samples[args.warmup:]
        if len(measured) >= 10 and not failures:
            xs = [float(x[0]) for x in measured]
            per_task = slope(xs, [float(x[1]) for x in measured])
            total = measured[-1][1] - measured[0][1]
            span = measured[-1][0] - measured[0][0]
            growth_verdict = (f"{per_task:+.1f} B per task over {span:,}"
                              f" tasks ({total / MiB:+.2f} MiB; limit {args.growth_per_task:g} B"
                              f" per task)")
            if per_task > args.growth_per_task:
                failures.append(f"driver private memory grew: {growth_verdict}")
        elif not failures:
            failures.append(f"too few batches after the warm-up ({len(measured)}) to judge "
                            f"memory growth: run more --tasks or a smaller --batch")

        gc.collect()
        end_used = None
        if baseline_used is not None:
            end_used = settled_used_bytes(target=baseline_used + args.arena_slack)
            if end_used > baseline_used + args.arena_slack:
                failures.append(f"arena used bytes did not return to baseline: "
                                f"{end_used:,} B now, {baseline_used:,} B after warm-up")
        st = driver.store_statistics()
        if not failures and st.num_objects:
            failures.append(f"{st.num_objects} objects left in the driver's table")
        if not failures and st.tasks_in_flight:
            failures.append(f"{st.tasks_in_flight} tasks still in flight")
        failures.extend(thread_errors.errors)

        # -- summary -----------------------------------------------------------------------
        peak_rss = max((s[2] for s in samples), default=0)
        peak_used = max((s[4] for s in samples), default=0)
        print("[soak] summary")
        print(f"  tasks          {done:,} in {elapsed:.1f} s ({done / max(elapsed, 1e-9):,.0f}/s),"
              f" batches of {args.batch:,} + {args.large_per_batch} arena results + 1 put")
        print(f"  driver memory  private (RssAnon) {growth_verdict}; RSS peak "
              f"{peak_rss / MiB:.1f} MiB (shared pages included; reported only)")
        if samples:
            print(f"  workers RSS    first {samples[0][3] / MiB:.1f} MiB, last "
                  f"{samples[-1][3] / MiB:.1f} MiB (summed; reported only)")
        na = "n/a"
        print(f"  arena used     after warm-up "
              f"{na if baseline_used is None else f'{baseline_used:,}'} B, peak {peak_used:,} B, "
              f"at the end {na if end_used is None else f'{end_used:,}'} B")
        print(f"  driver table   {st.num_objects} objects, {st.tasks_in_flight} tasks in flight")
        if failures:
            print("[soak] FAILED")
            for f in failures:
                print(f"  - {f}")
            return 1
        print("[soak] PASSED")
        return 0
    finally:
        repartir.shutdown()


if __name__ == "__main__":
    sys.exit(main())
