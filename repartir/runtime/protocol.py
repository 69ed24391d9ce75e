"""Every message the processes of a node send each other through their inboxes, as a named
type, encoded and decoded here only; the enums carried in them and in stop requests.

On the wire a message is the pickled plain tuple of its fields, the first being its kind
(an ``int``): named tuples or enum members would pickle as references to their classes,
larger and slower on the task path.  :func:`decode` gives the named type back, so readers
use field names, never indexes.  (The cluster's signed frames wrap these bytes.)

======================  =======================================================================
message                 meaning
======================  =======================================================================
:class:`Done`           a task or call ended: its results (locations), an item count for a
                        stream, or the error payload
:class:`Item`           one item of a streaming call
:class:`Request`        a borrower asks the owner for an object's location
:class:`Object`         the owner's answer: where the object is
:class:`Crashed`        a task ended without a result (its process died, it was stopped)
:class:`Call`           a call to an actor, sent into the actor's inbox
:class:`ActorEpoch`     an actor's process was replaced, or the actor died
:class:`Large`          a message too large for an inbox, in an arena block
:class:`Release`        a loan of a pending object ends (the borrower dropped its last ref)
:class:`OwnerDied`      a process died: the objects it owned or lent are lost
:class:`ActorOp`        a process that is not the driver asks the node to create an actor,
                        look a named one up, or kill one (:class:`ActorOpKind`)
:class:`ActorOpReply`   the node's answer to an :class:`ActorOp`
:class:`HandleEvent`    a change in the actor handles of a process, for the node's count of
                        handles (:class:`HandleOp`: added, removed, in flight, landed)
======================  =======================================================================
"""

from __future__ import annotations

import enum
import pickle
from typing import Any, NamedTuple

from ..errors import RepartirSystemError

__all__ = ["MSG_DONE", "MSG_REQUEST", "MSG_OBJECT", "MSG_CRASHED", "MSG_CALL", "MSG_ITEM",
           "MSG_ACTOR_EPOCH", "MSG_LARGE", "MSG_RELEASE", "MSG_OWNER_DIED", "Status",
           "StopReason", "StopRequest", "Done", "Item", "Request", "Object", "Crashed", "Call",
           "ActorEpoch", "Large", "Release", "OwnerDied", "MSG_ACTOR_OP", "MSG_ACTOR_OP_REPLY",
           "MSG_HANDLE", "ActorOp", "ActorOpReply", "HandleEvent", "ActorOpKind", "HandleOp",
           "Message", "encode", "decode", "open_large", "result_blocks"]

# the kind of a message: the first field on the wire
MSG_DONE, MSG_REQUEST, MSG_OBJECT, MSG_CRASHED, MSG_CALL, MSG_ITEM = 0, 1, 2, 3, 4, 5
MSG_ACTOR_EPOCH, MSG_LARGE, MSG_RELEASE, MSG_OWNER_DIED = 6, 7, 8, 9
MSG_ACTOR_OP, MSG_ACTOR_OP_REPLY, MSG_HANDLE = 10, 11, 12


# -- locations: where an object's value is --------------------------------------------------
# A location is a plain tuple (it travels in most messages); its first field says what the
# rest is.  ``None`` stands for "not known yet" (the task runs).
Location = tuple
INLINE = "i"  #: ``(INLINE, blob)``: the serialized value itself
ARENA = "a"  #: ``(ARENA, offset, nbytes, generation)``: a block of the arena
ERROR = "e"  #: ``(ERROR, payload)``: the task raised (``serialization.error_payload``)
FAILED = "x"  #: ``(FAILED, pickled error)``: the runtime stopped, failed or lost it
ERROR_KINDS = (ERROR, FAILED)  #: locations whose ``get`` raises


def inline(blob: bytes) -> Location:
    return (INLINE, blob)


def in_arena(offset: int, nbytes: int, generation: int) -> Location:
    return (ARENA, offset, nbytes, generation)


def failed(err: BaseException) -> Location:
    """The location of an object that stands for ``err`` (raised as is by ``get``)."""
    return (FAILED, pickle.dumps(err, 5))


class Status(enum.IntEnum):
    """How a task ended, in :class:`Done` (sent as a plain ``int``)."""

    OK = 0  #: payload: the result locations (a list), or a stream's item count
    FAILED = 1  #: payload: the error (see ``serialization.error_payload``)


class StopReason(enum.IntEnum):
    """Why a task ended without a result, in :class:`Crashed`."""

    CRASH = 0  #: its process died (retried under ``max_retries``)
    TIMEOUT = 1  #: it ran past its ``timeout=``
    CANCEL = 2  #: it was cancelled
    ACTOR_DIED = 3  #: the actor it was sent to is dead

    @classmethod
    def of_request(cls, request: int) -> "StopReason":
        """The reason a task killed on ``request`` (a :class:`StopRequest`) ended."""
        return cls.TIMEOUT if request == StopRequest.TIMEOUT else cls.CANCEL


class StopRequest(enum.IntEnum):
    """What a stop request in the scheduler segment asks of a running task's worker."""

    TIMEOUT = 1  #: stop it: it ran past its ``timeout=`` (its children too)
    CANCEL = 2  #: stop it and its children (``cancel()``, recursive by default)
    CANCEL_ONE = 4  #: stop it alone (``cancel(recursive=False)``)


class ActorOpKind(enum.IntEnum):
    """What an :class:`ActorOp` asks of the node (sent as a plain ``int``)."""

    CREATE = 0  #: args: (spec dict, creation bytes); result: (created, handle fields)
    GET_ACTOR = 1  #: args: (namespace, name); result: handle fields
    KILL = 2  #: args: (actor id, slot, no_restart); result: None


class HandleOp(enum.IntEnum):
    """What a :class:`HandleEvent` tells the node's count of an actor's handles."""

    ADD = 0  #: the process holds a handle of the actor now (its first one)
    REMOVE = 1  #: the process dropped its last handle of the actor
    IN_FLIGHT = 2  #: a handle was pickled (``token``): a copy is on its way somewhere
    LANDED = 3  #: a copy was unpickled (``token``; counted once per token)


class Done(NamedTuple):
    kind: int  # MSG_DONE
    task_id: bytes
    status: int  # Status
    payload: Any  # list of locations, an item count (streams), or an error payload
    pins: list | None  # export pins and loans of the refs inside the results


class Item(NamedTuple):
    kind: int  # MSG_ITEM
    task_id: bytes
    index: int  # 0-based position in the stream
    loc: tuple  # where the item is
    pins: list | None


class Request(NamedTuple):
    kind: int  # MSG_REQUEST
    object_id: bytes
    requester: int  # slot to answer


class Object(NamedTuple):
    kind: int  # MSG_OBJECT
    object_id: bytes
    loc: tuple


class Crashed(NamedTuple):
    kind: int  # MSG_CRASHED
    task_id: bytes
    detail: str  # for the error message
    reason: int  # StopReason


class Call(NamedTuple):
    kind: int  # MSG_CALL
    task_id: bytes
    owner: int  # the caller's slot
    body: bytes | None  # the call's spec; None when it is in the arena
    arena_spec: tuple | None  # (offset, nbytes) of the spec in the arena
    epoch: int  # the actor process the call was sent to


class ActorEpoch(NamedTuple):
    kind: int  # MSG_ACTOR_EPOCH
    slot: int
    actor_id: bytes
    epoch: int  # the new process's epoch
    dead: bool  # the actor will not be restarted
    cause: str
    running: list  # (owner, task id, start, timeout) of the calls it was running


class Large(NamedTuple):
    kind: int  # MSG_LARGE
    offset: int  # of the arena block holding the encoded message
    nbytes: int
    generation: int  # of the block, to claim it


class Release(NamedTuple):
    kind: int  # MSG_RELEASE
    object_id: bytes


class OwnerDied(NamedTuple):
    kind: int  # MSG_OWNER_DIED
    slot: int


class ActorOp(NamedTuple):
    kind: int  # MSG_ACTOR_OP (sent to the driver's slot, where the node lives)
    request_id: int  # the asker's own number, echoed in the reply
    reply_slot: int  # the asker's slot
    pid: int  # the asker's process id (a handle in the reply is in flight to it)
    op: int  # ActorOpKind
    args: tuple


class ActorOpReply(NamedTuple):
    kind: int  # MSG_ACTOR_OP_REPLY
    request_id: int
    ok: bool  # False: result is the pickled error to raise
    result: bytes  # pickled result (see ActorOpKind) or error


class HandleEvent(NamedTuple):
    kind: int  # MSG_HANDLE (sent to the driver's slot, where the node lives)
    actor_id: bytes
    op: int  # HandleOp
    slot: int  # the sending process's slot
    pid: int  # and its process id (a dead process's late ADD/REMOVE are ignored)
    token: int  # IN_FLIGHT, LANDED: the copy's number (0 for ADD, REMOVE)


Message = (Done | Item | Request | Object | Crashed | Call | ActorEpoch | Large | Release
           | OwnerDied | ActorOp | ActorOpReply | HandleEvent)

_TYPES: tuple = (Done, Request, Object, Crashed, Call, Item, ActorEpoch, Large, Release,
                 OwnerDied, ActorOp, ActorOpReply, HandleEvent)  # by kind


_new = tuple.__new__  # what NamedTuple._make does, without its checks and call


def encode(msg: tuple) -> bytes:
    """The bytes of ``msg`` (one of the types above, or its plain tuple) for an inbox.  Enum
    fields must be plain ``int`` by then (they are, when built from :class:`Status`,
    :class:`StopReason` values passed through ``int()``)."""
    return pickle.dumps(tuple(msg), 5)


def decode(raw) -> Message:
    """The message in ``raw`` (bytes from an inbox), as its named type.

    Raises:
        RepartirSystemError: not a message of a known kind (a corrupted inbox).
    """
    fields = pickle.loads(raw)
    try:
        kind = fields[0]
        cls = _TYPES[kind] if kind >= 0 else None
    except (IndexError, TypeError, KeyError):
        cls = None
    if cls is None or type(fields) is not tuple or len(fields) != len(cls._fields):
        raise RepartirSystemError(f"an inbox message of no known kind: {fields!r:.200}")
    return _new(cls, fields)


def open_large(arena, slot: int, msg: Message) -> Message | None:
    """``msg`` itself, or for a :class:`Large` one the message in its arena block, which
    ``slot`` claims, reads and frees; ``None`` when the block went with its sender (the node
    freed it).  ``arena`` is the node's ``store.arena.Arena``."""
    if msg.kind != MSG_LARGE:
        return msg
    if not arena.claim(msg.offset, msg.generation, slot):
        return None
    try:
        return decode(arena.view(msg.offset, msg.nbytes))
    finally:
        arena.release(msg.offset)


def result_blocks(msg: Done | Item) -> tuple[list, list | None]:
    """The result locations and the pins a :class:`Done` or :class:`Item` carries (what must
    be freed when nobody takes it)."""
    if msg.kind == MSG_ITEM:
        return [msg.loc], msg.pins
    ok = msg.status == Status.OK and isinstance(msg.payload, list)
    return (msg.payload if ok else []), msg.pins
