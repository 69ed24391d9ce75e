"""The objects one process owns or borrows, as pure state: events in, instructions out
(``docs/architecture.md``, "Object lifetime" and "Runtime state machines").  No shared
memory, no messages, no locks: the core worker (``ownership.py``, ``completions.py``) feeds
it what happened and carries out what it returns.  Tested table-style, without processes,
in ``tests/runtime/test_object_table.py``.

Three kinds of object, one verb pair each:

* **owned** (``own``/``decref``): created here by ``put``, a task's return or a stream item.
  An entry is ``[count, location, waiters, held]``: refs alive (in this process, plus one
  per loan), the location once known (``None`` while its task runs), the slots of
  borrowers that asked before it was ready, and what its value holds (export pins of
  arena blocks, loans of objects owned elsewhere, the :data:`HOLDS_REFS` marker).
* **borrowed** (``borrow``/``unborrow``): a ref to an object owned by another process.
  Counted per object; the location is learned from a result, a task record, or the owner's
  answer (``arrived``); the last ref gives back the arena hold and ends the loan.
* **requested**: borrowed objects whose location this process has asked its owner for.

Locations are those of ``protocol.py`` (``INLINE``, ``ARENA``, ``ERROR``, ``FAILED``).
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import ObjectLostError
from .protocol import ARENA, failed

__all__ = ["ObjectTable", "Reply", "FreeBlock", "Unpin", "LetGo", "ReleaseLoan", "Resolved",
           "HOLDS_REFS"]

HOLDS_REFS = "holds refs"  # in an owned entry's held list: its value holds refs


# -- instructions: what the core worker does for the table ----------------------------------

class Reply(NamedTuple):
    """Send ``loc``, the location of ``object_id``, to the borrower at ``slot``."""
    slot: int
    object_id: bytes
    loc: tuple


class FreeBlock(NamedTuple):
    """Release the arena block at ``offset`` (this process owns it)."""
    offset: int


class Unpin(NamedTuple):
    """Give back an export pin on the arena block at ``offset``."""
    offset: int


class LetGo(NamedTuple):
    """Drop this process's hold on the arena block at ``offset`` (a borrowed object's)."""
    offset: int


class ReleaseLoan(NamedTuple):
    """Tell ``owner`` that the loan of ``object_id`` to this process has ended."""
    owner: int
    object_id: bytes


class Resolved(NamedTuple):
    """``object_id`` now has location ``loc``: resolve the futures waiting for it."""
    object_id: bytes
    loc: tuple


class ObjectTable:
    """Owned, borrowed and requested objects of the process at ``slot``."""

    __slots__ = ("slot", "owned", "borrowed", "borrow_counts", "borrow_holds", "requested",
                 "lent_from")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.owned: dict[bytes, list] = {}  # object id -> [count, loc, waiters, held]
        self.borrowed: dict[bytes, tuple] = {}  # object id -> location, once known
        self.borrow_counts: dict[bytes, int] = {}  # borrowed refs alive here, per object
        self.borrow_holds: dict[bytes, int] = {}  # object id -> arena offset held here
        self.requested: set[bytes] = set()  # asked the owner for the location
        self.lent_from: dict[bytes, int] = {}  # object id -> slot of the owner that lent it

    # -- reading ---------------------------------------------------------------------------

    def location(self, object_id: bytes):
        """The location of an owned or borrowed object, ``None`` while unknown."""
        e = self.owned.get(object_id)
        if e is not None:
            return e[1]
        return self.borrowed.get(object_id)

    def owns(self, object_id: bytes) -> bool:
        return object_id in self.owned

    def holds_refs(self, object_id: bytes) -> bool:
        """Whether the owned object's value holds refs (or is not owned here)."""
        e = self.owned.get(object_id)
        return e is None or bool(e[3])

    def should_request(self, object_id: bytes) -> bool:
        """A borrowed object's location is unknown and not yet asked for: ask (once)."""
        if object_id in self.requested or object_id in self.borrowed:
            return False
        self.requested.add(object_id)
        return True

    # -- owned objects ---------------------------------------------------------------------

    def own(self, object_id: bytes, loc=None, count: int = 0, held: list | None = None) -> None:
        """A new owned object (``loc`` ``None``: its task has not returned yet)."""
        self.owned[object_id] = [count, loc, None, held]

    def incref(self, object_id: bytes) -> bool:
        """One more ref (or loan) of an owned object; ``False`` when no longer owned."""
        e = self.owned.get(object_id)
        if e is None:
            return False
        e[0] += 1
        return True

    def decref(self, object_id: bytes) -> list:
        """A ref (or a loan) of an owned object ended; the last one frees the object: its
        block, the pins and loans of refs in its value, and borrowers still waiting for it
        learn that it is lost."""
        e = self.owned.get(object_id)
        if e is None:
            return []
        e[0] -= 1
        if e[0] > 0:
            return []
        del self.owned[object_id]
        out: list = []
        if e[2]:  # borrowers wait for a value that will never come
            lost = failed(ObjectLostError(
                f"object {object_id.hex()} was freed by its owner (slot {self.slot}) while "
                f"still pending: no ref to it was left there"))
            out.extend(Reply(s, object_id, lost) for s in e[2])
        loc = e[1]
        if loc is not None and loc[0] == ARENA:
            out.append(FreeBlock(loc[1]))
        for x in e[3] or ():
            if type(x) is int:
                out.append(Unpin(x))
            elif type(x) is tuple:
                out.extend(self.unborrow(x[1]))
        return out

    def resolve(self, object_id: bytes, loc) -> list:
        """An owned object's task returned ``loc``: borrowers that asked get it; a result
        nobody holds a ref to any more is freed at once."""
        e = self.owned.get(object_id)
        if e is None:
            return [FreeBlock(loc[1])] if loc[0] == ARENA else []
        e[1] = loc
        waiters = e[2]
        if not waiters:
            return []
        e[2] = None
        return [Reply(s, object_id, loc) for s in waiters]

    def request(self, object_id: bytes, slot: int) -> Reply | None:
        """The borrower at ``slot`` asks for the location: the answer now, or ``None`` (it
        is answered when the object is resolved, or freed)."""
        e = self.owned.get(object_id)
        if e is None:
            return Reply(slot, object_id, failed(ObjectLostError(
                f"object {object_id.hex()} was freed by its owner (slot {self.slot}) before "
                f"this process asked for its value: no ref to it was left there")))
        if e[1] is not None:
            return Reply(slot, object_id, e[1])
        if e[2] is None:
            e[2] = []
        e[2].append(slot)
        return None

    def adopt(self, pins, first: bool) -> list:
        """The held list of an owned object made from a result's export pins: the
        :data:`HOLDS_REFS` marker, the arena pins (on the ``first`` entry only: each is
        given back once) and the loans, each counted as a borrow here until it is freed."""
        held: list = [HOLDS_REFS]
        for pin in pins:
            if type(pin) is int:
                if first:
                    held.append(pin)
            else:
                owner, oid = pin
                self.borrow(oid, None)
                self.lent_from[oid] = owner
                held.append(pin)
        return held

    def keep_pins(self, return_ids, pins) -> list:
        """A task's result holds refs (``pins``: its export pins and loans, ``None`` when
        it holds none): every return entry is marked as holding refs, and the pins stay
        with the first one alive; given back at once when none is."""
        if pins is None:
            return []
        kept = False
        for rid in return_ids:
            e = self.owned.get(rid)
            if e is not None:
                e[3] = (e[3] or []) + self.adopt(pins, not kept)
                kept = True
        return [] if kept else unpin_all(pins)

    # -- borrowed objects ------------------------------------------------------------------

    def borrow(self, object_id: bytes, loc) -> None:
        """A borrowed ref to ``object_id`` was made here (``loc``: its location, ``None``
        while unknown)."""
        self.borrow_counts[object_id] = self.borrow_counts.get(object_id, 0) + 1
        if loc is not None:
            self.borrowed[object_id] = loc

    def unborrow(self, object_id: bytes) -> list:
        """A borrowed ref died; the last one lets go of the block and ends the loan."""
        counts = self.borrow_counts
        n = counts.get(object_id, 0) - 1
        if n > 0:
            counts[object_id] = n
            return []
        counts.pop(object_id, None)
        self.borrowed.pop(object_id, None)
        self.requested.discard(object_id)
        out: list = []
        off = self.borrow_holds.pop(object_id, None)
        if off is not None:
            out.append(LetGo(off))
        owner = self.lent_from.pop(object_id, None)
        if owner is not None:
            out.append(ReleaseLoan(owner, object_id))
        return out

    def wants(self, object_id: bytes) -> bool:
        """Whether a borrowed ref to ``object_id`` is still alive here."""
        return object_id in self.borrow_counts

    def arrived(self, object_id: bytes, loc, hold: int | None) -> list:
        """The owner answered with ``loc``; ``hold`` is the arena offset this process now
        holds for it (``None``: inline, an error, or the block was gone -- ``loc`` then
        says so)."""
        if object_id not in self.borrow_counts:
            return [LetGo(hold)] if hold is not None else []
        if hold is not None:
            self.borrow_holds[object_id] = hold
        self.borrowed[object_id] = loc
        return [Resolved(object_id, loc)]

    def owner_died(self, slot: int) -> list:
        """The process at ``slot`` died: objects it lent here whose value was not known
        are lost."""
        out = []
        for oid, owner in list(self.lent_from.items()):
            if owner == slot and self.borrowed.get(oid) is None:
                loc = failed(ObjectLostError(
                    f"object {oid.hex()} was lost: the process that owned it (slot {slot}) "
                    f"died before it was ready. Its task returned the ref pending; get() it "
                    f"inside that task to keep the value."))
                self.borrowed[oid] = loc
                out.append(Resolved(oid, loc))
        return out


def unpin_all(pins) -> list:
    """Give back the export pins and loans of a result nobody keeps."""
    return [Unpin(p) if type(p) is int else ReleaseLoan(p[0], p[1]) for p in pins or ()]
