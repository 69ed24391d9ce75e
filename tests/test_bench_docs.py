"""The benchmark harness against its definitions (docs/benchmarks.md) and its own checks.

- Every workload the harness runs is defined in docs/benchmarks.md, and the goal column of the
  harness's table carries the numbers of that file's Goals table (the two cannot drift apart).
- The checksum the harness compares arrays with sees a torn chunk in the middle of an array
  (first and last elements alone would not), and the memcpy reference's threaded copy copies
  every byte.
- A short run of the harness itself (repartir and the memcpy reference, init, put and get at a
  small size) succeeds and prints, for each workload, what each system does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rtsupport import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
from stress.tasks import checksum  # noqa: E402
from stress.workloads import DOES, GOALS, REGISTRY, WORKLOADS, _threaded_copy  # noqa: E402
import stress.cluster_workloads  # noqa: E402,F401  (adds remote_tiny and transfer, as bench.py does)

DOC = Path(REPO_ROOT) / "docs" / "benchmarks.md"


def _table(title: str) -> dict[str, str]:
    """The rows of the first table after the ``## title`` heading: first cell -> second."""
    text = DOC.read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and not set(cells[0]) <= set("-"):
            rows[cells[0]] = cells[1]
    return rows


def _numbers(text: str) -> list[float]:
    return sorted(float(x.replace(",", "")) for x in re.findall(r"\d[\d,]*(?:\.\d+)?", text))


def test_every_workload_is_defined_in_the_docs():
    defined = _table("Workloads")
    assert set(WORKLOADS) <= set(defined), set(WORKLOADS) - set(defined)
    assert set(DOES) == set(WORKLOADS)


@pytest.mark.parametrize("workload", sorted(GOALS))
def test_goal_column_says_what_the_docs_say(workload):
    goals = _table("Goals")
    assert workload in goals, f"{workload} has no goal in docs/benchmarks.md"
    assert _numbers(GOALS[workload]) == _numbers(goals[workload]), (
        GOALS[workload], goals[workload])


def test_every_system_that_runs_a_workload_says_what_it_does():
    from stress.workloads import does

    for system, fns in REGISTRY.items():
        for w in fns:
            assert does(w, system), f"{system}/{w} has no line in DOES"


def test_checksum_sees_a_torn_middle_chunk():
    a = np.random.default_rng(1).random(3 << 20)  # 24 MiB
    torn = a.copy()
    mid = torn.nbytes // 2
    torn.view(np.uint8)[mid:mid + 4096] = 0  # one page in the middle never copied
    assert float(torn[0] + torn[-1]) == float(a[0] + a[-1])  # the old check passes it
    assert checksum(torn) != checksum(a)
    assert checksum(a.copy()) == checksum(a)


@pytest.mark.parametrize("parts", [1, 2, 3, 4])
def test_threaded_copy_copies_every_byte(parts):
    src = np.random.default_rng(parts).random((17 << 20) // 8 + 5)  # not a multiple of 64
    dst = np.zeros_like(src)
    with ThreadPoolExecutor(parts) as pool:
        _threaded_copy(pool, dst, src, parts)
    assert np.array_equal(dst, src)


@pytest.mark.timeout(240)
def test_quick_run_of_the_harness(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "stress/bench.py", "--quick", "--systems", "repartir",
         "--workloads", "init,put,get", "--array-mib", "16", "--json", str(out),
         "--logdir", str(tmp_path)],
        capture_output=True, text=True, timeout=220, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    text = proc.stdout
    assert "what each system does" in text
    for line in ("from creating the runtime until N rendezvous tasks run at once on all N workers",
                 "put, memcpy: np.copyto into a warm buffer, best of 1..",
                 "get, repartir: zero-copy view: unpickle the ref (lookup + pin)"):
        assert line in text, text
    import json

    recs = {(r["system"], r["workload"]): r for r in json.loads(out.read_text())}
    assert set(recs) == {("repartir", "init"), ("repartir", "put"), ("repartir", "get"),
                         ("memcpy", "put")}
    assert recs[("repartir", "put")]["extra"]["checked"].startswith("crc32 of every byte")
    assert "fraction_of_memcpy" in recs[("repartir", "put")]["extra"]
    assert set(recs[("memcpy", "put")]["extra"]["GBps_by_threads"]) >= {"1"}
