"""An actor's life as the processes that call it see it: the handles' shared lifetime count
(:class:`ActorLife`), the exit call queued when the last handle dies (:func:`end_actor`), the
error for a call to a dead actor (:func:`actor_dead_error`), and the exit codes an actor
process leaves with.  Below the core worker, which uses all of them; the handles
(``actor.py``) and the actor process (``actor_process.py``) sit above."""

from __future__ import annotations

from ..errors import ActorDiedError
from ..scheduler.segment import SlotState
from .messages import TaskOptions

__all__ = ["ActorLife", "end_actor", "actor_dead_error", "CTOR_FAILED_EXIT", "EXIT_METHOD",
           "TERMINATE_METHODS"]

CTOR_FAILED_EXIT = 77  # exit code of an actor process whose constructor raised
EXIT_METHOD = "__repartir_exit__"  # the call queued when the last handle of an actor dies
#: calls any handle can make (``handle.__ray_terminate__.remote()``): the actor ends, as
#: with ``exit_actor()``, once the calls made before have run
TERMINATE_METHODS = ("__ray_terminate__", "__repartir_terminate__")


class ActorLife:
    """Shared by the handles of one actor in the process that created it: when the last of
    them is garbage, the actor is asked to exit (unless a handle escaped to another process
    or the actor is detached).  ``__del__`` takes no lock: the client acts in ``poll``."""

    __slots__ = ("client", "slot", "actor_id", "class_name", "escaped", "__weakref__")

    def __init__(self, client, slot: int, actor_id: bytes, class_name: str) -> None:
        self.client = client
        self.slot = slot
        self.actor_id = actor_id
        self.class_name = class_name
        self.escaped = False

    def __del__(self) -> None:
        if self.escaped:
            return
        try:
            self.client.dead_actors.append((self.slot, self.actor_id, self.class_name))
        except AttributeError:  # interpreter shutdown
            pass


def end_actor(client, slot: int, actor_id: bytes, class_name: str) -> None:
    """Queue the exit call of an actor whose last handle died; stop its process once the
    call has run (after every earlier call of this process)."""
    opts = TaskOptions(num_returns=1, demand=(), priority=1, timeout=0.0, max_retries=0,
                       retry_exceptions=False)
    ref = client.submit(EXIT_METHOD, (0, 0), f"{class_name}.{EXIT_METHOD}", (), {}, opts,
                        target=slot, actor_id=actor_id)[0]
    node = client.node
    rec = node.actors.get(slot)
    if rec is not None and rec.actor_id == actor_id:
        rec.exiting = True

    def stop(_future) -> None:
        if client.segment.actor_epoch(slot)[1] == actor_id:
            node.kill_actor(slot, no_restart=True, cause="all its handles were dropped")

    client.future(ref).add_done_callback(stop)


def actor_dead_error(segment, slot: int, actor_id: bytes | None) -> ActorDiedError | None:
    """The error for a call to the actor ``actor_id`` at ``slot``, if that actor is dead."""
    if actor_id is not None and segment.actor_epoch(slot)[1] != actor_id:
        return ActorDiedError("the actor is dead (its slot now runs another actor)")
    if segment.slot_state(slot)[0] != SlotState.ACTOR_DEAD:
        return None
    return ActorDiedError(f"the actor is dead: {segment.note(slot) or 'unknown cause'}")
