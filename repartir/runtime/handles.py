"""Actor handles as one process sees them (a part of :class:`~.core.CoreClient`, whose state
it shares; ``docs/architecture.md``, "Actors", "Handles"): the process's count of its handles
per actor (:class:`~.actor_life.ActorLife`), the events the node's count hears
(``protocol.HandleEvent``), and the actor operations a process that is not the driver asks
of the node (``protocol.ActorOp``: create, look up, kill), waiting for the answer.

In the driver, where the node lives, every event and operation is a direct call on the
node (``client.node``); elsewhere it is a message into the driver's inbox, which the driver's
client hands to the node (``completions.py``)."""

from __future__ import annotations

import itertools
import os
import pickle
import random
import threading
import time
import weakref

from ..config import ACTOR_OP_TIMEOUT_S
from ..errors import RepartirError
from .actor_life import ActorLife, SentHandle
from .protocol import (MSG_ACTOR_OP, MSG_HANDLE, ActorOpKind, ActorOpReply, HandleOp,
                       encode)

__all__ = ["Handles", "new_token"]

_DRIVER_SLOT = 0  # the node lives in the driver's process


def new_token() -> int:
    """The number of one pickled copy of a handle (random, never 0)."""
    return random.getrandbits(62) + 1


class Handles:
    def _init_handles(self) -> None:
        self.pid = os.getpid()
        # actor id -> the count of this process's handles (gone with its last handle)
        self.actor_lives: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._lives_lock = threading.Lock()  # (never taken in __del__)
        self.op_replies: dict[int, ActorOpReply] = {}
        self._op_ids = itertools.count(1)
        self.actor_held: dict[bytes, list] = {}  # actors created here: constructor's refs

    # -- this process's handles -------------------------------------------------------------

    def life_of(self, actor_id: bytes) -> ActorLife:
        """The count shared by this process's handles of ``actor_id``; the first one tells
        the node (``ADD``)."""
        with self._lives_lock:
            life = self.actor_lives.get(actor_id)
            if life is not None:
                return life
            life = ActorLife(self, actor_id)
            self.actor_lives[actor_id] = life
            self.handle_event(HandleOp.ADD, actor_id, 0)
            return life

    def handle_sent(self, actor_id: bytes) -> int:
        """A handle of ``actor_id`` is being pickled: the node counts the copy (``IN_FLIGHT``)
        before the message that carries it can leave; returns the copy's token."""
        token = new_token()
        self.handle_event(HandleOp.IN_FLIGHT, actor_id, token)
        return token

    def handle_landed(self, actor_id: bytes, token: int) -> None:
        self.handle_event(HandleOp.LANDED, actor_id, token)

    def land_unsent(self, captured) -> None:
        """The copies pickled into ``captured`` (a ``capture_refs`` list) will never be
        unpickled (the serialization failed, or its result was not used): land them."""
        for x in captured or ():
            if type(x) is SentHandle and x.token:
                self.handle_landed(x.actor_id, x.token)
                x.token = 0

    def handle_event(self, op: HandleOp, actor_id: bytes, token: int) -> None:
        node = self.node
        if node is not None:
            node.handle_event(int(op), actor_id, self.slot, self.pid, token)
        else:
            self.post(_DRIVER_SLOT, encode((MSG_HANDLE, actor_id, int(op), self.slot, self.pid,
                                            token)))

    def _drop_lives(self) -> None:
        """In ``poll``: the node hears ``REMOVE`` for each count whose last handle died."""
        while self.dead_actors:
            self.handle_event(HandleOp.REMOVE, self.dead_actors.popleft(), 0)

    # -- operations on the node ---------------------------------------------------------------

    def actor_op(self, op: ActorOpKind, args: tuple):
        """Ask the node (in the driver's process) for ``op`` and wait for its answer; returns
        the result or raises the node's error.  Only outside the driver.

        Raises:
            RepartirError: the node did not answer within ``ACTOR_OP_TIMEOUT_S`` seconds,
                or the session is ending.
        """
        rid = next(self._op_ids)
        self.post(_DRIVER_SLOT, encode((MSG_ACTOR_OP, rid, self.slot, self.pid, int(op), args)))
        deadline = time.monotonic() + ACTOR_OP_TIMEOUT_S
        while True:
            reply = self.op_replies.pop(rid, None)
            if reply is not None:
                break
            if self.segment.shutting_down or self.closed:
                raise RepartirError(f"the session is ending: the node cannot {op.name} the "
                                    f"actor any more")
            if time.monotonic() > deadline:
                raise RepartirError(
                    f"the node did not answer a {op.name} request within "
                    f"{ACTOR_OP_TIMEOUT_S:g} s; the driver may be stuck or gone (its pump "
                    f"thread answers these requests): check that the driver still runs")
            if not self.poll():
                self.inbox.park(0.002)
        result = pickle.loads(reply.result)
        if not reply.ok:
            raise result
        return result

