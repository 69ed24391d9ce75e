"""Word frequencies of the Python standard library, in parallel with repartir.

Every ``.py`` file of the running interpreter's standard library (site-packages left out) is
split into chunks; one remote task counts the words of one chunk, and the driver merges the
per-chunk counts as they arrive. The same count is then done serially in this process, and the
two results must be equal, word for word.

    python examples/wordfreq.py                  # one worker per core
    python examples/wordfreq.py --num-cpus 2 --top 20
"""

from __future__ import annotations

import argparse
import os
import re
import sysconfig
import time
from collections import Counter

import repartir

WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CHUNKS_PER_WORKER = 8


def stdlib_sources() -> list[str]:
    """Paths of every ``.py`` file of the standard library, site-packages excluded, sorted."""
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in ("site-packages", "dist-packages")]
        paths.extend(os.path.join(directory, f) for f in files if f.endswith(".py"))
    return sorted(paths)


def count_words(paths: list[str]) -> Counter[str]:
    """Occurrences of each identifier-like word in the given files."""
    counts: Counter[str] = Counter()
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            counts.update(WORD.findall(f.read()))
    return counts


# The same function, as a task: count_words_task.remote(paths) returns an ObjectRef at once.
count_words_task = repartir.remote(count_words)


@repartir.remote
def worker_pid() -> int:
    time.sleep(0.01)
    return os.getpid()


def wait_for_workers(n: int) -> None:
    """Run small tasks until ``n`` different worker processes have answered (or 60 s passed):
    workers start in the background after ``init()``, and the timings leave their start-up out."""
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while len(seen) < n and time.monotonic() < deadline:
        seen.update(repartir.get([worker_pid.remote() for _ in range(n)], timeout=60))


def count_in_parallel(chunks: list[list[str]]) -> Counter[str]:
    """One task per chunk; merge each result as soon as it is ready."""
    pending = [count_words_task.remote(chunk) for chunk in chunks]
    total: Counter[str] = Counter()
    while pending:
        ready, pending = repartir.wait(pending, num_returns=1)
        total.update(repartir.get(ready[0]))
    return total


def warm_page_cache(paths: list[str]) -> int:
    """Read every file once, so that neither timed run pays for the disk; returns total bytes."""
    size = 0
    for path in paths:
        with open(path, "rb") as f:
            size += len(f.read())
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="worker processes (default: one per core)")
    parser.add_argument("--top", type=int, default=10, help="how many words to print (default: 10)")
    args = parser.parse_args()

    paths = stdlib_sources()
    size = warm_page_cache(paths)
    print(f"{len(paths)} .py files, {size / 1e6:.1f} MB, in {sysconfig.get_paths()['stdlib']}")

    start = time.perf_counter()
    repartir.init(num_cpus=args.num_cpus)
    try:
        workers = int(repartir.cluster_resources()["CPU"])
        wait_for_workers(workers)
        startup = time.perf_counter() - start
        n_chunks = min(len(paths), CHUNKS_PER_WORKER * workers)
        chunks = [paths[i::n_chunks] for i in range(n_chunks)]

        start = time.perf_counter()
        parallel = count_in_parallel(chunks)
        parallel_s = time.perf_counter() - start
    finally:
        repartir.shutdown()  # before the serial run, which then has the machine to itself

    start = time.perf_counter()
    serial = count_words(paths)
    serial_s = time.perf_counter() - start

    if parallel != serial:
        raise SystemExit("error: the parallel word counts differ from the serial ones")

    print(f"{serial.total():,} words, {len(serial):,} distinct")
    print(f"top {args.top}:")
    for rank, (word, n) in enumerate(serial.most_common(args.top), 1):
        print(f"  {rank:>2}. {word:<20} {n:>10,}")
    print(f"start-up: {startup:.2f} s (workers: {workers}; not in the times below)")
    print(f"serial:   {serial_s:.2f} s")
    print(f"parallel: {parallel_s:.2f} s ({n_chunks} tasks)")
    print(f"speed-up: {serial_s / parallel_s:.2f}x")


if __name__ == "__main__":
    main()
