"""The arena's byte layout: the header of the arena file and the header of each block (offsets
and ``struct`` formats; ``docs/architecture.md``, "Shared-memory layouts"), and the statistics
snapshot.  Read by :mod:`repartir.store.arena` only, and by the layout tests."""

from __future__ import annotations

import dataclasses
import struct

__all__ = ["ArenaStatistics", "HEADER_SIZE", "BLOCK_HEADER"]

HEADER_SIZE = 4096
BLOCK_HEADER = 64
_MAGIC = 0x7265_7061_7274_6972  # "repartir"
_BLOCK_MAGIC = 0xB10C
_USED, _FREE = 1, 2
_SPLIT_MIN = 4096

# arena header fields
_H = struct.Struct("<QQQQQQQQ")  # magic capacity brk free_head used_bytes num_blocks allocs frees
_MUTEX_OFF = 128
_FALLOC_OFF = 72  # header: bytes of the file known to be allocated (fallocate high-water)
_SPILLED = struct.Struct("<QQ")  # header at 80: live spilled objects, their payload bytes
_SPILLED_OFF = 80
_STUB = struct.Struct("<Q")  # block header at 32 (next free of a free block): 1 if spilled
# With a spill directory, a block of at least _SLACK_FROM bytes is carved _SLACK bytes larger
# where there is room: spilling it leaves a 64-byte stub in front of the freed rest, which
# then still holds an object of the same size (32 times over)
_SLACK_FROM, _SLACK = 128 * 1024, 2048
# block header: magic state size prev_size pins released next_free prev_free payload_len
_B = struct.Struct("<IIQQIIQQQ")
_B_PINS = struct.Struct("<II")  # pins, released at offset 24
_OWNER = struct.Struct("<I")  # owner slot at offset 56
_TAIL = struct.Struct("<QII")  # payload_len, owner slot, generation at offset 48


@dataclasses.dataclass(frozen=True)
class ArenaStatistics:
    """A snapshot of the arena.  Sizes are bytes.

    Attributes:
        capacity: bytes available to blocks (the file size less the header).
        used_bytes: bytes held by live blocks, headers included.
        num_blocks: live blocks.
        wilderness: bytes never handed out yet (above the high-water mark).
        allocations, frees: counts since the arena was created.
        spilled_objects: live objects whose payload is on disk (their blocks are stubs of
            64 bytes, counted in ``used_bytes`` and ``num_blocks``).
        spilled_bytes: payload bytes of those objects, on disk.
    """

    capacity: int
    used_bytes: int
    num_blocks: int
    wilderness: int
    allocations: int
    frees: int
    spilled_objects: int = 0
    spilled_bytes: int = 0


def _align(n: int) -> int:
    return (n + 63) & ~63
