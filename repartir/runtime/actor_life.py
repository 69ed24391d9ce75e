"""An actor's life as the processes that call it see it: the handles' shared lifetime count
in a process (:class:`ActorLife`), a handle pickled into captured arguments
(:class:`SentHandle`), the exit call queued when the last handle anywhere dies
(:func:`end_actor`), the error for a call to a dead actor (:func:`actor_dead_error`), and
the exit codes an actor process leaves with.  Below the core worker, which uses all of them;
the handles (``actor.py``) and the actor process (``actor_process.py``) sit above."""

from __future__ import annotations

from ..errors import ActorDiedError
from ..scheduler.segment import SlotState
from .messages import TaskOptions

__all__ = ["ActorLife", "SentHandle", "end_actor", "actor_dead_error", "CTOR_FAILED_EXIT",
           "EXIT_METHOD", "TERMINATE_METHODS"]

CTOR_FAILED_EXIT = 77  # exit code of an actor process whose constructor raised
EXIT_METHOD = "__repartir_exit__"  # the call queued when the last handle of an actor dies
#: calls any handle can make (``handle.__ray_terminate__.remote()``): the actor ends, as
#: with ``exit_actor()``, once the calls made before have run
TERMINATE_METHODS = ("__ray_terminate__", "__repartir_terminate__")


class ActorLife:
    """Shared by the handles of one actor in one process (``CoreClient.life_of``): made with
    the process's first handle of the actor (the node hears ``ADD``); when the last of them
    is garbage, the node hears ``REMOVE`` (``__del__`` takes no lock: the client sends it in
    ``poll``).  An actor call keeps it until the call is in the actor's inbox, so the exit call
    that follows the last handle comes after it."""

    __slots__ = ("client", "actor_id", "__weakref__")

    def __init__(self, client, actor_id: bytes) -> None:
        self.client = client
        self.actor_id = actor_id

    def __del__(self) -> None:
        try:
            self.client.dead_actors.append(self.actor_id)
        except AttributeError:  # interpreter shutdown
            pass


class SentHandle:
    """A handle pickled while refs were captured (``objectref.capture_refs``): keeps the
    handle alive with what captured it (a task's arguments, an actor's constructor
    arguments, an object), and remembers the copy's token, so that a copy never sent can be
    counted as landed (``CoreClient.land_unsent``)."""

    __slots__ = ("handle", "actor_id", "token")

    def __init__(self, handle, actor_id: bytes, token: int) -> None:
        self.handle = handle
        self.actor_id = actor_id
        self.token = token


def end_actor(client, slot: int, actor_id: bytes, class_name: str) -> None:
    """Queue the exit call of an actor whose last handle died (anywhere: the node's count,
    ``handle_table.py``); stop its process once the call has run.  Runs in the driver, where
    the node lives; the calls of every process that held a handle were sent before (a call
    keeps its process's handle count until it is in the actor's inbox)."""
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
