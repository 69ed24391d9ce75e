"""The shared-memory object store seen from the driver: zero-copy read-only views, views
that outlive their ``ObjectRef``, memory that comes back when refs and views die, reuse of
freed blocks, and the store's statistics record."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import repartir
from rtsupport import REPO_ROOT, settled_used_bytes, store_statistics, wait_until

MIB = 1 << 20


@repartir.remote
def identity(x):
    return x


@repartir.remote
def make_array(n: int, fill: float):
    return np.full(n, fill, dtype=np.float64)


@repartir.remote
def describe(a):
    """What a task sees of its array argument."""
    return {
        "type": type(a).__name__,
        "writeable": bool(a.flags.writeable),
        "sum": float(a.sum()),
        "shape": a.shape,
    }


@repartir.remote
def try_write(a):
    a[0] = 1.0
    return "wrote"


@repartir.remote
def try_setflags(a):
    a.setflags(write=True)
    return "made writeable"


def used_bytes_returns_to(target: int, timeout: float = 2.0) -> int:
    gc.collect()
    wait_until(lambda: (gc.collect(), store_statistics().used_bytes)[1] == target, timeout)
    return store_statistics().used_bytes


# --------------------------------------------------------------------------- statistics


def test_store_statistics_is_a_frozen_record(rt):
    stats = store_statistics()
    assert dataclasses.is_dataclass(stats)
    for field in ("capacity", "used_bytes", "num_objects"):
        assert isinstance(getattr(stats, field), int), field
    assert stats.capacity > 0
    assert 0 <= stats.used_bytes <= stats.capacity
    assert stats.num_objects >= 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.used_bytes = 0  # type: ignore[misc]


def test_put_of_big_array_uses_arena_bytes(rt):
    base = settled_used_bytes()
    a = np.arange(MIB, dtype=np.float64)  # 8 MiB
    ref = repartir.put(a)
    assert store_statistics().used_bytes >= base + a.nbytes
    del ref
    assert used_bytes_returns_to(base) == base


def test_small_objects_take_no_arena_bytes(rt):
    base = settled_used_bytes()
    refs = [repartir.put(i) for i in range(100)] + [repartir.put(np.arange(10))]
    assert store_statistics().used_bytes - base < 100 * 1024
    assert repartir.get(refs[-1]).tolist() == list(range(10))


# --------------------------------------------------------------------------- views


def test_get_returns_read_only_view(rt):
    a = np.random.default_rng(0).random(200_000)
    ref = repartir.put(a)
    v = repartir.get(ref)
    assert v.flags.writeable is False
    with pytest.raises(ValueError):
        v[0] = 1.0
    with pytest.raises(ValueError):
        v.setflags(write=True)  # the buffer itself is read-only, not just the flag
    np.testing.assert_array_equal(v, a)


def test_get_is_zero_copy(rt):
    ref = repartir.put(np.ones(500_000))
    v1, v2 = repartir.get(ref), repartir.get([ref])[0]
    assert np.shares_memory(v1, v2), "two gets of one object should view the same arena block"


def test_put_copies_the_value(rt):
    a = np.zeros(300_000)
    ref = repartir.put(a)
    a[:] = 7.0
    assert float(repartir.get(ref).sum()) == 0.0
    assert not np.shares_memory(a, repartir.get(ref))


def test_view_stays_valid_after_ref_is_deleted(rt):
    base = settled_used_bytes()
    expected = np.random.default_rng(1).random(MIB)  # 8 MiB
    ref = repartir.put(expected)
    view = repartir.get(ref)
    tail = view[::7]
    del ref
    gc.collect()
    # Churn the arena: if the view did not pin its block, new objects would reuse it.
    for fill in range(1, 6):
        other = repartir.put(np.full(MIB, float(fill)))
        assert float(repartir.get(other)[0]) == float(fill)
        del other
        gc.collect()
    np.testing.assert_array_equal(view, expected)
    assert store_statistics().used_bytes >= base + expected.nbytes, "a live view must pin its block"
    del view
    gc.collect()
    np.testing.assert_array_equal(tail, expected[::7])  # a slice of a view pins it too
    del tail
    assert used_bytes_returns_to(base) == base


def test_view_inside_container_stays_valid(rt):
    expected = np.arange(400_000, dtype=np.int32)
    ref = repartir.put({"a": expected, "b": [expected[::2].copy(), 3]})
    value = repartir.get(ref)
    del ref
    gc.collect()
    for fill in range(3):
        repartir.get(repartir.put(np.full(400_000, fill, dtype=np.int32)))
    np.testing.assert_array_equal(value["a"], expected)
    np.testing.assert_array_equal(value["b"][0], expected[::2])
    assert value["a"].flags.writeable is False


def warm_up(*functions) -> None:
    """Run each remote function once: its code is exported to the store on first use and
    stays there for the session, so measure ``used_bytes`` only after that."""
    for fn in functions:
        if fn is make_array:
            repartir.get(fn.remote(1, 0.0))
        else:
            repartir.get(fn.remote(0))


def test_task_result_is_read_only_view_and_freed(rt):
    warm_up(make_array)
    base = settled_used_bytes()
    ref = make_array.remote(MIB, 2.5)
    v = repartir.get(ref)
    assert v.flags.writeable is False
    assert v.shape == (MIB,) and float(v[-1]) == 2.5
    del ref
    gc.collect()
    repartir.get(make_array.remote(MIB, 9.0))  # churn
    assert float(v.sum()) == 2.5 * MIB
    del v
    assert used_bytes_returns_to(base) == base


def test_task_argument_is_read_only_view(rt):
    a = np.arange(300_000, dtype=np.float64)
    ref = repartir.put(a)
    for arg in (a, ref):
        seen = repartir.get(describe.remote(arg))
        assert seen == {"type": "ndarray", "writeable": False, "sum": float(a.sum()),
                        "shape": a.shape}
    with pytest.raises(ValueError):
        repartir.get(try_write.remote(ref))
    with pytest.raises(ValueError):
        repartir.get(try_setflags.remote(ref))
    assert float(repartir.get(ref)[0]) == 0.0


# --------------------------------------------------------------------------- freeing


def test_memory_freed_when_refs_and_views_die(rt):
    base = settled_used_bytes()
    base_objects = store_statistics().num_objects
    refs = [repartir.put(np.full(200_000, i, dtype=np.float64)) for i in range(5)]
    views = repartir.get(refs)
    assert store_statistics().used_bytes >= base + 5 * 200_000 * 8
    assert store_statistics().num_objects >= base_objects + 5
    del refs
    gc.collect()
    assert store_statistics().used_bytes >= base + 5 * 200_000 * 8
    assert [float(v[0]) for v in views] == [0.0, 1.0, 2.0, 3.0, 4.0]
    del views
    assert used_bytes_returns_to(base) == base
    assert wait_until(lambda: store_statistics().num_objects == base_objects, 2.0), (
        store_statistics())


def test_memory_freed_after_task_used_argument(rt):
    repartir.get(describe.remote(np.zeros(3)))
    base = settled_used_bytes()
    ref = repartir.put(np.ones(MIB))
    out = [describe.remote(ref) for _ in range(4)]
    assert all(d["sum"] == float(MIB) for d in repartir.get(out))
    del ref, out
    # The workers' views of the argument must be released once the tasks are done.
    assert used_bytes_returns_to(base) == base


@repartir.remote
def borrowed_entries(refs):
    """In a worker: how many borrowed objects it still keeps an entry for (the refs of this
    call's own argument included)."""
    import gc

    from repartir.runtime import context

    gc.collect()
    client = context.current_client()
    client.poll()
    return len(client.objects.borrowed), len(client.objects.borrow_counts)


def test_borrowed_entries_go_with_the_last_borrowed_ref(rt):
    refs = [repartir.put(np.full(MIB // 8, i)) for i in range(40)]
    repartir.get([borrowed_entries.remote([r]) for r in refs])
    del refs
    # every worker forgets what it borrowed once the refs are gone (one ref: the probe's own)
    seen = repartir.get([borrowed_entries.remote([repartir.put(i)]) for i in range(8)])
    assert all(b <= 1 and c <= 1 for b, c in seen), seen


def test_identity_task_result_freed(rt):
    warm_up(identity)
    base = settled_used_bytes()
    ref = identity.remote(np.ones(MIB))
    assert float(repartir.get(ref).sum()) == float(MIB)
    del ref
    assert used_bytes_returns_to(base) == base


def test_unreferenced_task_results_are_freed(rt):
    warm_up(make_array)
    base = settled_used_bytes()
    refs = [make_array.remote(200_000, float(i)) for i in range(6)]
    repartir.wait(refs, num_returns=len(refs), timeout=30)
    del refs
    assert used_bytes_returns_to(base) == base


# --------------------------------------------------------------------------- capacity


STORE_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    import repartir
    from repartir.runtime import driver

    size = int(sys.argv[1])
    report = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            repartir.init(num_cpus=1, object_store_memory=size)
        except Exception as exc:
            report["init_error"] = [type(exc).__name__, str(exc),
                                    isinstance(exc, repartir.RepartirError)]
    report["warnings"] = [str(w.message) for w in caught]
    if "init_error" not in report:
        report["capacity"] = driver.store_statistics().capacity
        if len(sys.argv) > 2:
            big = np.arange(int(sys.argv[2]) // 8, dtype=np.float64)
            try:
                ref = repartir.put(big)
                report["put"] = bool((repartir.get(ref) == big).all())
            except Exception as exc:
                report["put_error"] = [type(exc).__name__, str(exc),
                                       isinstance(exc, repartir.ObjectStoreFullError)]
        repartir.shutdown()
    print("REPORT " + json.dumps(report), flush=True)
    """
)


def run_store_script(*args: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", STORE_SCRIPT, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(lines[-1][len("REPORT "):])


@pytest.mark.timeout(90)
def test_object_store_memory_sets_capacity_and_larger_objects_spill():
    report = run_store_script(64 * MIB, 256 * MIB)
    assert "init_error" not in report, report
    assert 0.75 * 64 * MIB <= report["capacity"] <= 1.1 * 64 * MIB, report
    # An object larger than the whole store goes to disk (docs/architecture.md, "Spilling");
    # a full disk too is tests/store/test_spill.py's.
    assert report.get("put") is True, f"a 256 MiB put into a 64 MiB store failed: {report}"


@pytest.mark.timeout(90)
def test_store_larger_than_dev_shm_is_refused():
    """docs/architecture.md: init() refuses a store that /dev/shm cannot hold, with
    ObjectStoreFullError naming the directory, both sizes and what to do."""
    import shutil

    free = shutil.disk_usage("/dev/shm").free
    asked = free * 2 + 7 * MIB
    report = run_store_script(asked)
    assert "init_error" in report, f"init() accepted a store twice /dev/shm's free space: {report}"
    name, message, is_repartir_error = report["init_error"]
    assert name == "ObjectStoreFullError" and is_repartir_error, report
    assert "/dev/shm" in message and f"{asked / MIB:,.0f} MiB" in message, message
    free_mib = re.search(r"has ([\d,]+) MiB free", message)
    assert free_mib and abs(int(free_mib.group(1).replace(",", "")) - free / MIB) < 64, message
    assert "object_store_memory=" in message, message


REUSE_SCRIPT = textwrap.dedent(
    """
    import gc, json, time
    import numpy as np
    import repartir
    from repartir.runtime import driver

    @repartir.remote
    def identity(x):
        return x

    repartir.init(num_cpus=1, object_store_memory=64 << 20)
    assert repartir.get(identity.remote(0)) == 0  # the function's code stays in the store
    time.sleep(0.5)
    base = driver.store_statistics().used_bytes
    for i in range(40):  # 40 x 2 x 12 MiB through a 64 MiB store
        a = np.full(12 << 20 >> 3, float(i))
        ref = identity.remote(repartir.put(a))
        assert float(repartir.get(ref)[-1]) == float(i)
        del ref, a
        gc.collect()
    deadline = time.monotonic() + 2
    while driver.store_statistics().used_bytes != base and time.monotonic() < deadline:
        time.sleep(0.05)
    print("REPORT " + json.dumps({"base": base, "end": driver.store_statistics().used_bytes}))
    repartir.shutdown()
    """
)


@pytest.mark.timeout(90)
def test_freed_blocks_are_reused():
    """Put/free cycles moving ten times the store's size neither fill nor leak it."""
    proc = subprocess.run(
        [sys.executable, "-c", REUSE_SCRIPT], capture_output=True, text=True, timeout=80,
        cwd=REPO_ROOT
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(lines[-1][len("REPORT "):])
    assert report["end"] == report["base"], report


# --------------------------------------------------------------------------- zero-copy views
# docs/architecture.md: arrays and Arrow buffers come back as read-only views of the arena, in
# the driver and in tasks alike. Equal values do not show that: the address must lie in the
# arena mapping, at the object's offset, the same in every process.


def _arena_offset(address: int) -> int | None:
    """``address - base`` of this process's arena mapping, or ``None`` outside it."""
    from repartir.runtime import context

    arena = context.current_client().arena
    base = arena._readonly.ctypes.data
    return address - base if base <= address < base + arena.size else None


@repartir.remote
def where_is(a):
    """(offset of ``a``'s data in this worker's arena mapping or None, writeable)."""
    import pyarrow as pa

    if isinstance(a, pa.Array):
        buf = a.buffers()[1]
        return _arena_offset(buf.address), bool(buf.is_mutable)
    return _arena_offset(a.ctypes.data), bool(a.flags.writeable)


def test_put_array_is_the_same_read_only_block_in_driver_and_task(rt):
    a = np.random.default_rng(0).random(MIB // 8 * 4)  # 4 MiB
    ref = repartir.put(a)
    v = repartir.get(ref)
    off = _arena_offset(v.ctypes.data)
    assert off is not None, "get() returned a copy, not a view of the arena"
    assert v.flags.writeable is False and np.array_equal(v, a)
    assert repartir.get(ref).ctypes.data == v.ctypes.data  # a second get: the same block
    assert repartir.get(where_is.remote(ref), timeout=60) == (off, False)


def test_array_passed_by_value_reaches_the_task_as_a_view(rt):
    a = np.arange(MIB // 8 * 2, dtype=np.float64)  # 2 MiB: above the inline limit
    off, writeable = repartir.get(where_is.remote(a), timeout=60)
    assert off is not None, "the task got a copy of its argument, not an arena view"
    assert writeable is False


def test_arrow_buffers_are_read_only_views_in_driver_and_task(rt):
    import pyarrow as pa

    arr = pa.array(np.arange(500_000, dtype=np.int64))  # 4 MB of values
    ref = repartir.put(arr)
    got = repartir.get(ref)
    assert got.equals(arr)
    buf = got.buffers()[1]
    off = _arena_offset(buf.address)
    assert off is not None, "the Arrow buffer is a copy, not a view of the arena"
    assert buf.is_mutable is False
    assert repartir.get(where_is.remote(ref), timeout=60) == (off, False)


# --------------------------------------------------------------------------- large copies


def test_copy_over_8_mib_is_split_across_threads_and_every_byte_arrives(rt, monkeypatch):
    """docs/architecture.md: copies over 8 MiB are split across threads. Record the parts
    each copy is split into (the copy itself still runs) and check every byte stored."""
    from repartir import serialization

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: copies are not split")
    parts = []
    real = np.copyto

    def recording_copyto(dst, src, *args, **kw):
        parts.append((threading.current_thread().name, src.nbytes))
        return real(dst, src, *args, **kw)

    monkeypatch.setattr(serialization.np, "copyto", recording_copyto)
    a = np.random.default_rng(7).random(40 * MIB // 8 + 3)  # 40 MiB + 24 B: uneven chunks
    ref = repartir.put(a)
    monkeypatch.undo()
    threads = {name for name, _ in parts}
    assert len(parts) >= 2 and all(n.startswith("repartir-copy") for n in threads), parts
    assert sum(n for _, n in parts) == a.nbytes, parts
    v = repartir.get(ref)
    assert v.tobytes() == a.tobytes()  # every byte, the last uneven chunk included


# --------------------------------------------------------------------------- a result too big

RESULT_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import repartir

    @repartir.remote
    def ones(n):
        return np.ones(n)

    repartir.init(num_cpus=1, object_store_memory=64 << 20)
    report = {}
    try:
        value = repartir.get(ones.remote(100 << 17), timeout=60)  # 100 MiB, 64 MiB store
        report["error"] = None
        report["sum"] = float(value.sum())
        del value
    except Exception as exc:
        report["error"] = [type(exc).__name__, str(exc),
                           isinstance(exc, repartir.ObjectStoreFullError)]
    report["after"] = float(repartir.get(ones.remote(1000), timeout=60).sum())
    repartir.shutdown()
    print("REPORT " + json.dumps(report), flush=True)
    """
)


@pytest.mark.timeout(90)
def test_task_result_too_big_for_the_store_spills():
    """docs/architecture.md, "Spilling": a task result larger than the store goes to disk
    and comes back; the worker and the session carry on.  (When the disk is full too, the
    task fails with ObjectStoreFullError: tests/store/test_spill.py.)"""
    proc = subprocess.run([sys.executable, "-c", RESULT_SCRIPT], capture_output=True, text=True,
                          timeout=80, cwd=REPO_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(lines[-1][len("REPORT "):])
    assert report["error"] is None, report
    assert report["sum"] == float(100 << 17)
    assert report["after"] == 1000.0
