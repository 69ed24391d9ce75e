"""``ObjectRef``: a future for an object in the store.

The process that creates a ref (by ``put`` or by submitting the task that computes it) is the
object's **owner** and counts its refs: each ``ObjectRef`` instance in the owner holds one
count, dropped when the instance is garbage-collected.  A ref pickled into another process
(nested in a task's argument, say) arrives there as a *borrowed* ref that carries its owner's
slot and, when the value was ready, its location, so ``get`` on it needs no round trip.

Lifetimes across processes: a borrowed ref to an object in the arena **pins** its block (the
arena frees a block only when its owner released it and no pin is left), so the object
outlives its owner's refs while a borrower holds it.  While a ref is in flight -- pickled,
not yet unpickled -- something else holds it: a task's arguments are held by the submitter
until the task completes, and a task's result that contains refs carries *export pins*,
released when the owner frees that result.  A result may carry a still-pending ref that its
process owns, as in Ray: the returning process *lends* the object to the result's receiver
(``CoreClient.lend``: one count held until the receiver's last ref to it is gone and it sends
``MSG_RELEASE``), answers the receiver's request once the object is ready, and the returning
task does not wait.  When the lender dies first, ``get`` raises ``ObjectLostError``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from .protocol import ARENA
from . import context

__all__ = ["ObjectRef", "capture_refs", "capturing"]

_capture = threading.local()


class ObjectRef:
    """A reference to an object that is, or will be, in the store.

    Hashable and comparable by id.  ``repartir.get(ref)`` waits for the value.
    """

    __slots__ = ("_id", "_owner_slot", "_client", "_owned", "_pin", "__weakref__")

    def __init__(self, object_id: bytes, owner_slot: int, client: Any, owned: bool,
                 pin: int | None = None) -> None:
        self._id = object_id
        self._owner_slot = owner_slot
        self._client = client
        self._owned = owned
        self._pin = pin  # arena offset this borrowed ref keeps alive

    def binary(self) -> bytes:
        """The 16-byte object id."""
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def future(self):
        """A ``concurrent.futures.Future`` for the value (or the error)."""
        client = self._client if self._client is not None else context.client_or_start()
        return client.future(self)

    def __await__(self):
        """``await ref`` inside asyncio code waits for the value without blocking the loop."""
        return asyncio.wrap_future(self.future()).__await__()

    def __del__(self) -> None:
        try:
            if self._owned:
                self._client.dead_refs.append(self._id)
            elif self._client is not None:  # handled later by poll(): no lock in __del__
                if self._pin is not None:
                    self._client.dead_pins.append(self._pin)
                self._client.dead_borrows.append(self._id)
        except AttributeError:  # interpreter shutdown
            pass

    def __reduce__(self):
        client = self._client
        loc = client.location_for_export(self._id) if client is not None else None
        refs = getattr(_capture, "refs", None)
        if refs is not None:
            refs.append(self)  # the submitting task keeps the object alive while it runs
        return (_rebuild, (self._id, self._owner_slot, loc))


def _rebuild(object_id: bytes, owner_slot: int, loc) -> ObjectRef:
    client = context.current_client()
    if client is not None and client.slot == owner_slot and client.owns(object_id):
        return client.make_ref(object_id)
    pin = None
    if client is not None:
        client.note_borrowed(object_id, loc)
    if client is not None and loc is not None:
        if loc[0] == ARENA:  # a borrower keeps the block alive while it holds the ref
            client.arena.hold(loc[1])
            pin = loc[1]
    return ObjectRef(object_id, owner_slot, client, False, pin)


def capturing() -> list | None:
    """The list of the :class:`capture_refs` open in this thread, or ``None``."""
    return getattr(_capture, "refs", None)


class capture_refs:
    """Context manager collecting every ObjectRef pickled in this thread meanwhile (and every
    actor handle, as an ``actor_life.SentHandle``: what captures it keeps it alive)."""

    def __enter__(self) -> list:
        self.prev = getattr(_capture, "refs", None)
        _capture.refs = []
        return _capture.refs

    def __exit__(self, *exc) -> None:
        _capture.refs = self.prev
