"""A process's inbox: a multi-producer, single-consumer byte ring in shared memory.

Completions of the tasks a process owns (and, later, other messages for it) arrive here.
Producers serialise among themselves with the ring's robust mutex; the one consumer (the
owning process, one thread at a time) reads without it: it loads ``tail``, reads the
records, then stores ``head``.  On x86-64 (total store order) a producer's record bytes are
visible before the ``tail`` that publishes them, and CPython performs each ``pack_into`` as
one call, so no further fence is needed on that side.

Parking is an *eventcount*: a consumer that found nothing registers as a waiter and reads the
sequence word under the mutex (a full barrier -- this is Dekker's handshake), re-checks the
ring, then ``futex_wait``s on the word; a producer that sees waiters bumps the word and wakes
them after publishing.  A lost wake-up is impossible; the wait also has a timeout.

Layout at ``offset``::

    mutex (64 B) | head u64 | tail u64 | seq u32 | waiters u32 | pad to 128 | data (size B)

Records are ``u32 length`` + payload, padded to 8 bytes; a length of ``0xFFFFFFFF`` marks a
jump back to the start of the data area.
"""

from __future__ import annotations

import struct

from ..sync import RobustMutex, address_of, futex_wait, futex_wake

__all__ = ["Inbox", "inbox_bytes"]

_HT = struct.Struct("<QQ")
_SW = struct.Struct("<II")
_LEN = struct.Struct("<I")
_WRAP = 0xFFFFFFFF
_HDR = 128


def inbox_bytes(size: int) -> int:
    return _HDR + size


class Inbox:
    __slots__ = ("mm", "offset", "size", "mutex", "_data", "_seq_addr")

    def __init__(self, mm, offset: int, size: int, create: bool = False) -> None:
        self.mm = mm
        self.offset = offset
        self.size = size
        self.mutex = RobustMutex(address_of(mm, offset))
        self._data = offset + _HDR
        self._seq_addr = address_of(mm, offset + 80)
        if create:
            self.mutex.initialize()
            _HT.pack_into(mm, offset + 64, 0, 0)
            _SW.pack_into(mm, offset + 80, 0, 0)

    @property
    def max_message(self) -> int:
        return self.size // 4

    def put(self, message: bytes) -> bool:
        """Append a message; ``False`` when the ring has no room now (retry later)."""
        n = len(message)
        if n > self.max_message:
            raise ValueError(f"message of {n} bytes exceeds the inbox limit {self.max_message}")
        need = (4 + n + 7) & ~7
        mm, size = self.mm, self.size
        wake = False
        with self.mutex:
            head, tail = _HT.unpack_from(mm, self.offset + 64)
            pos = tail % size
            pad = size - pos if pos + need > size else 0
            if size - (tail - head) < pad + need:
                return False
            if pad:
                _LEN.pack_into(mm, self._data + pos, _WRAP)
                tail += pad
                pos = 0
            at = self._data + pos
            mm[at + 4:at + 4 + n] = message
            _LEN.pack_into(mm, at, n)
            struct.pack_into("<Q", mm, self.offset + 72, tail + need)
            seq, waiters = _SW.unpack_from(mm, self.offset + 80)
            if waiters:
                struct.pack_into("<I", mm, self.offset + 80, (seq + 1) & 0xFFFFFFFF)
                wake = True
        if wake:
            futex_wake(self._seq_addr, 1 << 30)
        return True

    def pending(self) -> bool:
        head, tail = _HT.unpack_from(self.mm, self.offset + 64)
        return tail != head

    def drain(self, limit: int = 1 << 30) -> list[bytes]:
        """Take up to ``limit`` messages, oldest first.  One consumer thread at a time."""
        mm, size, data = self.mm, self.size, self._data
        head, tail = _HT.unpack_from(mm, self.offset + 64)
        out = []
        while head < tail and len(out) < limit:
            pos = head % size
            n = _LEN.unpack_from(mm, data + pos)[0]
            if n == _WRAP:
                head += size - pos
                continue
            at = data + pos + 4
            out.append(mm[at:at + n])
            head += (4 + n + 7) & ~7
        struct.pack_into("<Q", mm, self.offset + 64, head)
        return out

    def park(self, timeout: float) -> None:
        """Sleep until a message arrives or ``timeout`` seconds pass."""
        mm, off = self.mm, self.offset + 80
        with self.mutex:
            seq, waiters = _SW.unpack_from(mm, off)
            _SW.pack_into(mm, off, seq, waiters + 1)
        try:
            if not self.pending():
                futex_wait(self._seq_addr, seq, timeout)
        finally:
            with self.mutex:
                seq2, waiters = _SW.unpack_from(mm, off)
                _SW.pack_into(mm, off, seq2, max(waiters - 1, 0))
