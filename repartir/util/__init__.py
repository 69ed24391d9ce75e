"""Utilities over the public API, as Ray's ``ray.util``: :class:`ActorPool` (spread calls
over a set of actors) and :class:`Queue` (a FIFO shared by the driver, tasks and actors;
``repartir.util.queue`` also holds its ``Empty`` and ``Full``).

Unlike ``ray.util``, this package is not loaded by ``import repartir``: import it, e.g.
``from repartir.util import ActorPool`` or ``from repartir.util.queue import Queue``.
"""

from __future__ import annotations

from .actor_pool import ActorPool
from .queue import Empty, Full, Queue

__all__ = ["ActorPool", "Queue", "Empty", "Full"]
