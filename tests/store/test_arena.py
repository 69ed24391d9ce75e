"""The arena allocator against a model: no overlap, exact accounting, consistent free list."""

import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from repartir.errors import ObjectStoreFullError
from repartir.store.arena import HEADER_SIZE, Arena
from repartir.store.layout import _B, _H

SIZE = 8 << 20


@pytest.fixture
def arena():
    fd = os.memfd_create("repartir-test-arena")
    os.ftruncate(fd, SIZE)
    a = Arena(fd, SIZE, create=True)
    yield a
    a.close()
    os.close(fd)


def check_invariants(a: Arena) -> None:
    """Walk the blocks physically and the free list logically; they must agree."""
    h = _H.unpack_from(a.mm, 0)
    brk, blk, prev, frees, used, n = h[2], HEADER_SIZE, 0, set(), 0, 0
    while blk < brk:
        magic, state, size, prev_size, *_ = _B.unpack_from(a.mm, blk)
        assert magic == 0xB10C and prev_size == prev
        if state == 2:
            frees.add(blk)
        else:
            used, n = used + size, n + 1
        prev, blk = size, blk + size
    assert blk == brk
    if brk > HEADER_SIZE:
        assert struct.unpack_from("<Q", a.mm, 64)[0] == prev
    listed, b = set(), h[3]
    while b:
        listed.add(b)
        b = _B.unpack_from(a.mm, b)[6]
    assert listed == frees
    assert (used, n) == (h[4], h[5])


ops = st.lists(st.tuples(st.booleans(), st.integers(1, 600_000), st.integers(0, 1000)),
               max_size=120)


@settings(max_examples=40, deadline=None)
@given(ops)
def test_allocator_matches_model(ops):
    fd = os.memfd_create("repartir-test-arena")
    os.ftruncate(fd, SIZE)
    a = Arena(fd, SIZE, create=True)
    live = {}
    try:
        for alloc, n, pick in ops:
            if alloc or not live:
                try:
                    off = a.allocate(n)
                except ObjectStoreFullError:
                    continue
                assert off % 64 == 0
                for o2, n2 in live.items():
                    assert off + n <= o2 or o2 + n2 <= off
                a.writable(off, 8)[:] = off.to_bytes(8, "little")
                live[off] = n
            else:
                off = sorted(live)[pick % len(live)]
                assert bytes(a.writable(off, 8)) == off.to_bytes(8, "little")
                del live[off]
                a.release(off)
            check_invariants(a)
        for off in list(live):
            a.release(off)
        check_invariants(a)
        assert a.statistics().used_bytes == 0
        assert a.statistics().wilderness == SIZE - HEADER_SIZE
    finally:
        a.close()
        os.close(fd)


def test_freed_block_is_reused_first(arena):
    first = arena.allocate(1 << 20)
    arena.allocate(1000)  # keeps the first block from merging into the wilderness
    arena.release(first)
    assert arena.allocate(1 << 20) == first


def test_view_pins_block_until_views_die(arena):
    import gc

    off = arena.allocate(1 << 16)
    view = arena.view(off, 1 << 16)
    child = view[10:20]
    del view
    arena.release(off)  # the owner lets go; the slice still pins it
    assert arena.statistics().num_blocks == 1
    del child
    gc.collect()
    arena.drain_unpins()  # finalizers only note the unpin; it is applied at the next call
    assert arena.statistics().num_blocks == 0


def _shared_pins(a: Arena, off: int) -> int:
    return struct.unpack_from("<I", a.mm, off - 64 + 24)[0]


def test_holds_of_one_process_take_one_shared_pin(arena):
    import numpy as np

    off = arena.allocate(4096)
    arena.hold(off)  # a borrowed ref
    arr = np.frombuffer(arena.ro, np.uint8, 4096, off)
    arena.anchor(off, arr)  # a view of it
    assert _shared_pins(arena, off) == 1
    arena.release(off)
    arena.let_go(off)  # the ref dies first; the array still holds the block
    assert _shared_pins(arena, off) == 1 and arena.statistics().num_blocks == 1
    with pytest.raises(ValueError):
        arr[0] = 1
    with pytest.raises(ValueError):
        arr.setflags(write=True)  # read-only for good
    del arr
    arena.drain_unpins()
    assert arena.statistics().num_blocks == 0
    arena.let_go(off)  # one let_go too many is counted, never unpins someone else's pin
    assert arena.bad_releases == 1


def test_claim_takes_a_live_block_of_that_generation_only(arena):
    worker, owner = 5, 1
    off = arena.allocate(4096, worker)  # a task's result, written by its worker
    gen = arena.generation(off)
    assert arena.claim(off, gen, owner)  # the result message arrived: the owner takes it
    assert arena.release_owned_by(worker) == 0  # the worker's death no longer frees it
    arena.release(off)

    off2 = arena.allocate(4096, worker)
    gen2 = arena.generation(off2)
    assert arena.release_owned_by(worker) == 1  # the worker died before the claim
    assert not arena.claim(off2, gen2, owner)  # so the owner learns the result is lost
    off3 = arena.allocate(4096, worker)  # the same place, handed out again
    assert off3 == off2 and arena.generation(off3) != gen2
    assert not arena.claim(off2, gen2, owner)  # a stale location never takes a new block
    assert arena.claim(off3, arena.generation(off3), owner)
    arena.release(off3)
    assert arena.statistics().num_blocks == 0
    check_invariants(arena)


def test_full_store_says_what_to_do(arena):
    with pytest.raises(ObjectStoreFullError, match="object_store_memory"):
        arena.allocate(SIZE)
