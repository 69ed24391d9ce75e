"""A work-stealing deque of task records in shared memory.

Each process of a node (the driver and every worker) owns one deque.  The owner pushes and
pops at the **bottom** (LIFO: depth-first, cache-warm); an idle process steals the
**oldest** records from the **top** (FIFO), as in Chase & Lev, "Dynamic circular
work-stealing deque", SPAA 2005.  CPython offers no atomic compare-and-swap, so instead of
Chase-Lev's CAS on ``top`` every operation takes the deque's process-shared robust mutex
(about 0.6 us uncontended); a thief takes up to half of the victim's records in one go
("steal-half", Hendler & Shavit, PODC 2002), so a burst of tiny tasks costs one lock per
batch rather than per task.

Layout at ``offset`` in the scheduler segment::

    mutex (64 B) | top u64 | bottom u64 | pad to 128 | capacity x record_size slots

``top`` and ``bottom`` only grow; slot ``i % capacity`` holds record ``i``; the deque holds
``bottom - top`` records.  A record is ``u32 length`` + payload, at most
``record_size - 4`` bytes: larger task specs live in the object store.
"""

from __future__ import annotations

import collections
import itertools
import struct

from ..sync import RobustMutex, address_of
from . import record

__all__ = ["TaskDeque", "PriorityDeques", "Backlog", "deque_bytes"]

_CPU = struct.Struct("<I")  # a record header's CPU demand, at byte 22 (record.HEADER)
_TB = struct.Struct("<QQ")
_START = 1 << 48  # initial top and bottom
_LEN = struct.Struct("<I")
_HDR = 128


def _always(record) -> bool:
    return True


def deque_bytes(capacity: int, record_size: int) -> int:
    """Bytes a deque of ``capacity`` records of ``record_size`` bytes takes."""
    return _HDR + capacity * record_size


class TaskDeque:
    """A view of one process's deque.  Safe from any process and thread of the node."""

    __slots__ = ("mm", "offset", "capacity", "record_size", "max_payload", "mutex", "_base")

    def __init__(self, mm, offset: int, capacity: int, record_size: int, create: bool = False):
        self.mm = mm
        self.offset = offset
        self.capacity = capacity
        self.record_size = record_size
        self.max_payload = record_size - _LEN.size
        self.mutex = RobustMutex(address_of(mm, offset))
        self._base = offset + _HDR
        if create:
            self.mutex.initialize()
            # top and bottom only grow, except when records are put back at the top
            # (push_front_many): start high so that top never goes below zero
            _TB.pack_into(mm, offset + 64, _START, _START)

    def __len__(self) -> int:
        """Records held; read without the lock, so only a hint under concurrency."""
        top, bottom = _TB.unpack_from(self.mm, self.offset + 64)
        return max(bottom - top, 0)

    def push(self, record: bytes) -> bool:
        """Push one record at the bottom; ``False`` when the deque is full."""
        n = len(record)
        if n > self.max_payload:
            raise ValueError(f"task record of {n} bytes exceeds the slot ({self.max_payload})")
        mm = self.mm
        with self.mutex:
            top, bottom = _TB.unpack_from(mm, self.offset + 64)
            if bottom - top >= self.capacity:
                return False
            pos = self._base + (bottom % self.capacity) * self.record_size
            _LEN.pack_into(mm, pos, n)
            mm[pos + 4:pos + 4 + n] = record
            struct.pack_into("<Q", mm, self.offset + 72, bottom + 1)
        return True

    def push_many(self, records: list[bytes]) -> int:
        """Push records in order (the last pushed is popped first); returns how many fit."""
        with self.mutex:
            return self._push_many_locked(records)

    def _push_many_locked(self, records: list[bytes]) -> int:
        mm = self.mm
        cap, rs, base = self.capacity, self.record_size, self._base
        top, bottom = _TB.unpack_from(mm, self.offset + 64)
        room = cap - (bottom - top)
        count = min(room, len(records))
        for i in range(count):
            rec = records[i]
            n = len(rec)
            if n > self.max_payload:
                count = i
                break
            pos = base + ((bottom + i) % cap) * rs
            _LEN.pack_into(mm, pos, n)
            mm[pos + 4:pos + 4 + n] = rec
        struct.pack_into("<Q", mm, self.offset + 72, bottom + count)
        return count

    def push_front_many(self, records: list[bytes]) -> int:
        """Put records back at the top, the end thieves take first: ``records[0]`` becomes
        the top (the next one stolen), then ``records[1]``, ... -- so tasks taken back from
        a dead worker run before the ones queued after them.  Returns how many fit (the
        leading ones)."""
        mm = self.mm
        cap, rs, base = self.capacity, self.record_size, self._base
        with self.mutex:
            top, bottom = _TB.unpack_from(mm, self.offset + 64)
            count = min(cap - (bottom - top), len(records))
            for i in range(count):
                if len(records[i]) > self.max_payload:
                    count = i
                    break
            new_top = top - count
            for i in range(count):
                rec = records[i]
                pos = base + ((new_top + i) % cap) * rs
                _LEN.pack_into(mm, pos, len(rec))
                mm[pos + 4:pos + 4 + len(rec)] = rec
            struct.pack_into("<Q", mm, self.offset + 64, new_top)
        return count

    def cpu_demands(self, limit: int = 64) -> list[int]:
        """The CPU demand (milli-CPUs) of up to ``limit`` records, oldest first; nothing is
        taken.  Records whose header marks the default demand count 1000."""
        mm = self.mm
        out = []
        with self.mutex:
            top, bottom = _TB.unpack_from(mm, self.offset + 64)
            for i in range(top, min(bottom, top + limit)):
                pos = self._base + (i % self.capacity) * self.record_size + 4
                flags = mm[pos + 2]
                out.append(1000 if flags & 1 else _CPU.unpack_from(mm, pos + 22)[0])
        return out

    def pop(self) -> bytes | None:
        """The owner takes the newest record (LIFO), or ``None`` if empty."""
        return self.pop_if(_always)

    def pop_if(self, admit) -> bytes | None:
        """Like :meth:`pop`, but only when ``admit(record)`` (called under the lock, e.g. to
        reserve the record's resources) returns true."""
        mm = self.mm
        off = self.offset + 64
        top, bottom = _TB.unpack_from(mm, off)
        if bottom <= top:
            return None
        with self.mutex:
            top, bottom = _TB.unpack_from(mm, off)
            if bottom <= top:
                return None
            pos = self._base + ((bottom - 1) % self.capacity) * self.record_size
            n = _LEN.unpack_from(mm, pos)[0]
            rec = mm[pos + 4:pos + 4 + n]
            if not admit(rec):
                return None
            struct.pack_into("<Q", mm, off + 8, bottom - 1)
        return rec

    def steal_if(self, max_records: int, admit, dest: "TaskDeque | None" = None) -> bytes | None:
        """Take the oldest record if ``admit(record)`` (called under the lock) returns true,
        and move up to ``max_records - 1`` more (never more than half) straight into
        ``dest``, the thief's own deque, while still holding this lock -- so no record is
        ever only in a process's memory, where a crash would lose it.  ``dest`` is only
        try-locked (two thieves stealing from each other must not deadlock); if it is busy,
        one record is taken."""
        mm = self.mm
        off = self.offset + 64
        top, bottom = _TB.unpack_from(mm, off)
        if bottom <= top:
            return None
        cap, rs, base = self.capacity, self.record_size, self._base
        with self.mutex:
            top, bottom = _TB.unpack_from(mm, off)
            size = bottom - top
            if size <= 0:
                return None
            pos = base + (top % cap) * rs
            n = _LEN.unpack_from(mm, pos)[0]
            first = mm[pos + 4:pos + 4 + n]
            if not admit(first):
                return None
            count = min(max_records, max(1, size // 2))
            if count > 1 and dest is not None and dest.mutex.try_acquire():
                try:
                    rest = []
                    for i in range(count - 1, 0, -1):  # newest first: the oldest pops first
                        pos = base + ((top + i) % cap) * rs
                        n = _LEN.unpack_from(mm, pos)[0]
                        rest.append(mm[pos + 4:pos + 4 + n])
                    moved = dest._push_many_locked(rest)
                    count = 1 + moved  # what did not fit stays with the victim
                    if moved < len(rest):
                        count = 1  # keep it simple: the victim keeps them all
                        dest._pop_n_locked(moved)
                finally:
                    dest.mutex.release()
            else:
                count = 1
            struct.pack_into("<Q", mm, off, top + count)
        return first

    def _pop_n_locked(self, n: int) -> None:
        top, bottom = _TB.unpack_from(self.mm, self.offset + 64)
        struct.pack_into("<Q", self.mm, self.offset + 72, bottom - n)

    def steal(self, max_records: int = 1) -> list[bytes]:
        """A thief takes up to ``max_records`` of the oldest records, and never more than
        half of them (at least one) -- FIFO order."""
        mm = self.mm
        off = self.offset + 64
        top, bottom = _TB.unpack_from(mm, off)
        if bottom <= top:
            return []
        cap, rs, base = self.capacity, self.record_size, self._base
        with self.mutex:
            top, bottom = _TB.unpack_from(mm, off)
            size = bottom - top
            if size <= 0:
                return []
            count = min(max_records, max(1, size // 2))
            out = []
            for i in range(count):
                pos = base + ((top + i) % cap) * rs
                n = _LEN.unpack_from(mm, pos)[0]
                out.append(mm[pos + 4:pos + 4 + n])
            struct.pack_into("<Q", mm, off, top + count)
        return out

    def remove_if(self, predicate) -> list[bytes]:
        """Remove and return every record for which ``predicate(record)`` is true (used by
        cancellation and by a shutting-down owner); the others keep their order."""
        mm = self.mm
        cap, rs, base = self.capacity, self.record_size, self._base
        with self.mutex:
            top, bottom = _TB.unpack_from(mm, self.offset + 64)
            keep, gone = [], []
            for i in range(top, bottom):
                pos = base + (i % cap) * rs
                n = _LEN.unpack_from(mm, pos)[0]
                rec = mm[pos + 4:pos + 4 + n]
                (gone if predicate(rec) else keep).append(rec)
            if gone:
                for j, rec in enumerate(keep):
                    pos = base + ((top + j) % cap) * rs
                    _LEN.pack_into(mm, pos, len(rec))
                    mm[pos + 4:pos + 4 + len(rec)] = rec
                struct.pack_into("<Q", mm, self.offset + 72, top + len(keep))
        return gone


class PriorityDeques:
    """A process's deques, one per priority level (high, normal, low).  Records go to the
    level in their header's priority byte; pops and steals serve higher levels first."""

    __slots__ = ("levels", "max_payload")

    def __init__(self, levels: list[TaskDeque]) -> None:
        self.levels = levels
        self.max_payload = levels[0].max_payload

    def __len__(self) -> int:
        n = 0
        for d in self.levels:
            top, bottom = _TB.unpack_from(d.mm, d.offset + 64)
            if bottom > top:  # an unlocked read may catch a thief mid-update
                n += bottom - top
        return n

    def push(self, record: bytes) -> bool:
        return self.levels[record[1]].push(record)

    def push_many(self, records: list[bytes]) -> int:
        """Push in order; returns how many of the leading records fit.

        Records of several levels go in level by level, the highest first, when all fit:
        a thief that looks between two pushes must find the high-priority work first
        (pushing in submission order let it take a low record it saw alone).  Only the
        owner pushes, so the room measured first can only grow meanwhile."""
        first = records[0][1]
        if all(r[1] == first for r in records):
            return self.levels[first].push_many(records)
        by_level: list[list[bytes]] = [[] for _ in self.levels]
        for r in records:
            by_level[r[1]].append(r)
        if all(len(recs) <= d.capacity - len(d) for d, recs in zip(self.levels, by_level)):
            for d, recs in zip(self.levels, by_level):
                if recs:
                    d.push_many(recs)
            return len(records)
        for i, r in enumerate(records):  # a level is full: keep the order, push what fits
            if not self.levels[r[1]].push(r):
                return i
        return len(records)

    def cpu_demands(self, limit: int = 64) -> list[int]:
        out: list[int] = []
        for d in self.levels:
            if len(d):
                out += d.cpu_demands(limit)
        return out

    def pop_if(self, admit) -> bytes | None:
        for d in self.levels:
            rec = d.pop_if(admit)
            if rec is not None:
                return rec
        return None

    def remove_if(self, predicate) -> list[bytes]:
        out = []
        for d in self.levels:
            out.extend(d.remove_if(predicate))
        return out


class Backlog:
    """Task records not in this process's deque yet: one FIFO per priority level, so a
    high-priority task never waits behind low ones that did not fit."""

    __slots__ = ("levels", "count")

    def __init__(self, nlevels: int) -> None:
        self.levels = [collections.deque() for _ in range(nlevels)]
        self.count = 0

    def append(self, rec: bytes) -> None:
        self.levels[rec[1]].append(rec)
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def remove_if(self, match) -> set:
        """Drop the records ``match`` accepts; returns their task ids."""
        found = set()
        for i, q in enumerate(self.levels):
            if any(match(r) for r in q):
                kept = collections.deque()
                for r in q:
                    if match(r):
                        found.add(record.task_id_of(r))
                    else:
                        kept.append(r)
                self.levels[i] = kept
        self.count = sum(len(q) for q in self.levels)
        return found

    def flush_into(self, deque: PriorityDeques) -> int:
        """Push into ``deque`` (a PriorityDeques), highest level first, in batches of at most
        512 records, while they fit; a full level is skipped at once (each submit must not
        copy the whole backlog: that made submitting quadratic).  Returns how many went."""
        pushed = 0
        for q, level in zip(self.levels, deque.levels):
            while q and len(level) < level.capacity:
                batch = list(itertools.islice(q, 512))
                n = level.push_many(batch)
                for _ in range(n):
                    q.popleft()
                pushed += n
                if n < len(batch):
                    break
        self.count -= pushed
        return pushed
