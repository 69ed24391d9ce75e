"""Objects this process owns or borrows (a part of :class:`~.core.CoreClient`, whose state it
shares; ``docs/architecture.md``, "Object lifetime"): refs and the object table, values
stored inline or in the arena, pins and loans, answers to borrowers' requests, futures."""

from __future__ import annotations

import concurrent.futures
import logging
import pickle
from typing import Any

from ..errors import ObjectLostError, ObjectStoreFullError
from ..ids import new_object_id
from ..serialization import Serialized, deserialize, deserialize_at, error_from_payload, serialize
from ..store.spill import read_spill_file
from .object_table import Resolved
from .protocol import ARENA, ERROR, FAILED, INLINE, in_arena, inline
from .objectref import ObjectRef, capture_refs

_log = logging.getLogger("repartir")

_EMPTY_ARGS = inline(serialize(((), {})).to_bytes())

__all__ = ["Ownership"]


class Ownership:
    def owns(self, object_id: bytes) -> bool:
        return object_id in self.table

    def make_ref(self, object_id: bytes) -> ObjectRef:
        with self._lock:
            self.objects.incref(object_id)
        return ObjectRef(object_id, self.slot, self, True)

    def note_borrowed(self, object_id: bytes, loc) -> None:
        """A borrowed ref to ``object_id`` was made in this process (``loc``: its location,
        ``None`` while unknown)."""
        self.objects.borrow(object_id, loc)

    def lend(self, object_id: bytes) -> bool:
        """A ref to ``object_id`` (owned here, pending) leaves in a result: hold one count
        for the receiver until it sends ``MSG_RELEASE``, so that the object, and this
        process's answer to requests for it, outlive the task's own refs (Ray's borrowers,
        reduced to one loan per result).  ``False`` when this process no longer owns it."""
        with self._lock:
            return self.objects.incref(object_id)

    def location_for_export(self, object_id: bytes):
        e = self.table.get(object_id)
        if e is not None:
            return e[1]
        return self.borrowed.get(object_id)

    def store(self, s: Serialized) -> tuple:
        """Where a serialized value goes: inline under the threshold, else the arena (a
        block owned by this process; a task's owner claims its results on arrival).  When
        the arena is full even after spilling this process's unused objects, the value
        goes to a spill file at once (its block a stub: the location is the same kind).

        Raises:
            ObjectStoreFullError: neither the arena nor the spill directory has room."""
        if s.nbytes < self.config.inline_threshold:
            return inline(s.to_bytes())
        arena = self.arena
        try:
            off = arena.allocate(s.nbytes, self.slot)
        except ObjectStoreFullError:
            if arena.spill_dir is None:
                raise
            off = arena.allocate_spilled(s.nbytes, self.slot, s.chunks())
            return in_arena(off, s.nbytes, arena.generation(off))
        s.write_into(arena.writable(off, s.nbytes))
        return in_arena(off, s.nbytes, arena.generation(off))

    def claim_results(self, locs: list) -> bool:
        """Take ownership of the arena blocks of a result message; returns False, having
        released those it took, when one is gone (its worker died and the node released
        what it owned before the message was read: the result is lost)."""
        taken = []
        for loc in locs:
            if loc[0] == ARENA:
                if not self.arena.claim(loc[1], loc[3], self.slot):
                    for off in taken:
                        self.arena.release(off)
                    return False
                taken.append(loc[1])
        return True

    def drop_results(self, locs: list) -> None:
        """Free the arena blocks of a result nobody wants (a duplicate, a cancelled task)."""
        for loc in locs:
            if loc[0] == ARENA and self.arena.claim(loc[1], loc[3], self.slot):
                self.arena.release(loc[1])

    def put(self, value: Any) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("put() of an ObjectRef is not allowed: pass the ref itself instead")
        if self.dead_refs:  # free what was dropped first: its warm block is reused
            with self._lock:
                self._process_dead()
        with capture_refs() as nested:
            try:
                s = serialize(value, "the value passed to put()")
            except BaseException:
                self.land_unsent(nested)  # (actor handles pickled before the failure)
                raise
        loc = self.store(s)
        oid = new_object_id()
        with self._lock:
            self.objects.own(oid, loc, 0, nested or None)
            return self.make_ref(oid)

    def value(self, loc) -> Any:
        kind = loc[0]
        if kind == INLINE:
            return deserialize(memoryview(loc[1]))
        if kind == ARENA:  # held while it is read: its owner may spill it, but not while held
            arena, off = self.arena, loc[1]
            arena.hold(off)
            try:
                if arena.spilled(off):  # restored from its spill file
                    return read_spill_file(arena.spill_file(off), loc[2])
                value, anchor = deserialize_at(arena, off, loc[2])
                arena.anchor(off, anchor)
                return value
            finally:
                arena.let_go(off)
        if kind == ERROR:  # the task raised
            raise error_from_payload(loc[1])
        if kind == FAILED:  # the runtime stopped the task (crash, cancel, timeout)
            raise pickle.loads(loc[1])
        raise ObjectLostError(f"object location {loc!r} is not understood")

    def _process_dead(self) -> None:
        """Refs that died (their ``__del__`` only queued them) leave the table."""
        self._drain_dead(self.dead_refs, self.objects.decref)

    def _drop_borrowed(self) -> None:
        """Borrowed refs that died end their borrows (and loans, with the last one)."""
        self._drain_dead(self.dead_borrows, self.objects.unborrow)

    def _drain_dead(self, dead, event) -> None:
        """Feed each queued object id to the object table's ``event``; carry out what it
        returns."""
        carry_out = self._carry_out
        while dead:
            instrs = event(dead.popleft())
            if instrs:
                carry_out(instrs)

    def _resolved(self, instr: Resolved) -> None:
        futures = self.futures.pop(instr.object_id, None)
        if futures:
            self._resolve(futures, instr.loc)

    def future(self, ref: ObjectRef):
        """A ``concurrent.futures.Future`` that gets ``ref``'s value (or error) once ready;
        resolved by whichever thread polls (the driver's pump thread at the latest)."""

        f: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            loc = self._loc_of(ref)
            if loc is None:
                self.futures.setdefault(ref._id, []).append(f)
                f._repartir_ref = ref  # keeps the object alive until resolved
                return f
        self._resolve([f], loc)
        return f

    def _resolve(self, futures: list, loc) -> None:
        try:
            value = self.value(loc)
        except BaseException as exc:  # the task's error goes into the future
            for f in futures:
                if not f.done():
                    f.set_exception(exc)
            return
        for f in futures:
            if not f.done():
                f.set_result(value)
