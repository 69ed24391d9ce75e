"""The node's count of actor handles (``docs/architecture.md``, "Actors", "Handles"): a pure
state machine, as the task manager and the object table are -- it takes events and returns
instructions, and touches no shared memory, sends no message, takes no lock (the node
serializes the events under its lock).

Ray counts an actor's handles across processes and ends the actor when the last one is gone;
so does this table, simplified.  Per actor it keeps

* the **holders**: processes (``(slot, pid)``) holding handles, each with the number of
  ``ADD`` events less ``REMOVE`` events it sent (a process sends ``ADD`` when its first handle
  of the actor appears, ``REMOVE`` when its last one dies; a count above 1 only happens when a
  new handle appeared before the ``REMOVE`` of the old ones was sent), and
* the **tokens in flight**: each pickled handle is a copy on its way (``IN_FLIGHT``), until a
  process unpickles it (``LANDED``, counted once per token, after that process's ``ADD``).

Each process's events reach the node in the order it sent them, and a copy is unpickled only
after the message carrying it was sent, itself after its ``IN_FLIGHT``: so the actor's count
(holders + tokens) never reaches 0 while a copy is on its way.  At 0, a non-detached actor
ends (:class:`EndActor`, once).  A dead process stops being a holder (its late ``ADD`` and
``REMOVE`` are ignored), and tokens the node itself sent to it go with it; tokens it sent
stay (the copies may still land).  A copy that is never unpickled keeps its actor alive
until it is killed or the session ends."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["HandleTable", "EndActor"]


class EndActor(NamedTuple):
    """The last handle of the actor is gone: queue its exit call and stop it."""
    actor_id: bytes
    slot: int
    class_name: str


class _Actor:
    __slots__ = ("slot", "class_name", "detached", "holders", "tokens", "ending")

    def __init__(self, slot: int, class_name: str, detached: bool) -> None:
        self.slot = slot
        self.class_name = class_name
        self.detached = detached
        self.holders: dict[tuple[int, int], int] = {}  # (slot, pid) -> ADDs less REMOVEs
        self.tokens: dict[int, tuple[int, int] | None] = {}  # in flight -> node's addressee
        self.ending = False  # its count reached 0: its exit call is queued


class HandleTable:
    """The handles of every live actor of the node, by actor id."""

    __slots__ = ("actors", "dead")

    def __init__(self) -> None:
        self.actors: dict[bytes, _Actor] = {}
        self.dead: set[tuple[int, int]] = set()  # (slot, pid) of processes that died

    # -- reading ---------------------------------------------------------------------------

    def count(self, actor_id: bytes) -> int | None:
        """Holders plus tokens in flight of a known actor; ``None`` for an unknown one."""
        a = self.actors.get(actor_id)
        return None if a is None else len(a.holders) + len(a.tokens)

    def ending(self, actor_id: bytes) -> bool:
        """Whether the actor's last handle is gone (it ends after the calls made before)."""
        a = self.actors.get(actor_id)
        return a is not None and a.ending

    def holders(self, actor_id: bytes) -> dict:
        a = self.actors.get(actor_id)
        return {} if a is None else dict(a.holders)

    # -- events ----------------------------------------------------------------------------

    def register(self, actor_id: bytes, slot: int, class_name: str, detached: bool,
                 token: int, dest: tuple[int, int]) -> list:
        """A new actor, with its first handle in flight to its creator ``dest`` (which may
        have died meanwhile: then nobody holds it)."""
        a = self.actors[actor_id] = _Actor(slot, class_name, detached)
        return self.in_flight(actor_id, token, dest) + self._check(actor_id, a)

    def add(self, actor_id: bytes, holder: tuple[int, int]) -> list:
        a = self.actors.get(actor_id)
        if a is not None and holder not in self.dead:
            a.holders[holder] = a.holders.get(holder, 0) + 1
        return []

    def remove(self, actor_id: bytes, holder: tuple[int, int]) -> list:
        a = self.actors.get(actor_id)
        if a is None or holder in self.dead or holder not in a.holders:
            return []
        n = a.holders[holder] - 1
        if n > 0:
            a.holders[holder] = n
            return []
        del a.holders[holder]
        return self._check(actor_id, a)

    def in_flight(self, actor_id: bytes, token: int,
                  dest: tuple[int, int] | None = None) -> list:
        """A copy of a handle was pickled (``dest``: the process the node sends it to,
        ``None`` when not known)."""
        a = self.actors.get(actor_id)
        if a is not None and dest not in self.dead:
            a.tokens[token] = dest
        return []

    def landed(self, actor_id: bytes, token: int) -> list:
        """A copy was unpickled: its token goes (later landings of the same copy: nothing)."""
        a = self.actors.get(actor_id)
        if a is None or token not in a.tokens:
            return []
        del a.tokens[token]
        return self._check(actor_id, a)

    def process_died(self, holder: tuple[int, int]) -> list:
        """A process died: it holds nothing any more, and copies the node sent it are lost."""
        self.dead.add(holder)
        out: list = []
        for actor_id, a in list(self.actors.items()):
            lost = [t for t, d in a.tokens.items() if d == holder]
            for t in lost:
                del a.tokens[t]
            if a.holders.pop(holder, None) is not None or lost:
                out.extend(self._check(actor_id, a))
        return out

    def forget(self, actor_id: bytes) -> None:
        """The actor is dead: its handles count no more."""
        self.actors.pop(actor_id, None)

    def _check(self, actor_id: bytes, a: _Actor) -> list:
        if a.holders or a.tokens or a.detached or a.ending:
            return []
        a.ending = True
        return [EndActor(actor_id, a.slot, a.class_name)]
