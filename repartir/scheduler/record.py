"""Task records: the fixed-size header every queued task carries, readable without
unpickling anything (so a thief can check resources and priority, and cancellation or crash
handling can find a task by id).

``kind u8 | priority u8 | flags u8 | ncustom u8 | owner u16 | task id 16 B |``
``cpu u32 | gpu u32 | timeout f32 | custom index 4 x u8 | custom amount 4 x u32 | memory u64``

Amounts are in milli-units (``num_cpus=0.5`` is 500; ``memory`` in milli-bytes, so that every
entry of a resource vector has the same unit).  ``flags & DEFAULT_DEMAND`` marks the
common case, one CPU and nothing else.  ``flags & HOLDS_REFS`` marks a task whose arguments hold
refs to objects that were pending when it was queued (or that may hold such refs themselves):
such a task may wait on any task, so a worker never runs it on top of a task blocked in ``get``
(see ``docs/architecture.md``, "Nested tasks").  After the header comes the spec (pickled), or, for
``kind == SPEC_IN_ARENA``, its ``(offset, nbytes)`` in the arena.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["HEADER", "SPEC_INLINE", "SPEC_IN_ARENA", "DEFAULT_DEMAND", "HOLDS_REFS", "NRES",
           "HIGH", "NORMAL", "LOW", "PRIORITIES", "pack_header", "header_parts", "demand_of",
           "holds_refs", "Header", "header_of", "task_id_of", "owner_of",
           "DEFAULT_VECTOR", "MAX_CUSTOM", "MEMORY", "FIRST_CUSTOM"]

HEADER = struct.Struct("<BBBBH16sIIf4B4IQ")
SPEC_INLINE, SPEC_IN_ARENA = 0, 1
DEFAULT_DEMAND = 1
HOLDS_REFS = 2
FLAGS_OFFSET = 2  # byte offset of the flags in a record
OWNER_OFFSET = 4  # of the owner's slot (u16)
TASK_ID_OFFSET = 6  # of the task id (16 bytes)
_OWNER = struct.Struct("<H")
NRES = 9  # CPU, GPU, memory, and up to 6 custom resources per node
MEMORY = 2  # the index of memory in a resource vector
FIRST_CUSTOM = 3  # custom resources come after CPU, GPU and memory
MAX_CUSTOM = 4  # custom resources one task may ask for
HIGH, NORMAL, LOW = 0, 1, 2
PRIORITIES = (HIGH, NORMAL, LOW)
DEFAULT_VECTOR = (1000,) + (0,) * (NRES - 1)


def pack_header(kind: int, priority: int, owner: int, task_id: bytes,
                demand: tuple[int, ...], timeout: float, holds_refs: bool = False) -> bytes:
    """Pack a header; ``demand`` is a vector of ``NRES`` milli-amounts."""
    custom = [(i, a) for i, a in enumerate(demand[FIRST_CUSTOM:], start=FIRST_CUSTOM) if a]
    if len(custom) > MAX_CUSTOM:
        raise ValueError(f"a task may ask for at most {MAX_CUSTOM} custom resources")
    flags = DEFAULT_DEMAND if tuple(demand) == DEFAULT_VECTOR else 0
    if holds_refs:
        flags |= HOLDS_REFS
    idx = [i for i, _ in custom] + [0] * (MAX_CUSTOM - len(custom))
    amt = [a for _, a in custom] + [0] * (MAX_CUSTOM - len(custom))
    return HEADER.pack(kind, priority, flags, len(custom), owner, task_id, demand[0],
                       demand[1], timeout, *idx, *amt, demand[MEMORY])


def header_parts(kind: int, priority: int, owner: int, demand: tuple[int, ...],
                 timeout: float, holds_refs: bool = False) -> tuple[bytes, bytes]:
    """The bytes before and after the task id in a header: ``pre + task_id + post`` equals
    :func:`pack_header` with the same arguments (cheap to build per task)."""
    full = pack_header(kind, priority, owner, bytes(16), demand, timeout, holds_refs)
    return full[:TASK_ID_OFFSET], full[TASK_ID_OFFSET + 16:]


class Header(NamedTuple):
    """The fields of :data:`HEADER`, in order."""

    kind: int  # SPEC_INLINE or SPEC_IN_ARENA
    priority: int
    flags: int  # DEFAULT_DEMAND, HOLDS_REFS
    ncustom: int  # custom resources asked for (<= MAX_CUSTOM)
    owner: int  # slot of the submitting process
    task_id: bytes
    cpu: int  # milli-CPUs
    gpu: int  # milli-GPUs
    timeout: float  # seconds, 0: none
    custom_index_0: int
    custom_index_1: int
    custom_index_2: int
    custom_index_3: int
    custom_amount_0: int
    custom_amount_1: int
    custom_amount_2: int
    custom_amount_3: int
    memory: int  # milli-bytes


_new = tuple.__new__


def header_of(rec) -> Header:
    """The header of a record (a buffer of at least ``HEADER.size`` bytes), by name."""
    return _new(Header, HEADER.unpack_from(rec, 0))


def task_id_of(rec) -> bytes:
    """The task id of a record."""
    return bytes(rec[TASK_ID_OFFSET:TASK_ID_OFFSET + 16])


def owner_of(rec) -> int:
    """The slot of the process that submitted a record's task."""
    return _OWNER.unpack_from(rec, OWNER_OFFSET)[0]


def holds_refs(rec) -> bool:
    """Whether the record's task may wait on tasks it did not submit (see ``HOLDS_REFS``)."""
    return bool(rec[FLAGS_OFFSET] & HOLDS_REFS)


def demand_of(rec) -> tuple[int, ...]:
    """The resource vector a record asks for."""
    h = HEADER.unpack_from(rec, 0)
    if h[2] & DEFAULT_DEMAND:  # (by index: this runs for every task a worker takes)
        return DEFAULT_VECTOR
    v = [0] * NRES
    v[0], v[1], v[MEMORY] = h[6], h[7], h[17]  # cpu, gpu, memory
    for k in range(h[3]):  # custom_index_k, custom_amount_k
        v[h[9 + k]] += h[13 + k]
    return tuple(v)
