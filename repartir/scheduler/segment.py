"""The scheduler segment: the node's control block in shared memory.

One file per node (``/dev/shm/repartir-<session>-sched``), mapped by every process::

    0      header (4 KiB): magic, slot count, shutdown flag, work eventcount, mutex
    4096   slot 0 (the driver) | slot 1 | ... | slot N-1

and each slot, owned by one process, holds::

    slot header (16 KiB): state, pid, blocked flag, held resources, a note, the stack of
                          tasks it runs now (nested: a task waiting in get runs others)
    deque    (see :mod:`.deque`): tasks this process submitted or stole
    inbox    (see :mod:`.mailbox`): completions of the tasks this process owns

The **work eventcount** (``work_seq`` + ``sleepers``) lets idle processes park: a sleeper
registers and reads ``work_seq`` under the segment mutex, re-checks every deque, then
``futex_wait``s; a pusher that sees sleepers bumps ``work_seq`` and wakes one per task.
"""

from __future__ import annotations

import struct

from ..sync import RobustMutex, address_of, futex_wait, futex_wake
from .deque import PriorityDeques, TaskDeque, deque_bytes
from .record import DEFAULT_VECTOR, NRES, PRIORITIES
from .mailbox import Inbox, inbox_bytes

__all__ = ["Segment", "SlotState", "segment_bytes", "RECORD_SIZE"]

_MAGIC = 0x7265_7061_7363_6864
LAYOUT_VERSION = 9  # bump whenever the layout below changes
_HEADER = 4096
_SLOT_HEADER = 16384
RECORD_SIZE = 512
_H = struct.Struct("<QIIIIIIIIQI")
# magic nslots active shutdown work_seq sleepers spinners deque_cap record_size inbox_size
# layout_version
_SHUTDOWN_OFF, _WORK_SEQ_OFF, _SLEEPERS_OFF, _SPINNERS_OFF = 16, 20, 24, 28
_MUTEX_OFF = 128
_SLOT = struct.Struct("<IIII")  # state pid token-free blocked
_CURRENT_OFF = 512
_RUNNING = struct.Struct("<H16sdf")  # owner slot, task id, start (monotonic s), timeout s
_STOP = struct.Struct("<I16s")  # stop request: reason + 1 (0: none), task id
_LEDGER_OFF, LEDGER_ENTRIES = 12288, 256  # in a slot's header: the pin ledger
_LEDGER = struct.Struct("<qq")  # block offset, pins held
MAX_NESTING = (_LEDGER_OFF - _CURRENT_OFF - 4) // _RUNNING.size  # 392 nested tasks


class SlotState:
    FREE = 0
    DRIVER = 1
    WORKER = 2
    DEAD = 3
    STARTING = 4  # spawned, not yet attached
    ACTOR = 5  # an actor's process (its deques are never stolen from)
    ACTOR_RESTARTING = 6
    ACTOR_DEAD = 7


_RES = struct.Struct(f"<{NRES}q")
_TOTALS_OFF, _AVAIL_OFF = 256, 256 + _RES.size
_CANCEL_COUNT_OFF, _CANCEL_RING_OFF, CANCEL_RING = 512, 528, 192  # ids of cancelled tasks
_HELD_OFF = 64  # in a slot's header: resources its process holds
_NOTE_OFF = _HELD_OFF + _RES.size  # in a slot's header: a short text (why an actor died)
NOTE_BYTES = _CURRENT_OFF - _NOTE_OFF - 2  # the note's longest text (u16 length first)
_EPOCH_OFF = 40  # in a slot's header: actor epoch u32 + actor id 16 B
_WAITING_OFF = 36  # in a slot's header: spinning u16, sleeping u16
_EPOCH = struct.Struct("<I16s")
_RETIRING_OFF = 60  # in a slot's header: u32, 1 while a worker that reached max_calls drains
_NPRIO = len(PRIORITIES)


def _stride(deque_capacity: int, inbox_size: int) -> int:
    n = (_SLOT_HEADER + _NPRIO * deque_bytes(deque_capacity, RECORD_SIZE)
         + inbox_bytes(inbox_size))
    return (n + 4095) & ~4095


def segment_bytes(nslots: int, deque_capacity: int, inbox_size: int) -> int:
    return _HEADER + nslots * _stride(deque_capacity, inbox_size)


class Segment:
    """A mapping of the scheduler segment; ``create`` initialises it (the node only)."""

    def __init__(self, mm, nslots: int = 0, deque_capacity: int = 0, inbox_size: int = 0,
                 create: bool = False) -> None:
        self.mm = mm
        if create:
            _H.pack_into(mm, 0, _MAGIC, nslots, 0, 0, 0, 0, 0, deque_capacity, RECORD_SIZE,
                         inbox_size, LAYOUT_VERSION)
            RobustMutex(address_of(mm, _MUTEX_OFF)).initialize()
        h = _H.unpack_from(mm, 0)
        if h[0] != _MAGIC:
            raise RuntimeError("the scheduler segment does not hold a repartir segment")
        if h[10] != LAYOUT_VERSION or h[8] != RECORD_SIZE:
            raise RuntimeError(
                f"the node was started by another version of repartir (segment layout "
                f"{h[10]}, this process expects {LAYOUT_VERSION}); restart the driver so that "
                f"it and its workers run the same installed version")
        self.nslots, self.deque_capacity, self.inbox_size = h[1], h[7], h[9]
        self.mutex = RobustMutex(address_of(mm, _MUTEX_OFF))
        self.mutex.on_owner_dead = self._repair_pool
        self._work_seq_addr = address_of(mm, _WORK_SEQ_OFF)
        self._stride = _stride(self.deque_capacity, self.inbox_size)
        self.deques: list[PriorityDeques] = []
        self.inboxes: list[Inbox] = []
        dq = deque_bytes(self.deque_capacity, RECORD_SIZE)
        for i in range(self.nslots):
            base = _HEADER + i * self._stride + _SLOT_HEADER
            self.deques.append(PriorityDeques([
                TaskDeque(mm, base + p * dq, self.deque_capacity, RECORD_SIZE, create)
                for p in range(_NPRIO)]))
            self.inboxes.append(Inbox(mm, base + _NPRIO * dq, self.inbox_size, create))

    # -- header ----------------------------------------------------------------------

    def _u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.mm, off)[0]

    @property
    def active_slots(self) -> int:
        """One more than the highest slot index ever claimed."""
        return self._u32(12)

    @property
    def shutting_down(self) -> bool:
        return self._u32(_SHUTDOWN_OFF) != 0

    def begin_shutdown(self) -> None:
        struct.pack_into("<I", self.mm, _SHUTDOWN_OFF, 1)
        with self.mutex:
            seq = self._u32(_WORK_SEQ_OFF)
            struct.pack_into("<I", self.mm, _WORK_SEQ_OFF, (seq + 1) & 0xFFFFFFFF)
        futex_wake(self._work_seq_addr, 1 << 30)

    # -- slots -----------------------------------------------------------------------

    def slot_offset(self, index: int) -> int:
        return _HEADER + index * self._stride

    def claim_slot(self, state: int, pid: int, index: int | None = None) -> int:
        # (an actor's epoch and id, at _EPOCH_OFF, are left as they are)
        """Claim a free slot (or ``index``) for process ``pid``; returns its index."""
        with self.mutex:
            candidates = [index] if index is not None else range(self.nslots)
            for i in candidates:
                off = self.slot_offset(i)
                st = _SLOT.unpack_from(self.mm, off)[0]
                if st in (SlotState.FREE, SlotState.DEAD) or index is not None:
                    _SLOT.pack_into(self.mm, off, state, pid, 0, 0)
                    struct.pack_into("<I", self.mm, off + _RETIRING_OFF, 0)
                    if state == SlotState.STARTING:
                        _RES.pack_into(self.mm, off + _HELD_OFF, *([0] * NRES))
                    if i + 1 > self.active_slots:
                        struct.pack_into("<I", self.mm, 12, i + 1)
                    return i
        raise RuntimeError(f"all {self.nslots} process slots of the node are in use")

    def slot_state(self, index: int) -> tuple[int, int]:
        st, pid, _, _ = _SLOT.unpack_from(self.mm, self.slot_offset(index))
        return st, pid

    def set_slot_state(self, index: int, state: int) -> None:
        struct.pack_into("<I", self.mm, self.slot_offset(index), state)

    def push_running(self, index: int, owner: int, task_id: bytes, start: float = 0.0,
                     timeout: float = 0.0) -> bool:
        """Record that the slot's process starts running a task (nested runs stack up:
        a worker blocked in ``get`` runs other tasks meanwhile).  ``False`` when the stack
        is full -- the caller must not start another nested task then."""
        off = self.slot_offset(index) + _CURRENT_OFF
        depth = struct.unpack_from("<I", self.mm, off)[0]
        if depth >= MAX_NESTING:
            return False
        _RUNNING.pack_into(self.mm, off + 4 + depth * _RUNNING.size, owner, task_id, start,
                           timeout)
        struct.pack_into("<I", self.mm, off, depth + 1)
        return True

    def pop_running(self, index: int) -> None:
        off = self.slot_offset(index) + _CURRENT_OFF
        depth = struct.unpack_from("<I", self.mm, off)[0]
        struct.pack_into("<I", self.mm, off, max(depth - 1, 0))

    def running(self, index: int) -> list[tuple[int, bytes, float, float]]:
        """``(owner slot, task id, start, timeout)`` of every task the slot's process is
        running, outermost first (``start`` is ``time.monotonic()`` seconds)."""
        off = self.slot_offset(index) + _CURRENT_OFF
        depth = min(struct.unpack_from("<I", self.mm, off)[0], MAX_NESTING)
        return [_RUNNING.unpack_from(self.mm, off + 4 + i * _RUNNING.size)
                for i in range(depth)]

    def remove_running(self, index: int, task_id: bytes) -> None:
        """Remove ``task_id`` from the slot's running list wherever it is (threaded
        actors finish calls in any order)."""
        off = self.slot_offset(index) + _CURRENT_OFF
        depth = struct.unpack_from("<I", self.mm, off)[0]
        if depth and _RUNNING.unpack_from(self.mm, off + 4 + (depth - 1) * _RUNNING.size)[1] \
                == task_id:  # the usual case: the newest entry
            struct.pack_into("<I", self.mm, off, depth - 1)
            return
        entries = [e for e in self.running(index) if e[1] != task_id]
        for i, e in enumerate(entries):
            _RUNNING.pack_into(self.mm, off + 4 + i * _RUNNING.size, *e)
        struct.pack_into("<I", self.mm, off, len(entries))

    def clear_running(self, index: int) -> None:
        struct.pack_into("<I", self.mm, self.slot_offset(index) + _CURRENT_OFF, 0)

    def find_running(self, task_id: bytes) -> tuple[int, int] | None:
        """``(slot, pid)`` of the worker running ``task_id``, if any."""
        for i in range(1, self.active_slots):
            if any(r[1] == task_id for r in self.running(i)):
                return i, self.slot_state(i)[1]
        return None

    def request_stop(self, index: int, task_id: bytes, reason: int) -> None:
        _STOP.pack_into(self.mm, self.slot_offset(index) + 16, reason + 1, task_id)

    def take_stop_request(self, index: int) -> tuple[int, bytes] | None:
        off = self.slot_offset(index) + 16
        reason, task_id = _STOP.unpack_from(self.mm, off)
        if not reason:
            return None
        _STOP.pack_into(self.mm, off, 0, bytes(16))
        return reason - 1, task_id

    def set_note(self, index: int, text: str) -> None:
        """A short text kept in the slot (why an actor died), at most ``NOTE_BYTES`` (374)
        bytes of UTF-8; longer text is cut."""
        raw = text.encode("utf-8", "replace")[:NOTE_BYTES]
        off = self.slot_offset(index) + _NOTE_OFF
        struct.pack_into("<H", self.mm, off, len(raw))
        self.mm[off + 2:off + 2 + len(raw)] = raw

    def note(self, index: int) -> str:
        off = self.slot_offset(index) + _NOTE_OFF
        n = struct.unpack_from("<H", self.mm, off)[0]
        return bytes(self.mm[off + 2:off + 2 + n]).decode("utf-8", "replace")

    def take_ledger(self, index: int) -> list[tuple[int, int]]:
        """The ``(block, pins)`` a dead process held (see :class:`PinLedger`), cleared."""
        base = self.slot_offset(index) + _LEDGER_OFF
        out = []
        for i in range(LEDGER_ENTRIES):
            blk, count = _LEDGER.unpack_from(self.mm, base + i * _LEDGER.size)
            if blk and count > 0:
                out.append((blk, count))
        self.mm[base:base + LEDGER_ENTRIES * _LEDGER.size] = bytes(LEDGER_ENTRIES * _LEDGER.size)
        return out

    def actor_epoch(self, index: int) -> tuple[int, bytes]:
        """``(epoch, actor id)`` of the actor in a slot: the epoch grows each time the
        actor's process is replaced or the slot gets another actor, so calls sent to an
        earlier process can be recognised (and re-sent by their callers)."""
        return _EPOCH.unpack_from(self.mm, self.slot_offset(index) + _EPOCH_OFF)

    def bump_actor_epoch(self, index: int, actor_id: bytes | None = None) -> int:
        off = self.slot_offset(index) + _EPOCH_OFF
        epoch, current = _EPOCH.unpack_from(self.mm, off)
        _EPOCH.pack_into(self.mm, off, epoch + 1, actor_id if actor_id is not None else current)
        return epoch + 1

    def set_blocked(self, index: int, blocked: bool) -> None:
        """A worker waiting in ``get`` with nothing to run lends its CPU: the node may
        start an extra worker meanwhile."""
        struct.pack_into("<I", self.mm, self.slot_offset(index) + 12, int(blocked))

    def blocked(self, index: int) -> bool:
        return struct.unpack_from("<I", self.mm, self.slot_offset(index) + 12)[0] != 0

    def set_retiring(self, index: int, retiring: bool) -> None:
        """A worker that ran a function ``max_calls`` times takes no more tasks and exits
        once it owns no objects: while it waits, the node counts it as busy (so that queued
        tasks get an extra worker) and replaces it when it is gone."""
        struct.pack_into("<I", self.mm, self.slot_offset(index) + _RETIRING_OFF, int(retiring))

    def retiring(self, index: int) -> bool:
        return struct.unpack_from("<I", self.mm,
                                  self.slot_offset(index) + _RETIRING_OFF)[0] != 0

    # -- resources ---------------------------------------------------------------------

    def set_totals(self, totals: tuple[int, ...]) -> None:
        """Set the node's resources (milli-units; CPU, GPU, custom...) -- all available."""
        with self.mutex:
            _RES.pack_into(self.mm, _TOTALS_OFF, *totals)
            _RES.pack_into(self.mm, _AVAIL_OFF, *totals)

    def totals(self) -> tuple[int, ...]:
        return _RES.unpack_from(self.mm, _TOTALS_OFF)

    def available(self) -> tuple[int, ...]:
        return _RES.unpack_from(self.mm, _AVAIL_OFF)

    def _add(self, off: int, demand: tuple[int, ...], sign: int) -> None:
        """``vector at off += sign * demand`` (caller holds the mutex)."""
        mm = self.mm
        if demand is DEFAULT_VECTOR:
            cpu = struct.unpack_from("<q", mm, off)[0]
            struct.pack_into("<q", mm, off, cpu + sign * 1000)
        else:
            v = _RES.unpack_from(mm, off)
            _RES.pack_into(mm, off, *(a + sign * d for a, d in zip(v, demand)))

    def try_acquire(self, demand: tuple[int, ...], slot: int | None = None) -> bool:
        """Reserve ``demand`` if every amount is available now, and record it as held by
        ``slot`` in the same critical section (so the node can give it back if that
        process dies; see :meth:`_repair_pool`)."""
        mm = self.mm
        with self.mutex:
            if demand is DEFAULT_VECTOR:
                if struct.unpack_from("<q", mm, _AVAIL_OFF)[0] < 1000:
                    return False
            else:
                avail = _RES.unpack_from(mm, _AVAIL_OFF)
                if any(d > a for d, a in zip(demand, avail) if d > 0):
                    return False
            self._add(_AVAIL_OFF, demand, -1)
            if slot is not None:
                self._add(self.slot_offset(slot) + _HELD_OFF, demand, 1)
            return True

    def force_acquire(self, demand: tuple[int, ...], slot: int | None = None) -> None:
        """Take ``demand`` even if that oversubscribes (a worker leaving ``get``)."""
        with self.mutex:
            self._add(_AVAIL_OFF, demand, -1)
            if slot is not None:
                self._add(self.slot_offset(slot) + _HELD_OFF, demand, 1)

    def release(self, demand: tuple[int, ...], slot: int | None = None) -> None:
        """Give ``demand`` back to the pool (and take it off what ``slot`` holds)."""
        with self.mutex:
            self._add(_AVAIL_OFF, demand, 1)
            if slot is not None:
                self._add(self.slot_offset(slot) + _HELD_OFF, demand, -1)
            sleepers = self._wake_for_resources_locked()
        if sleepers:
            futex_wake(self._work_seq_addr, 1)

    def release_held(self, slot: int) -> None:
        """Give back everything a dead process held, in one critical section."""
        with self.mutex:
            off = self.slot_offset(slot) + _HELD_OFF
            held = _RES.unpack_from(self.mm, off)
            _RES.pack_into(self.mm, off, *([0] * NRES))
            self._add(_AVAIL_OFF, held, 1)
            sleepers = self._wake_for_resources_locked()
        if sleepers:
            futex_wake(self._work_seq_addr, 1)

    def _wake_for_resources_locked(self) -> int:
        sleepers = self._u32(_SLEEPERS_OFF)
        if sleepers and self.queued():  # freed resources may admit a queued task
            seq = self._u32(_WORK_SEQ_OFF)
            struct.pack_into("<I", self.mm, _WORK_SEQ_OFF, (seq + 1) & 0xFFFFFFFF)
            return sleepers
        return 0

    def _repair_pool(self) -> None:
        """The segment mutex was held by a process that died (``EOWNERDEAD``), maybe between
        two writes: rebuild the pool from the totals and what every slot holds."""
        totals = _RES.unpack_from(self.mm, _TOTALS_OFF)
        held = [0] * NRES
        for i in range(self.nslots):
            for k, h in enumerate(_RES.unpack_from(self.mm, self.slot_offset(i) + _HELD_OFF)):
                held[k] += h
        _RES.pack_into(self.mm, _AVAIL_OFF, *(t - h for t, h in zip(totals, held)))

    # -- cancellation --------------------------------------------------------------------

    def add_cancelled(self, task_id: bytes) -> None:
        """Remember a cancelled task's id (a ring of the last ``CANCEL_RING``), so that a
        copy of it popped meanwhile by some worker is dropped instead of run."""
        with self.mutex:
            n = self._u32(_CANCEL_COUNT_OFF)
            at = _CANCEL_RING_OFF + (n % CANCEL_RING) * 16
            self.mm[at:at + 16] = task_id
            struct.pack_into("<I", self.mm, _CANCEL_COUNT_OFF, n + 1)

    def is_cancelled(self, task_id: bytes) -> bool:
        n = self._u32(_CANCEL_COUNT_OFF)
        if n == 0:
            return False
        ring = self.mm[_CANCEL_RING_OFF:_CANCEL_RING_OFF + 16 * min(n, CANCEL_RING)]
        i = ring.find(task_id)
        return i >= 0 and i % 16 == 0

    # -- the work eventcount -----------------------------------------------------------

    def queued(self) -> int:
        """Records in all deques (a hint: read without locks)."""
        return sum(len(self.deques[i]) for i in range(self.active_slots))

    def smallest_queued_cpu(self) -> int | None:
        """The smallest CPU demand (milli-CPUs) among the oldest queued records of every
        deque, or ``None`` when nothing is queued."""
        best = None
        for i in range(self.active_slots):
            d = self.deques[i]
            if len(d):
                for cpu in d.cpu_demands():
                    if best is None or cpu < best:
                        best = cpu
        return best

    def notify_work(self, count: int = 1) -> None:
        """Called after pushing ``count`` records: wake sleepers, if any, unless enough
        processes spin to take the work (a spinner re-checks the deques after it stops
        spinning and before it sleeps, so skipping the wake-up loses nothing)."""
        sleepers, spinners = struct.unpack_from("<II", self.mm, _SLEEPERS_OFF)
        if sleepers == 0 or count <= spinners:
            return
        with self.mutex:
            seq = self._u32(_WORK_SEQ_OFF)
            struct.pack_into("<I", self.mm, _WORK_SEQ_OFF, (seq + 1) & 0xFFFFFFFF)
        futex_wake(self._work_seq_addr, count - spinners)

    def idle_workers(self) -> bool:
        """Whether some process spins or sleeps waiting for work (a hint, no lock)."""
        sleepers, spinners = struct.unpack_from("<II", self.mm, _SLEEPERS_OFF)
        return sleepers + spinners > 0

    def try_start_spinning(self, max_spinners: int, slot: int) -> bool:
        """Register ``slot`` as a spinner unless ``max_spinners`` already spin (never more
        spinners than cores: a spinner would steal the CPU from the process that has the
        work).  The slot's flag lets the node undo it if the process dies spinning."""
        with self.mutex:
            n = self._u32(_SPINNERS_OFF)
            if n >= max_spinners:
                return False
            struct.pack_into("<I", self.mm, _SPINNERS_OFF, n + 1)
            struct.pack_into("<H", self.mm, self.slot_offset(slot) + _WAITING_OFF, 1)
            return True

    def stop_spinning(self, slot: int) -> None:
        with self.mutex:
            self._stop_waiting_locked(slot, _SPINNERS_OFF, 0)

    def _stop_waiting_locked(self, slot: int, counter_off: int, flag: int) -> None:
        off = self.slot_offset(slot) + _WAITING_OFF + 2 * flag
        if struct.unpack_from("<H", self.mm, off)[0]:
            struct.pack_into("<H", self.mm, off, 0)
            n = self._u32(counter_off)
            struct.pack_into("<I", self.mm, counter_off, max(n - 1, 0))

    def forget_waiting(self, slot: int) -> None:
        """A process died: take it off the spinner and sleeper counts if it was on them
        (else pushers would count on a dead spinner and wake nobody)."""
        with self.mutex:
            self._stop_waiting_locked(slot, _SPINNERS_OFF, 0)
            self._stop_waiting_locked(slot, _SLEEPERS_OFF, 1)

    def park_for_work(self, find_work, timeout: float, slot: int):
        """Sleep until work may be there: register as a sleeper and read the eventcount
        under the mutex (a full barrier), call ``find_work()`` once more, and sleep only if
        it found nothing and nobody pushed work or freed resources since.  Returns what
        ``find_work()`` returned."""
        with self.mutex:
            seq = self._u32(_WORK_SEQ_OFF)
            struct.pack_into("<I", self.mm, _SLEEPERS_OFF, self._u32(_SLEEPERS_OFF) + 1)
            struct.pack_into("<H", self.mm, self.slot_offset(slot) + _WAITING_OFF + 2, 1)
        try:
            found = find_work()
            if found is None and not self.shutting_down:
                futex_wait(self._work_seq_addr, seq, timeout)
            return found
        finally:
            with self.mutex:
                self._stop_waiting_locked(slot, _SLEEPERS_OFF, 1)

    # -- CPU tokens of idle workers (for available_resources) -------------------------

    def set_token_free(self, index: int, free: bool) -> None:
        struct.pack_into("<I", self.mm, self.slot_offset(index) + 8, int(free))

    def free_tokens(self) -> int:
        """Workers holding their CPU token unused (idle but awake): their CPUs are free."""
        return sum(struct.unpack_from("<I", self.mm, self.slot_offset(i) + 8)[0]
                   for i in range(1, self.active_slots))


class PinLedger:
    """The arena pins one process holds, mirrored into its slot so that the node can give
    them back when the process dies (a worker killed while its task read an argument would
    otherwise keep that block for ever).  A process-local index finds an entry in O(1); when
    the 256 entries are full, further pins go unrecorded (and leak only if the process dies
    holding them)."""

    def __init__(self, segment: "Segment", index: int) -> None:
        self.mm = segment.mm
        self.base = segment.slot_offset(index) + _LEDGER_OFF
        self.where: dict[int, list] = {}  # block -> [entry, count]
        self.free = list(range(LEDGER_ENTRIES - 1, -1, -1))
        self.mm[self.base:self.base + LEDGER_ENTRIES * _LEDGER.size] = bytes(
            LEDGER_ENTRIES * _LEDGER.size)

    def change(self, blk: int, delta: int) -> None:
        rec = self.where.get(blk)
        if rec is None:
            if delta < 0 or not self.free:
                return
            rec = self.where[blk] = [self.free.pop(), 0]
        rec[1] += delta
        if rec[1] <= 0:
            del self.where[blk]
            self.free.append(rec[0])
            _LEDGER.pack_into(self.mm, self.base + rec[0] * _LEDGER.size, 0, 0)
        else:
            _LEDGER.pack_into(self.mm, self.base + rec[0] * _LEDGER.size, blk, rec[1])
