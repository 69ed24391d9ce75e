"""The short stress runs, as CI runs them: ``stress/soak.py --short`` (100,000 tiny tasks, the
driver's private memory growing by at most 25 bytes per task, the arena back to its level;
with ``--leak-per-task 100`` it must fail) and ``stress/chaos.py --short`` (~15 s of random
SIGKILLs of workers, at least 7 of them, every result correct, nothing lost).

Each runs as a subprocess with its own session (``sys.executable stress/X.py --short``) and
must exit with status 0; on failure the assertion shows the run's summary.  Afterwards no
worker process of that run and nothing of its session in ``/dev/shm`` may remain (checked by
the pids and /dev/shm names it used, so another session on the machine does not count).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import repartir
from rtsupport import WORKER_MARK, is_gone, session_prefix, shm_entries, wait_until

PACKAGE_ROOT = Path(repartir.__file__).resolve().parents[1]  # the repartir under test
STRESS = Path(__file__).resolve().parents[1] / "stress"


def run_stress(script: str, *args: str, timeout: float) -> tuple[int, str, float]:
    """Run ``stress/<script> args``; returns (exit status, output, seconds).  While it runs,
    remember its worker processes and /dev/shm entries, and check they are gone after."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("REPARTIR_NUM_CPUS", None)
    shm_before = shm_entries()
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(STRESS / script), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    workers: dict[int, psutil.Process] = {}
    shm_seen: set[str] = set()
    try:
        parent = psutil.Process(proc.pid)
        out_chunks: list[str] = []
        # a thread drains the output; this one samples the run's workers and /dev/shm
        reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()),
                                  daemon=True)
        reader.start()
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                proc.kill()
                proc.wait()
                reader.join(5)
                return -9, "".join(out_chunks) + f"\n(killed after {timeout:.0f} s)", timeout
            try:
                for c in parent.children(recursive=True):
                    try:
                        if any(WORKER_MARK in a for a in c.cmdline()):
                            workers.setdefault(c.pid, c)
                    except psutil.Error:
                        continue
            except psutil.Error:
                pass
            shm_seen |= shm_entries() - shm_before
            time.sleep(0.2)
        reader.join(10)
        elapsed = time.monotonic() - t0
        output = "".join(out_chunks)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    # nothing of that run remains
    assert wait_until(lambda: all(is_gone(w) for w in workers.values()), timeout=10), \
        f"worker processes of {script} left: {[w.pid for w in workers.values() if not is_gone(w)]}"
    prefixes = {session_prefix(n) for n in shm_seen}
    left = lambda: {n for n in shm_entries() if session_prefix(n) in prefixes}  # noqa: E731
    assert wait_until(lambda: not left(), timeout=10), \
        f"/dev/shm entries of {script} left: {left()}"
    return proc.returncode, output, elapsed


@pytest.mark.timeout(180)
def test_soak_short():
    code, output, elapsed = run_stress("soak.py", "--short", "--quiet", timeout=150)
    print(output)
    print(f"soak --short: {elapsed:.1f} s")
    assert code == 0, f"stress/soak.py --short exited with {code}:\n{output[-6000:]}"
    assert "[soak] PASSED" in output


@pytest.mark.timeout(180)
def test_soak_short_fails_on_a_leak_of_100_bytes_per_task():
    """The soak's memory bound can fail: with the driver keeping 100 bytes per task (its
    self-test option), the same short run must fail on the growth."""
    code, output, _ = run_stress("soak.py", "--short", "--quiet", "--leak-per-task", "100",
                                 timeout=150)
    assert code == 1, f"a 100 B/task leak passed the soak:\n{output[-3000:]}"
    assert "driver private memory grew" in output, output[-3000:]


@pytest.mark.timeout(180)
def test_chaos_short():
    code, output, elapsed = run_stress("chaos.py", "--short", "--quiet", timeout=150)
    print(output)
    print(f"chaos --short: {elapsed:.1f} s")
    assert code == 0, f"stress/chaos.py --short exited with {code}:\n{output[-6000:]}"
    assert "[chaos] PASSED" in output
