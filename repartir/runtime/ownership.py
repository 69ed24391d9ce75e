"""Objects this process owns or borrows (a part of :class:`~.core.CoreClient`, whose state it
shares; ``docs/architecture.md``, "Object lifetime"): refs and the object table, values
stored inline or in the arena, pins and loans, answers to borrowers' requests, futures."""

from __future__ import annotations

import concurrent.futures
import logging
import pickle
from typing import Any

from ..errors import ObjectLostError
from ..ids import new_object_id
from ..serialization import Serialized, deserialize, deserialize_at, error_from_payload, serialize
from .protocol import MSG_OBJECT, MSG_RELEASE, encode
from .objectref import ObjectRef, capture_refs

_log = logging.getLogger("repartir")

class _Task:
    __slots__ = ("task_id", "return_ids", "fn_name", "spec", "deps", "pending", "held",
                 "record", "spec_block", "args_block", "attempt", "opts", "cancelled",
                 "target", "actor_id", "epoch", "stream")


_EMPTY_ARGS = ("i", serialize(((), {})).to_bytes())
_ERROR_KINDS = ("e", "x")  # locations that stand for an error (see value())
_HOLDS_REFS = "holds refs"  # in an object entry's held list: its value holds refs

__all__ = ["Ownership", "_Task"]


class Ownership:
    def owns(self, object_id: bytes) -> bool:
        return object_id in self.table

    def make_ref(self, object_id: bytes) -> ObjectRef:
        with self._lock:
            self.table[object_id][0] += 1
        return ObjectRef(object_id, self.slot, self, True)

    def note_borrowed(self, object_id: bytes, loc) -> None:
        """A borrowed ref to ``object_id`` was made in this process (``loc``: its location,
        ``None`` while unknown).  Counted, so that the entry goes with the last such ref."""
        self.borrow_counts[object_id] = self.borrow_counts.get(object_id, 0) + 1
        if loc is not None:
            self.borrowed[object_id] = loc

    def _drop_borrowed(self) -> None:
        counts = self.borrow_counts
        while self.dead_borrows:
            oid = self.dead_borrows.popleft()
            n = counts.get(oid, 0) - 1
            if n > 0:
                counts[oid] = n
                continue
            counts.pop(oid, None)
            self.borrowed.pop(oid, None)
            self.requested.discard(oid)
            off = self.borrow_holds.pop(oid, None)
            if off is not None:
                self.arena.let_go(off)
            owner = self.lent_from.pop(oid, None)
            if owner is not None:  # the loan ends with the last ref here
                self.post(owner, encode((MSG_RELEASE, oid)))

    def lend(self, object_id: bytes) -> bool:
        """A ref to ``object_id`` (owned here, pending) leaves in a result: hold one count
        for the receiver until it sends ``MSG_RELEASE``, so that the object, and this
        process's answer to requests for it, outlive the task's own refs (Ray's borrowers,
        reduced to one loan per result).  ``False`` when this process no longer owns it."""
        with self._lock:
            e = self.table.get(object_id)
            if e is None:
                return False
            e[0] += 1
            return True

    def _adopt(self, pins, first: bool) -> list:
        """The held list of an object entry made from a result's export pins: a marker that
        its value holds refs, the arena pins (on the ``first`` entry only: each is released
        once) and the loans, each counted as a borrow of this process until the entry is
        freed."""
        held: list = [_HOLDS_REFS]
        for pin in pins:
            if type(pin) is int:
                if first:
                    held.append(pin)
            else:
                owner, oid = pin
                self.note_borrowed(oid, None)
                self.lent_from[oid] = owner
                held.append(pin)
        return held

    def location_for_export(self, object_id: bytes):
        e = self.table.get(object_id)
        if e is not None:
            return e[1]
        return self.borrowed.get(object_id)

    def store(self, s: Serialized) -> tuple:
        """Where a serialized value goes: inline under the threshold, else the arena (a
        block owned by this process; a task's owner claims its results on arrival)."""
        if s.nbytes < self.config.inline_threshold:
            return ("i", s.to_bytes())
        arena = self.arena
        off = arena.allocate(s.nbytes, self.slot)
        s.write_into(arena.writable(off, s.nbytes))
        return ("a", off, s.nbytes, arena.generation(off))

    def claim_results(self, locs: list) -> bool:
        """Take ownership of the arena blocks of a result message; returns False, having
        released those it took, when one is gone (its worker died and the node released
        what it owned before the message was read: the result is lost)."""
        taken = []
        for loc in locs:
            if loc[0] == "a":
                if not self.arena.claim(loc[1], loc[3], self.slot):
                    for off in taken:
                        self.arena.release(off)
                    return False
                taken.append(loc[1])
        return True

    def drop_results(self, locs: list) -> None:
        """Free the arena blocks of a result nobody wants (a duplicate, a cancelled task)."""
        for loc in locs:
            if loc[0] == "a" and self.arena.claim(loc[1], loc[3], self.slot):
                self.arena.release(loc[1])

    def put(self, value: Any) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("put() of an ObjectRef is not allowed: pass the ref itself instead")
        if self.dead_refs:  # free what was dropped first: its warm block is reused
            with self._lock:
                self._process_dead()
        with capture_refs() as nested:
            s = serialize(value, "the value passed to put()")
        loc = self.store(s)
        oid = new_object_id()
        with self._lock:
            self.table[oid] = [0, loc, None, nested or None]
            return self.make_ref(oid)

    def value(self, loc) -> Any:
        kind = loc[0]
        if kind == "i":
            return deserialize(memoryview(loc[1]))
        if kind == "a":
            value, anchor = deserialize_at(self.arena, loc[1], loc[2])
            self.arena.anchor(loc[1], anchor)
            return value
        if kind == "e":  # the task raised
            raise error_from_payload(loc[1])
        if kind == "x":  # the runtime stopped the task (crash, cancel, timeout)
            raise pickle.loads(loc[1])
        raise ObjectLostError(f"object location {loc!r} is not understood")

    def _keep_pins(self, return_ids: list, pins: list | None) -> None:
        """Export pins of refs inside a result stay until that result is freed.  ``pins`` is
        ``None`` when the result holds no refs; otherwise every return entry is marked as
        holding refs (see :meth:`_may_wait`), and the pins stay with the first one alive."""
        if pins is None:
            return
        kept = False
        for rid in return_ids:
            e = self.table.get(rid)
            if e is not None:
                e[3] = (e[3] or []) + self._adopt(pins, not kept)
                kept = True
        if not kept:
            self._unpin_all(pins)

    def _unpin_all(self, pins) -> None:
        """Give back the export pins and loans of a result nobody keeps."""
        for pin in pins or ():
            if type(pin) is int:
                self.arena.unpin(pin)
            else:
                self.post(pin[0], encode((MSG_RELEASE, pin[1])))

    def _reply(self, slot: int, object_id: bytes, loc) -> None:
        self.post(slot, encode((MSG_OBJECT, object_id, loc)))

    def _process_dead(self) -> None:
        table, arena = self.table, self.arena
        while self.dead_refs:
            oid = self.dead_refs.popleft()
            e = table.get(oid)
            if e is None:
                continue
            e[0] -= 1
            if e[0] <= 0:
                del table[oid]
                if e[2]:  # borrowers wait for a value that will never come: tell them
                    lost = ("x", pickle.dumps(ObjectLostError(
                        f"object {oid.hex()} was freed by its owner (slot {self.slot}) while "
                        f"still pending: no ref to it was left there"), 5))
                    for s in e[2]:
                        self._reply(s, oid, lost)
                loc = e[1]
                if loc is not None and loc[0] == "a":
                    arena.release(loc[1])
                if e[3]:  # refs held by the value, export pins and loans of refs inside it
                    for x in e[3]:
                        if type(x) is int:
                            arena.unpin(x)
                        elif type(x) is tuple:
                            self.dead_borrows.append(x[1])

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
