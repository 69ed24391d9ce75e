"""Making room in a full arena (a part of :class:`~.core.CoreClient`, whose state it shares;
``docs/architecture.md``, "Spilling"): this process spills the objects it owns that nobody
uses, oldest first, to the session's spill directory.

The arena calls :meth:`Spilling.make_room` when an allocation of this process does not fit
(a ``put``, a task's arguments or result, a task spec, a function, a large message).  An
object is spilled only when no process pins its block (no view, no borrowed ref, no result
in flight carrying it) -- checked under the arena's mutex, and again after the file is
written -- and every reader holds a block before it reads it, so nobody ever reads a block
that is being spilled.  A spilled object's location does not change: its block becomes a
stub, and readers find its value in the file.
"""

from __future__ import annotations

from .protocol import ARENA

__all__ = ["Spilling"]


class Spilling:
    def make_room(self, need: int) -> bool:
        """Spill objects this process owns, oldest first (the order of the object table),
        until ``need`` bytes were given back to the arena; returns whether any were."""
        arena = self.arena
        if arena.spill_dir is None:
            return False
        with self._lock:
            locs = [e[1] for e in self.table.values()
                    if e[1] is not None and e[1][0] == ARENA]
        freed = 0
        for loc in locs:
            freed += arena.spill_out(loc[1], loc[3])
            if freed >= need:
                break
        return freed > 0
