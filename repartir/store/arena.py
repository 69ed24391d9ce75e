"""The shared-memory arena: one file in ``/dev/shm`` per node, mapped once by every process.

The allocator's state lives in the arena itself and is guarded by a process-shared robust
mutex (:class:`repartir.sync.RobustMutex`), so any process of the node -- the driver putting
an object, a worker writing a large result -- allocates and frees without a round trip.

Layout::

    0     header (4 KiB): magic, capacity, brk, free-list head, statistics, mutex
    4096  block | block | ... | block | wilderness (untouched) ........ capacity

Each block starts with a 64-byte header (boundary tags: its size and the previous block's
size, so a freed block coalesces with both neighbours in O(1)), followed by the payload, which
is therefore 64-byte aligned.  Allocation is first fit over a LIFO free list, then from the
wilderness.  Freed blocks are reused first: the first write to a fresh shared-memory page
costs several times a warm write (``docs/architecture.md``, "Object store", gives a figure and
how it was measured), so reusing warm blocks is what makes ``put`` run at memcpy speed.
Growing into the wilderness ``fallocate``s the pages first, so a full ``/dev/shm`` is an
:class:`~repartir.errors.ObjectStoreFullError`, not a ``SIGBUS``.

A block is freed when its owner has released it (no ``ObjectRef`` left) **and** no view pins
it: every process that hands out zero-copy views of a block increments the block's pin count,
and decrements it when the last view dies (:meth:`Arena.view`).

**Spilling** (with a ``spill_dir``): when an allocation does not fit, the arena first asks
its process to make room (:attr:`Arena.make_room`, which spills that process's own objects
nobody uses, :meth:`Arena.spill_out`); an object that still does not fit can be written to
disk at once (:meth:`Arena.allocate_spilled`).  A spilled object keeps a 64-byte block (a
*stub*, flagged in its header) with the same offset and generation, so its location, pins
and release stay as they were, and freeing the stub removes the file
(:mod:`repartir.store.spill`).
"""

from __future__ import annotations

import collections
import mmap
import os
import struct
import threading
import weakref
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import ObjectStoreFullError
from ..sync import RobustMutex, address_of
from .layout import (_B, _B_PINS, _BLOCK_MAGIC, _FALLOC_OFF, _FREE, _H, _MAGIC, _MUTEX_OFF,
                     _OWNER, _SLACK, _SLACK_FROM, _SPILLED, _SPILLED_OFF, _SPLIT_MIN, _STUB,
                     _TAIL, _USED, BLOCK_HEADER, HEADER_SIZE, ArenaStatistics, _align)
from .spill import remove_spill_file, spill_path, write_spill_file

__all__ = ["Arena", "ArenaStatistics", "HEADER_SIZE", "BLOCK_HEADER"]

class Arena:
    """A mapping of the node's arena file.

    Args:
        fd: file descriptor of the arena file (``/dev/shm/repartir-<session>-arena``).
        size: the file's size in bytes.
        create: initialise the header (only the process that made the file).
        spill_dir: the directory of spill files (the session's, the same in every process
            of the node); ``None``: nothing spills, a full arena raises.
    """

    def __init__(self, fd: int, size: int, create: bool = False,
                 spill_dir: str | None = None) -> None:
        self.fd = fd
        self.size = size
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._mv = memoryview(self.mm)
        self.mutex = RobustMutex(address_of(self.mm, _MUTEX_OFF))
        self._readonly = np.frombuffer(self.mm, np.uint8)  # views are slices of this
        self._readonly.flags.writeable = False
        self.ro = memoryview(self._readonly)  # read-only: arrays built on it stay read-only
        self._pending_unpins: collections.deque[int] = collections.deque()
        # holds of this process: block -> count; the first takes one shared pin
        self._holds: dict[int, int] = {}
        self._holds_lock = threading.Lock()
        self._anchors: dict[int, tuple] = {}  # id(weakref) -> (weakref, block)
        self.bad_releases = 0  # releases of blocks already released (a runtime bug if > 0)
        # records this process's pins where the node can read them if the process dies
        self.ledger = None
        self.spill_dir = spill_dir
        # called with the bytes an allocation needs when it does not fit, outside the
        # mutex; returns whether it freed something (then the allocation is tried again)
        self.make_room: Callable[[int], bool] | None = None
        if create:
            self.mutex.initialize()
            _H.pack_into(self.mm, 0, _MAGIC, size, HEADER_SIZE, 0, 0, 0, 0, 0)
        elif _H.unpack_from(self.mm, 0)[0] != _MAGIC:
            raise RuntimeError("the arena file does not hold a repartir arena")

    # -- allocation (callers hold no lock) -------------------------------------------------

    def allocate(self, nbytes: int, owner: int = 0) -> int:
        """Allocate a block with ``nbytes`` of payload; returns the payload's offset.
        ``owner`` is the slot of the process that will release it: when that process
        dies, :meth:`release_owned_by` releases what it still owned.

        Raises:
            ObjectStoreFullError: no free block and no wilderness is large enough, or
                ``/dev/shm`` has no room left for the pages.
        """
        need = _align(nbytes + BLOCK_HEADER)
        self.drain_unpins()
        while True:
            try:
                return self._allocate(need, nbytes, owner)
            except ObjectStoreFullError:
                room = self.make_room
                if room is None or need > self.size - HEADER_SIZE or not room(need):
                    raise

    def _allocate(self, need: int, nbytes: int, owner: int) -> int:
        want = need + _SLACK if need >= _SLACK_FROM and self.spill_dir is not None else need
        with self.mutex:
            blk = self._take_free(need, want)
            if blk is None:
                blk = self._grow(need, nbytes, want)
            h = list(_H.unpack_from(self.mm, 0))
            h[4] += _B.unpack_from(self.mm, blk)[2]
            h[5] += 1
            h[6] += 1
            _H.pack_into(self.mm, 0, *h)
            _TAIL.pack_into(self.mm, blk + 48, nbytes, owner, h[6] & 0xFFFF_FFFF)
        return blk + BLOCK_HEADER

    def generation(self, offset: int) -> int:
        """The allocation number of the block at payload ``offset`` (32 bits): with the
        offset, it names one allocation, so a stale location can be told from a block
        handed out again (see :meth:`claim`)."""
        return struct.unpack_from("<I", self.mm, offset - 4)[0]

    def claim(self, offset: int, generation: int, owner: int) -> bool:
        """Make slot ``owner`` the owner of the live block at payload ``offset`` if it is
        still the allocation ``generation`` and nobody released it; returns whether it was.

        A task's result is allocated by the worker that computed it, owned by that worker,
        and claimed by the task's owner when the result message arrives: a worker killed
        before that has its blocks released by the node (:meth:`release_owned_by`), and
        then the claim fails, so the owner knows the result is lost instead of reading a
        block given to someone else."""
        blk = offset - BLOCK_HEADER
        with self.mutex:
            magic, state, *_ = _B.unpack_from(self.mm, blk)
            _, released = _B_PINS.unpack_from(self.mm, blk + 24)
            _, _, gen = _TAIL.unpack_from(self.mm, blk + 48)
            if magic != _BLOCK_MAGIC or state != _USED or released or gen != generation:
                return False
            _OWNER.pack_into(self.mm, blk + 56, owner)
            return True

    def _take_free(self, need: int, want: int) -> int | None:
        mm = self.mm
        blk = _H.unpack_from(mm, 0)[3]
        while blk:
            magic, state, size, prev_size, _, _, nxt, prv, _ = _B.unpack_from(mm, blk)
            if size >= need:
                self._unlink_free(blk, nxt, prv)
                carve = min(want, size)
                rest = size - carve
                if rest >= _SPLIT_MIN:
                    size = carve
                    tail = blk + carve
                    _B.pack_into(mm, tail, _BLOCK_MAGIC, _FREE, rest, carve, 0, 0, 0, 0, 0)
                    self._fix_next_prev_size(tail, rest)
                    self._push_free(tail)
                _B.pack_into(mm, blk, _BLOCK_MAGIC, _USED, size, prev_size, 0, 0, 0, 0, 0)
                return blk
            blk = nxt
        return None

    def _grow(self, need: int, nbytes: int, want: int) -> int:
        h = _H.unpack_from(self.mm, 0)
        brk = h[2]
        if brk + want <= self.size:
            need = want
        if brk + need > self.size:
            raise ObjectStoreFullError(
                f"object store full: cannot store {nbytes:,} bytes; {h[4]:,} of "
                f"{self.size - HEADER_SIZE:,} bytes are held by {h[5]} live objects"
                f"{self._in_use_note()}. Drop references you no longer need, or start with "
                f"a larger object_store_memory= (REPARTIR_OBJECT_STORE_MEMORY)."
            )
        hwm = struct.unpack_from("<Q", self.mm, _FALLOC_OFF)[0]
        try:
            if brk + need > hwm:  # pages below the high-water mark exist already
                start = max(brk, hwm)
                os.posix_fallocate(self.fd, start, brk + need - start)
                struct.pack_into("<Q", self.mm, _FALLOC_OFF, brk + need)
        except OSError as exc:
            raise ObjectStoreFullError(
                f"/dev/shm has no room for {need:,} more bytes ({exc.strerror}). Free space "
                f"in /dev/shm (e.g. `docker run --shm-size=...`) or pass a smaller "
                f"object_store_memory=."
            ) from None
        prev_size = self._last_block_size(brk)
        _B.pack_into(self.mm, brk, _BLOCK_MAGIC, _USED, need, prev_size, 0, 0, 0, 0, 0)
        struct.pack_into("<Q", self.mm, 16, brk + need)
        struct.pack_into("<Q", self.mm, 64, need)
        return brk

    def _last_block_size(self, brk: int) -> int:
        # the physically last block's size is recorded in the header word at offset 64
        return struct.unpack_from("<Q", self.mm, 64)[0] if brk > HEADER_SIZE else 0

    def _fix_next_prev_size(self, blk: int, size: int) -> None:
        nxt = blk + size
        if nxt < _H.unpack_from(self.mm, 0)[2]:
            struct.pack_into("<Q", self.mm, nxt + 16, size)
        else:
            struct.pack_into("<Q", self.mm, 64, size)

    def _push_free(self, blk: int) -> None:
        head = _H.unpack_from(self.mm, 0)[3]
        struct.pack_into("<QQ", self.mm, blk + 32, head, 0)
        if head:
            struct.pack_into("<Q", self.mm, head + 40, blk)
        struct.pack_into("<Q", self.mm, 24, blk)

    def _unlink_free(self, blk: int, nxt: int, prv: int) -> None:
        if prv:
            struct.pack_into("<Q", self.mm, prv + 32, nxt)
        else:
            struct.pack_into("<Q", self.mm, 24, nxt)
        if nxt:
            struct.pack_into("<Q", self.mm, nxt + 40, prv)

    def _free_locked(self, blk: int) -> None:
        mm = self.mm
        _, state, size, prev_size, _, _, stub, _, _ = _B.unpack_from(mm, blk)
        if state != _USED:
            raise RuntimeError(f"double free of arena block at {blk}")
        if stub:  # a spilled object: its file goes with it (removed under the mutex: rare)
            self._forget_spilled(blk)
        struct.pack_into("<I", mm, blk + 4, _FREE)  # even if it merges into its neighbour
        h = list(_H.unpack_from(mm, 0))
        h[4] -= size
        h[5] -= 1
        h[7] += 1
        _H.pack_into(mm, 0, *h)
        brk = h[2]
        nxt = blk + size
        if nxt < brk:
            n_magic, n_state, n_size, _, _, _, n_next, n_prev, _ = _B.unpack_from(mm, nxt)
            if n_state == _FREE:
                self._unlink_free(nxt, n_next, n_prev)
                size += n_size
        if prev_size:
            prv = blk - prev_size
            p = _B.unpack_from(mm, prv)
            if p[1] == _FREE:
                self._unlink_free(prv, p[6], p[7])
                blk, size, prev_size = prv, size + p[2], p[3]
        if blk + size >= brk:  # back into the wilderness (its pages stay warm)
            struct.pack_into("<Q", mm, 16, blk)
            struct.pack_into("<Q", mm, 64, prev_size)
            return
        _B.pack_into(mm, blk, _BLOCK_MAGIC, _FREE, size, prev_size, 0, 0, 0, 0, 0)
        self._fix_next_prev_size(blk, size)
        self._push_free(blk)

    # -- spilling (docs/architecture.md, "Spilling") ---------------------------------------

    def _in_use_note(self) -> str:
        if self.spill_dir is None:
            return ""
        return (" that are in use (views, borrowed refs, arguments of running tasks) or "
                "not this process's to spill")

    def spilled(self, offset: int) -> bool:
        """Whether the object at payload ``offset`` is on disk (its block a stub).  Stable
        while the caller holds the block: only an unpinned block is spilled."""
        return _STUB.unpack_from(self.mm, offset - BLOCK_HEADER + 32)[0] != 0

    def spill_file(self, offset: int) -> str:
        """The spill file of the stub at payload ``offset``."""
        return spill_path(self.spill_dir, offset, self.generation(offset))

    def _forget_spilled(self, blk: int) -> None:
        """Under the mutex: the stub at ``blk`` is being freed; remove its file."""
        nbytes, _, gen = _TAIL.unpack_from(self.mm, blk + 48)
        count, total = _SPILLED.unpack_from(self.mm, _SPILLED_OFF)
        _SPILLED.pack_into(self.mm, _SPILLED_OFF, max(count - 1, 0), max(total - nbytes, 0))
        if self.spill_dir is not None:
            remove_spill_file(spill_path(self.spill_dir, blk + BLOCK_HEADER, gen))

    def _spill_error(self, nbytes: int, exc: OSError) -> ObjectStoreFullError:
        h = _H.unpack_from(self.mm, 0)
        return ObjectStoreFullError(
            f"object store full: cannot store {nbytes:,} bytes. The arena is full ({h[4]:,} "
            f"of {self.size - HEADER_SIZE:,} bytes are held by {h[5]} live objects"
            f"{self._in_use_note()}) and the spill directory {self.spill_dir} cannot take "
            f"it either ({exc.strerror or exc}). Free disk space there or point "
            f"REPARTIR_SPILL_DIR at a larger disk, drop references you no longer need, or "
            f"start with a larger object_store_memory= (REPARTIR_OBJECT_STORE_MEMORY).")

    def allocate_spilled(self, nbytes: int, owner: int, chunks: Iterable[tuple[int, Any]]
                         ) -> int:
        """Store an object of ``nbytes`` (> 0) on disk at once: a stub block owned by slot
        ``owner`` and its file, written from ``chunks`` (``(offset, bytes-like)`` pairs, see
        :meth:`Serialized.chunks`); returns the stub's payload offset (its location, as
        for :meth:`allocate`).

        Raises:
            ObjectStoreFullError: the arena has no room even for the stub, or the spill
                directory cannot take the file (the message names both).
        """
        off = self.allocate(0, owner)
        blk = off - BLOCK_HEADER
        with self.mutex:  # flagged first: if this process dies now, its file goes too
            _STUB.pack_into(self.mm, blk + 32, 1)
            _TAIL.pack_into(self.mm, blk + 48, nbytes, owner, self.generation(off))
            count, total = _SPILLED.unpack_from(self.mm, _SPILLED_OFF)
            _SPILLED.pack_into(self.mm, _SPILLED_OFF, count + 1, total + nbytes)
        try:
            write_spill_file(self.spill_file(off), nbytes, chunks)
        except OSError as exc:
            self.release(off)
            raise self._spill_error(nbytes, exc) from None
        except BaseException:
            self.release(off)
            raise
        return off

    def spill_out(self, offset: int, generation: int) -> int:
        """Move the object at payload ``offset`` to disk and give its bytes back to the
        arena, if it is still live allocation ``generation``, unreleased, in memory and
        pinned by nobody (no view, no borrower, no message in flight); returns the bytes
        freed (0: it was not spilled).  Only the block's owner calls this: its location
        stays valid (the block becomes a stub).  A process that holds the block while it
        is written to disk makes the spill give up, so a reader that holds a block before
        reading it (:meth:`hold`) never sees it change."""
        if self.spill_dir is None:
            return 0
        mm, blk = self.mm, offset - BLOCK_HEADER
        magic, state, size, _, pins, released, stub, _, nbytes = _B.unpack_from(mm, blk)
        if (magic != _BLOCK_MAGIC or state != _USED or pins or released or stub
                or size < 2 * BLOCK_HEADER or nbytes == 0):
            return 0  # (a read without the mutex, only to skip the obvious at no cost)
        with self.mutex:
            magic, state, size, _, pins, released, stub, _, nbytes = _B.unpack_from(mm, blk)
            if (magic != _BLOCK_MAGIC or state != _USED or pins or released or stub
                    or _TAIL.unpack_from(mm, blk + 48)[2] != generation):
                return 0
            _B_PINS.pack_into(mm, blk + 24, 1, 0)  # this spill's pin, while it writes
        if self.ledger is not None:
            self.ledger.change(blk, 1)
        path = spill_path(self.spill_dir, offset, generation)
        try:
            write_spill_file(path, nbytes, [(0, self._mv[offset:offset + nbytes])])
            written = True
        except OSError:
            written = False  # the disk is full: the object stays in memory
        if self.ledger is not None:
            self.ledger.change(blk, -1)
        with self.mutex:
            pins, released = _B_PINS.unpack_from(mm, blk + 24)
            if not written or pins != 1 or released:  # someone came to read it: keep it
                if written:
                    remove_spill_file(path)
                if pins <= 1 and released:
                    self._free_locked(blk)
                else:
                    _B_PINS.pack_into(mm, blk + 24, pins - 1, released)
                return 0
            _B_PINS.pack_into(mm, blk + 24, 0, 0)
            _STUB.pack_into(mm, blk + 32, 1)
            count, total = _SPILLED.unpack_from(mm, _SPILLED_OFF)
            _SPILLED.pack_into(mm, _SPILLED_OFF, count + 1, total + nbytes)
            # the stub keeps the header; the rest becomes a block of its own, freed (it
            # coalesces with a free neighbour or goes back to the wilderness)
            h = list(_H.unpack_from(mm, 0))
            struct.pack_into("<Q", mm, blk + 8, BLOCK_HEADER)
            tail, rest = blk + BLOCK_HEADER, size - BLOCK_HEADER
            _B.pack_into(mm, tail, _BLOCK_MAGIC, _USED, rest, BLOCK_HEADER, 0, 0, 0, 0, 0)
            h[5] += 1  # counted as a live block, then freed
            _H.pack_into(mm, 0, *h)
            self._free_locked(tail)
            h = list(_H.unpack_from(mm, 0))
            h[7] -= 1  # a stub is not a free: allocations - frees still counts live blocks
            _H.pack_into(mm, 0, *h)
        return rest

    # -- ownership and pins ------------------------------------------------------------

    def release(self, offset: int) -> None:
        """The owner drops the object at payload ``offset``: free it unless views pin it."""
        blk = offset - BLOCK_HEADER
        self.drain_unpins()
        with self.mutex:
            magic, state, *_ = _B.unpack_from(self.mm, blk)
            pins, released = _B_PINS.unpack_from(self.mm, blk + 24)
            if magic != _BLOCK_MAGIC or state != _USED or released:
                self.bad_releases += 1  # a second release of the same object: ignore it
                return
            if pins:
                _B_PINS.pack_into(self.mm, blk + 24, pins, 1)
            else:
                self._free_locked(blk)

    def _pin(self, blk: int) -> None:
        self._count_pin(blk, 1)
        if self.ledger is not None:
            self.ledger.change(blk, 1)

    def _anchor_died(self, wr: weakref.ref) -> None:
        """A view's anchor died (a weakref callback, which may run inside any allocation,
        even one made while this thread holds the arena mutex): only note it; the hold is
        let go at the next arena call or poll, outside the mutex."""
        entry = self._anchors.pop(id(wr), None)
        if entry is not None:
            self._pending_unpins.append(entry[1])

    def drain_unpins(self) -> None:
        pending = self._pending_unpins
        while pending:
            try:
                blk = pending.popleft()
            except IndexError:
                return
            self._let_go(blk)

    def _hold(self, blk: int) -> None:
        with self._holds_lock:
            n = self._holds.get(blk, 0)
            if n == 0:
                self._pin(blk)
            self._holds[blk] = n + 1

    def _let_go(self, blk: int) -> None:
        with self._holds_lock:
            n = self._holds.get(blk, 0) - 1
            if n > 0:
                self._holds[blk] = n
                return
            if n < 0:  # not held (a runtime bug): never unpin what this process did not pin
                self.bad_releases += 1
                return
            del self._holds[blk]
            self._unpin(blk)

    def hold(self, offset: int) -> None:
        """Keep the block at payload ``offset`` alive for this process (a borrowed ref, a
        view).  The first hold of a block in a process takes one shared pin; later holds
        only count in the process, so they cost no lock of the arena.  Every hold needs one
        :meth:`let_go` *in the same process*; a pin that travels to another process is
        :meth:`pin`."""
        self._hold(offset - BLOCK_HEADER)

    def hold_if_generation(self, offset: int, generation: int) -> bool:
        """:meth:`hold` the block at payload ``offset`` if it is still live allocation
        ``generation`` (released or not: a pin keeps a released block until let go);
        returns whether it was (a location heard of late may name a freed block)."""
        blk = offset - BLOCK_HEADER
        with self._holds_lock:
            n = self._holds.get(blk, 0)
            if n == 0:
                with self.mutex:
                    magic, state, *_ = _B.unpack_from(self.mm, blk)
                    gen = _TAIL.unpack_from(self.mm, blk + 48)[2]
                    if magic != _BLOCK_MAGIC or state != _USED or gen != generation:
                        return False
                    pins, released = _B_PINS.unpack_from(self.mm, blk + 24)
                    _B_PINS.pack_into(self.mm, blk + 24, pins + 1, released)
                if self.ledger is not None:
                    self.ledger.change(blk, 1)
            self._holds[blk] = n + 1
            return True

    def let_go(self, offset: int) -> None:
        self._let_go(offset - BLOCK_HEADER)

    def anchor(self, offset: int, obj: object) -> None:
        """Hold the block at payload ``offset`` until ``obj`` (which must support weak
        references, e.g. an ndarray) is garbage."""
        blk = offset - BLOCK_HEADER
        self._hold(blk)
        wr = weakref.ref(obj, self._anchor_died)
        self._anchors[id(wr)] = (wr, blk)

    def _unpin(self, blk: int) -> None:
        if self.ledger is not None:
            self.ledger.change(blk, -1)
        self._count_pin(blk, -1)

    def _count_pin(self, blk: int, delta: int) -> None:
        if self.mm.closed:
            return
        with self.mutex:
            pins, released = _B_PINS.unpack_from(self.mm, blk + 24)
            pins += delta
            if pins <= 0 and released:
                self._free_locked(blk)
            else:
                _B_PINS.pack_into(self.mm, blk + 24, max(pins, 0), released)

    def release_owned_by(self, owner: int) -> int:
        """Release every live block owned by slot ``owner`` (whose process died: nobody else
        will).  Blocks that views still pin are freed when the last view goes.  Returns how
        many blocks were released."""
        self.drain_unpins()
        found = []
        with self.mutex:
            mm = self.mm
            blk, brk = HEADER_SIZE, _H.unpack_from(mm, 0)[2]
            while blk < brk:
                _, state, size, _, _, released, _, _, _ = _B.unpack_from(mm, blk)
                if state == _USED and not released and _OWNER.unpack_from(mm, blk + 56)[0] == owner:
                    found.append(blk)
                blk += size
        for blk in found:
            self.release(blk + BLOCK_HEADER)
        return len(found)

    def bytes_by_owner(self) -> dict[int, int]:
        """Bytes (headers included) of live, unreleased blocks per owner slot: a diagnostic
        walk over every block, for leak checks."""
        out: dict[int, int] = {}
        with self.mutex:
            mm = self.mm
            blk, brk = HEADER_SIZE, _H.unpack_from(mm, 0)[2]
            while blk < brk:
                _, state, size, _, _, released, _, _, _ = _B.unpack_from(mm, blk)
                if state == _USED and not released:
                    owner = _OWNER.unpack_from(mm, blk + 56)[0]
                    out[owner] = out.get(owner, 0) + size
                blk += size
        return out

    def pin(self, offset: int) -> None:
        """Keep the block at payload ``offset`` alive while a ref to it travels in a
        message; whoever reads the message calls :meth:`unpin`, in any process.  Such pins
        are not in the pin ledger of either process (only :meth:`hold` s are): a process
        that dies cannot give back a pin it had already passed on."""
        self._count_pin(offset - BLOCK_HEADER, 1)

    def unpin(self, offset: int) -> None:
        self._count_pin(offset - BLOCK_HEADER, -1)

    def payload_length(self, offset: int) -> int:
        return struct.unpack_from("<Q", self.mm, offset - BLOCK_HEADER + 48)[0]

    def writable(self, offset: int, nbytes: int) -> memoryview:
        """A writable view of ``nbytes`` at ``offset`` (only for the block's writer)."""
        return self._mv[offset:offset + nbytes]

    def read(self, offset: int, nbytes: int) -> bytes:
        """A copy of ``nbytes`` at ``offset``; no pin (the caller knows the block lives
        while it reads, e.g. a task spec its owner keeps until the task ends)."""
        return self.mm[offset:offset + nbytes]

    def readonly_slice(self, offset: int, nbytes: int) -> np.ndarray:
        """``nbytes`` at ``offset`` as a read-only uint8 array; no hold (see :meth:`anchor`)."""
        return self._readonly[offset:offset + nbytes]

    def view(self, offset: int, nbytes: int) -> memoryview:
        """A read-only view of the payload at ``offset`` that holds its block until the
        view and every slice or array made from it are gone."""
        base = self._readonly[offset:offset + nbytes]  # its own ndarray: the anchor
        self.anchor(offset, base)
        return memoryview(base)

    def statistics(self) -> ArenaStatistics:
        h = _H.unpack_from(self.mm, 0)
        return ArenaStatistics(
            capacity=self.size - HEADER_SIZE,
            used_bytes=h[4],
            num_blocks=h[5],
            wilderness=self.size - h[2],
            allocations=h[6],
            frees=h[7],
            spilled_objects=_SPILLED.unpack_from(self.mm, _SPILLED_OFF)[0],
            spilled_bytes=_SPILLED.unpack_from(self.mm, _SPILLED_OFF)[1],
        )

    def close(self) -> None:
        """Unmap, unless views are still alive (then the mapping lives on with them)."""
        self._readonly = None
        try:
            self.ro.release()
            self._mv.release()
            self.mm.close()
        except BufferError:
            pass
