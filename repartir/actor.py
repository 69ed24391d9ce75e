"""``repartir.actor``: Ray's ``ray.actor`` module -- ending an actor from inside
(:func:`exit_actor`), and the actor classes, handles and the ``method`` decorator (the same
objects as ``repartir.ActorClass``, ``repartir.ActorHandle``, ``repartir.method``)."""

from __future__ import annotations

from .errors import ActorExit
from .runtime import context
from .runtime.actor import ActorClass, ActorHandle, ActorMethod, method

__all__ = ["exit_actor", "ActorClass", "ActorHandle", "ActorMethod", "method"]


def exit_actor() -> None:
    """End the current actor on purpose, from inside one of its methods (Ray's
    ``ray.actor.exit_actor``).

    Raises :class:`~repartir.errors.ActorExit` (a ``SystemExit``: let it propagate) in the
    calling method, and the actor ends after it, as in Ray:

    * the method's caller gets ``ActorDiedError`` from ``get`` instead of a return value,
      saying that the actor exited on purpose (``exit_actor()``);
    * in a threaded or async actor, the calls already running end first; no other call
      starts, and the calls queued or made later raise that ``ActorDiedError``;
    * the ``atexit`` handlers of the actor's process run, then the process exits;
    * the actor is never restarted, whatever its ``max_restarts``.

    ``handle.__ray_terminate__.remote()`` (or ``handle.__repartir_terminate__.remote()``)
    does the same from outside, after the calls made before it; ``repartir.kill(handle)``
    kills the process at once, without ``atexit`` handlers.

    Raises:
        TypeError: not called inside an actor method (in the driver, in a task, or in an
            actor's constructor): use ``repartir.kill(handle)`` from outside.
    """
    client = context.current_client()
    if client is None or getattr(client, "actor_epoch", None) is None:
        raise TypeError(
            "exit_actor() can only be called inside an actor method; to end an actor from "
            "outside, call repartir.kill(handle), or handle.__ray_terminate__.remote() to "
            "end it after the calls made before")
    raise ActorExit("called repartir.actor.exit_actor()")  # (the note: "<method> called ...")
