"""Spilling the object store to disk (``docs/architecture.md``, "Spilling").

The arena alone first (no processes): a spilled block becomes a stub with the same offset
and generation, its file holds the blob, the freed rest holds an object of the same size,
a held block is never spilled, freeing the stub removes the file, and a spill directory
that cannot take the file gives ``ObjectStoreFullError`` naming both.  Then sessions with a
small store: twice the store's size put and read back, spilled objects as task arguments
(top level and nested), results larger than the store, files removed with the last ref and
at shutdown, ``REPARTIR_SPILL_DIR``, and a full disk (a small tmpfs, when it can be mounted).
"""

from __future__ import annotations

import gc
import os
import re
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import repartir
from repartir.errors import ObjectStoreFullError
from repartir.runtime import driver
from repartir.serialization import serialize
from repartir.store.arena import HEADER_SIZE, Arena
from repartir.store.spill import read_spill_file
from rtsupport import wait_until
from test_arena import check_invariants

MIB = 1 << 20
SIZE = 8 * MIB

pytestmark = pytest.mark.timeout(120)


def _arena(spill_dir) -> tuple[Arena, int]:
    fd = os.memfd_create("repartir-test-arena")
    os.ftruncate(fd, SIZE)
    return Arena(fd, SIZE, create=True, spill_dir=None if spill_dir is None else str(spill_dir)), fd


@pytest.fixture
def arena(tmp_path):
    a, fd = _arena(tmp_path)
    yield a
    a.close()
    os.close(fd)


def _put(a: Arena, value) -> tuple[int, int, int]:
    s = serialize(value)
    off = a.allocate(s.nbytes)
    s.write_into(a.writable(off, s.nbytes))
    return off, s.nbytes, a.generation(off)


# --------------------------------------------------------------------------- the arena


def test_spilled_block_becomes_a_stub_and_its_file_goes_with_it(arena, tmp_path):
    value = np.arange(MIB // 8, dtype=np.float64)
    off, nbytes, gen = _put(arena, value)
    before = arena.statistics()
    freed = arena.spill_out(off, gen)
    assert freed >= nbytes  # the block less its 64-byte header (and its slack)
    after = arena.statistics()
    assert after.used_bytes == before.used_bytes - freed
    assert (after.num_blocks, after.spilled_objects, after.spilled_bytes) == (1, 1, nbytes)
    assert arena.spilled(off) and arena.generation(off) == gen  # same location
    path = arena.spill_file(off)
    assert os.listdir(tmp_path) == [os.path.basename(path)]
    assert os.path.getsize(path) == nbytes
    back = read_spill_file(path, nbytes)
    assert back.dtype == np.float64 and np.array_equal(back, value)
    assert not back.flags.writeable
    check_invariants(arena)
    arena.release(off)
    assert os.listdir(tmp_path) == []
    assert (arena.statistics().num_blocks, arena.statistics().spilled_objects) == (0, 0)
    assert float(back.sum()) == float(value.sum())  # the mapping outlives the file
    check_invariants(arena)


def test_freed_rest_holds_an_object_of_the_same_size(arena):
    blocks = []
    with pytest.raises(ObjectStoreFullError):
        while True:
            blocks.append(_put(arena, np.full(MIB // 8, len(blocks), dtype=np.float64)))
    assert len(blocks) >= 5
    for i in (0, 2):  # not neighbours: nothing coalesces, the rest alone must do
        off, _, gen = blocks[i]
        assert arena.spill_out(off, gen) > 0
        new = _put(arena, np.full(MIB // 8, 100 + i, dtype=np.float64))
        assert new[0] == off + 64  # right behind the stub
        arena.spill_out(new[0], new[2])  # and again, in the same place
        again = _put(arena, np.zeros(MIB // 8))
        assert again[0] == new[0] + 64
    check_invariants(arena)


def test_held_or_released_blocks_are_not_spilled(arena, tmp_path):
    off, _, gen = _put(arena, np.ones(MIB // 8))
    arena.hold(off)  # a view or a borrowed ref somewhere
    assert arena.spill_out(off, gen) == 0 and not arena.spilled(off)
    arena.let_go(off)
    assert arena.spill_out(off, gen + 1) == 0  # a stale location
    assert arena.spill_out(off, gen) > 0
    assert arena.spill_out(off, gen) == 0  # already on disk
    arena.release(off)
    assert os.listdir(tmp_path) == []


def test_spill_out_gives_up_when_a_reader_comes_meanwhile(arena, tmp_path, monkeypatch):
    import repartir.store.arena as arena_module

    off, _, gen = _put(arena, np.ones(MIB // 8))
    write = arena_module.write_spill_file

    def write_then_read(path, nbytes, chunks):
        write(path, nbytes, chunks)
        arena.hold(off)  # a reader holds the block while the file is being written

    monkeypatch.setattr(arena_module, "write_spill_file", write_then_read)
    assert arena.spill_out(off, gen) == 0
    assert not arena.spilled(off) and os.listdir(tmp_path) == []
    arena.let_go(off)
    arena.release(off)
    assert arena.statistics().num_blocks == 0
    check_invariants(arena)


def test_allocate_spilled_and_a_spill_dir_that_cannot_take_it(tmp_path):
    a, fd = _arena(tmp_path / "missing")
    try:
        value = np.arange(3 * SIZE // 8, dtype=np.float64)  # three times the arena
        s = serialize(value)
        with pytest.raises(ObjectStoreFullError) as info:
            a.allocate_spilled(s.nbytes, 0, s.chunks())
        message = str(info.value)
        assert f"cannot store {s.nbytes:,} bytes" in message, message
        assert f"{SIZE - HEADER_SIZE:,} bytes" in message, message  # the arena's size
        assert str(tmp_path / "missing") in message, message  # the spill directory
        assert "REPARTIR_SPILL_DIR" in message and "object_store_memory=" in message, message
        assert (a.statistics().num_blocks, a.statistics().spilled_objects) == (0, 0)
        os.mkdir(tmp_path / "missing")
        off = a.allocate_spilled(s.nbytes, 0, s.chunks())
        assert a.statistics().spilled_bytes == s.nbytes
        assert np.array_equal(read_spill_file(a.spill_file(off), s.nbytes), value)
        a.release(off)
        assert os.listdir(tmp_path / "missing") == [] and a.statistics().used_bytes == 0
    finally:
        a.close()
        os.close(fd)


@pytest.mark.parametrize("value", [
    np.arange(50_000, dtype=np.int32),
    {"a": np.ones((300, 7)), "b": [np.arange(10), "text"], "c": b"x" * 5000},
    list(range(20_000)),
])
def test_chunks_written_to_a_file_are_the_blob(tmp_path, value):
    from repartir.store.spill import write_spill_file

    s = serialize(value)
    path = str(tmp_path / "blob")
    write_spill_file(path, s.nbytes, s.chunks())
    with open(path, "rb") as f:
        assert f.read() == s.to_bytes()
    back = read_spill_file(path, s.nbytes)
    if isinstance(value, np.ndarray):
        assert np.array_equal(back, value) and back.dtype == value.dtype
    elif isinstance(value, dict):
        assert np.array_equal(back["a"], value["a"]) and back["c"] == value["c"]
        assert np.array_equal(back["b"][0], value["b"][0]) and back["b"][1] == "text"
    else:
        assert back == value


def test_make_room_is_asked_and_without_spill_dir_nothing_spills(tmp_path):
    a, fd = _arena(None)
    try:
        asked = []
        a.make_room = lambda need: asked.append(need) or False
        with pytest.raises(ObjectStoreFullError, match="object_store_memory"):
            a.allocate(SIZE // 2 + 1)
            a.allocate(SIZE // 2 + 1)
        assert len(asked) == 1 and asked[0] > SIZE // 2
        off, _, gen = _put(a, np.ones(1000))
        assert a.spill_out(off, gen) == 0 and not a.spilled(off)
    finally:
        a.close()
        os.close(fd)


ops = st.lists(st.tuples(st.sampled_from("aaars"), st.integers(1, 900_000), st.integers(0, 999)),
               max_size=80)


@settings(max_examples=30, deadline=None)
@given(ops)
def test_allocator_with_spills_matches_model(tmp_path_factory, ops):
    spill_dir = tmp_path_factory.mktemp("spill")
    a, fd = _arena(spill_dir)
    live: dict[int, tuple[int, int, bytes]] = {}  # offset -> nbytes, generation, first bytes
    try:
        for op, n, pick in ops:
            if op == "a" or not live:
                try:
                    off = a.allocate(n)
                except ObjectStoreFullError:
                    continue
                for o2, (n2, _, _) in live.items():
                    if not a.spilled(o2):
                        assert off + n <= o2 or o2 + n2 <= off
                    else:
                        assert off + n <= o2 - 64 or o2 <= off  # a stub: 64 bytes
                stamp = off.to_bytes(8, "little")[:n]  # (within the n bytes asked for)
                a.writable(off, len(stamp))[:] = stamp
                live[off] = (n, a.generation(off), stamp)
            else:
                off = sorted(live)[pick % len(live)]
                n, gen, stamp = live[off]
                if op == "s":
                    if a.spill_out(off, gen):
                        with open(a.spill_file(off), "rb") as f:
                            assert f.read(len(stamp)) == stamp
                else:
                    if not a.spilled(off):
                        assert bytes(a.writable(off, len(stamp))) == stamp
                    del live[off]
                    a.release(off)
            check_invariants(a)
            assert len(os.listdir(spill_dir)) == a.statistics().spilled_objects
        for off in list(live):
            a.release(off)
        check_invariants(a)
        assert a.statistics().used_bytes == 0 and os.listdir(spill_dir) == []
    finally:
        a.close()
        os.close(fd)


# --------------------------------------------------------------------------- sessions

STORE = 32 * MIB  # the arena; objects of 4 MiB
N = 16  # objects: twice the store


def _spill_dir() -> str:
    return driver._node.spill_dir


def _files() -> list[str]:
    return os.listdir(_spill_dir())


def _block(i: int) -> np.ndarray:
    return np.full(MIB // 2, i, dtype=np.float64)  # 4 MiB


@repartir.remote
def total(a):
    return float(a.sum())


@repartir.remote
def total_of_first(box):
    return float(repartir.get(box[0]).sum())


@repartir.remote
def big_result(n, value):
    return np.full(n, value, dtype=np.float64)


def _all_freed() -> bool:
    gc.collect()
    s = driver.store_statistics().arena
    return s.spilled_objects == 0 and not _files()


def test_twice_the_store_put_and_read_back(node):
    rt = node(num_cpus=2, object_store_memory=STORE)
    refs = [rt.put(_block(i)) for i in range(N)]
    stats = driver.store_statistics().arena
    assert stats.spilled_objects >= N // 2, stats
    assert stats.used_bytes <= STORE
    assert len(_files()) == stats.spilled_objects
    for i, ref in enumerate(refs):
        value = rt.get(ref)
        assert value.shape == (MIB // 2,) and value.dtype == np.float64
        assert value[0] == i and value[-1] == i and float(value.sum()) == i * (MIB // 2)
        assert not value.flags.writeable
        del value
    del refs
    assert wait_until(_all_freed, 30), (driver.store_statistics().arena, _files())


def test_spilled_objects_as_task_arguments(node):
    rt = node(num_cpus=2, object_store_memory=STORE)
    refs = [rt.put(_block(i)) for i in range(N)]
    first = refs[0]
    assert driver.client().arena.spilled(driver.client().table[first._id][1][1])
    assert rt.get(total.remote(first), timeout=60) == 0.0
    sums = rt.get([total.remote(r) for r in refs], timeout=60)  # top-level dependencies
    assert sums == [i * (MIB // 2) for i in range(N)]
    nested = rt.get([total_of_first.remote([r]) for r in refs[:4]], timeout=60)  # borrowed
    assert nested == [i * (MIB // 2) for i in range(4)]
    del refs, first
    assert wait_until(_all_freed, 30), (driver.store_statistics().arena, _files())


def test_task_result_larger_than_the_store_comes_back(node):
    rt = node(num_cpus=2, object_store_memory=STORE)
    n = 6 * MIB  # 48 MiB of float64, in a 32 MiB store: the worker spills it
    value = rt.get(big_result.remote(n, 3.0), timeout=60)
    assert value.shape == (n,) and value[0] == 3.0 and value[-1] == 3.0
    assert float(value.sum()) == 3.0 * n
    # passed on to another task, still on disk
    ref = big_result.remote(n, 2.0)
    assert rt.get(total.remote(ref), timeout=60) == 2.0 * n
    assert driver.store_statistics().arena.spilled_objects >= 1
    del value, ref
    assert wait_until(_all_freed, 30), (driver.store_statistics().arena, _files())


def test_spill_files_go_at_shutdown(node):
    rt = node(num_cpus=1, object_store_memory=STORE, fresh=True)
    refs = [rt.put(_block(i)) for i in range(N)]
    spill_dir = _spill_dir()
    assert spill_dir.startswith(driver._node.session_dir)  # the default place
    assert len(os.listdir(spill_dir)) >= N // 2
    node.close()
    assert not os.path.exists(spill_dir)
    del refs


def test_repartir_spill_dir_is_honoured(node, tmp_path, monkeypatch):
    monkeypatch.setenv("REPARTIR_SPILL_DIR", str(tmp_path))
    rt = node(num_cpus=1, object_store_memory=STORE, fresh=True)
    session = driver._node.session
    refs = [rt.put(_block(i)) for i in range(N)]
    assert os.listdir(tmp_path) == [f"repartir-spill-{session}"]
    files = os.listdir(tmp_path / f"repartir-spill-{session}")
    assert len(files) == driver.store_statistics().arena.spilled_objects >= N // 2
    assert [float(rt.get(r)[0]) for r in refs] == list(range(N))
    node.close()
    assert os.listdir(tmp_path) == []
    del refs


def test_repartir_spill_dir_that_is_no_directory_is_refused(node, tmp_path, monkeypatch):
    node.close()
    monkeypatch.setenv("REPARTIR_SPILL_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="REPARTIR_SPILL_DIR"):
        repartir.init(num_cpus=1, object_store_memory=STORE)
    assert not repartir.is_initialized()


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MiB tmpfs (skipped where it cannot be mounted), unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk_is_object_store_full_error_naming_both(node, small_disk, monkeypatch):
    monkeypatch.setenv("REPARTIR_SPILL_DIR", str(small_disk))
    rt = node(num_cpus=1, object_store_memory=16 * MIB, fresh=True)
    capacity = driver.store_statistics().capacity
    spill_dir = _spill_dir()
    refs = []
    with pytest.raises(ObjectStoreFullError) as info:
        for i in range(20):  # 80 MiB: 16 in the arena, 12 on disk at most
            refs.append(rt.put(_block(i)))
    message = str(info.value)
    assert 2 <= len(refs) <= 8, len(refs)
    assert re.search(r"cannot store [\d,]+ bytes", message), message
    assert f"{capacity:,} bytes" in message, message
    assert spill_dir in message and "REPARTIR_SPILL_DIR" in message, message
    assert "object_store_memory=" in message, message
    # what was stored is intact; a result that fits nowhere fails its task, naming both too
    assert [float(rt.get(r)[-1]) for r in refs] == list(range(len(refs)))
    with pytest.raises(ObjectStoreFullError) as info:
        rt.get(big_result.remote(4 * MIB, 1.0), timeout=60)
    assert spill_dir in str(info.value) and f"{capacity:,} bytes" in str(info.value)
    del refs
    assert wait_until(_all_freed, 30), (driver.store_statistics().arena, _files())
    assert rt.get(total.remote(rt.put(_block(5))), timeout=60) == 5.0 * (MIB // 2)
    node.close()
    assert os.listdir(small_disk) == []
