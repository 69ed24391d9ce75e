"""Helpers for test modules that need sessions of several configurations, count processes
or measure how many tasks ran at once.

- :class:`Sessions`: a module fixture's object; ``sessions(num_cpus=1)`` returns ``repartir``
  with a session of that configuration, reusing the running one when it matches.
- :class:`PeakChildren`: samples the live child processes of this process in a thread.
- :func:`rendezvous` / :func:`max_overlap`: tasks record their (start, end) on the shared
  monotonic clock and wait until ``k`` of them have started (or a deadline passes), so that
  "at most / at least n at once" does not depend on timing luck.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil

import repartir


class Sessions:
    """``sessions(**init_kwargs)``: a session with that configuration, reused while it does
    not change; ``fresh=True`` always starts a new one.  ``close()`` shuts it down.  Every
    change is recorded in the conftest's tracker, so the end-of-module leak check covers
    each session the module used."""

    def __init__(self, tracker) -> None:
        self.tracker = tracker
        self.current: dict | None = None

    def __call__(self, fresh: bool = False, **config):
        if repartir.is_initialized() and self.current == config and not fresh:
            return repartir
        self.close()
        repartir.init(**config)
        self.current = config
        self.tracker.record()
        return repartir

    def close(self) -> None:
        if repartir.is_initialized():
            self.tracker.record()
            repartir.shutdown()
        self.current = None


class PeakChildren:
    """Context manager: ``peak`` is the largest number of live (non-zombie) descendants of
    this process seen while it was active, ``pids`` every such pid."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="peak-children")

    def count(self) -> int:
        n = 0
        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            return 0
        for c in children:
            try:
                if c.status() != psutil.STATUS_ZOMBIE:
                    n += 1
                    self.pids.add(c.pid)
            except psutil.Error:
                continue
        return n

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.count())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakChildren":
        self.peak = self.count()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.count())


def rendezvous(directory: str, name: str, k: int, wait_s: float) -> tuple[float, float, int]:
    """Called inside a task: note that ``name`` started, wait until ``k`` tasks in
    ``directory`` have started or ``wait_s`` seconds pass, and return ``(start, end, pid)``
    on the system-wide monotonic clock."""
    start = time.monotonic()
    Path(directory, f"started-{name}").touch()
    deadline = start + wait_s
    while time.monotonic() < deadline:
        if sum(1 for n in os.listdir(directory) if n.startswith("started-")) >= k:
            break
        time.sleep(0.01)
    return start, time.monotonic(), os.getpid()


def max_overlap(intervals) -> int:
    """The largest number of ``(start, end, ...)`` intervals that contain one instant."""
    events = []
    for iv in intervals:
        events.append((iv[0], 1))
        events.append((iv[1], -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end at t comes before a start at t
    best = now = 0
    for _, d in events:
        now += d
        best = max(best, now)
    return best
