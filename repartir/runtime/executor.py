"""The executor: call a task's function or an actor's method with its arguments and turn
what it returns (or raises) into the completion message for its owner -- results inline or
in the arena, streamed items announced one by one, refs inside results exported (pins) or
lent (pending objects this process owns).  Shared by worker processes and actor processes.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any, Protocol

from ..errors import TaskCancelledError, TaskInterrupted, TaskTimeoutError
from ..serialization import SIMPLE_TYPES, serialize, simple_blob
from .messages import EXITED_ON_PURPOSE, failed_message
from .protocol import MSG_DONE, MSG_ITEM, Done, Item, Status, encode, result_blocks
from .objectref import capture_refs
from .streaming import STREAMING

__all__ = ["run_function", "stop_error", "exit_process", "finish_result", "stream_item",
           "serialize_result", "drop_message_blocks", "export_pins"]

_NONE_BLOB = simple_blob(None)
_OK = int(Status.OK)


class Worker(Protocol):
    """What the executor needs of the process running a call (``worker.Worker``, used by
    worker and actor processes alike)."""

    client: Any  # the process's CoreClient
    seg: Any  # the scheduler segment
    slot: int
    calls: list  # task ids on this process's stack, innermost last
    pending_stops: dict  # task id -> stop reason raised when it is back on top
    children: dict  # task id -> ids of the tasks it submitted
    recursive_cancels: set  # calls whose cancel also cancels their children

    def load_args(self, args_loc, dep_locs) -> tuple: ...
    def cancel_children(self, task_id: bytes) -> None: ...
    def send(self, owner: int, msg: bytes) -> None: ...


def run_function(worker: Worker, fn, fn_name: str, args_loc, dep_locs, nret: int,
                 task_id: bytes, owner: int) -> bytes:
    """Call ``fn`` with the task's arguments; returns the completion message for the owner
    (results stored inline or in the arena, or the error)."""
    try:
        args, kwargs = worker.load_args(args_loc, dep_locs)
        worker.calls.append(task_id)
        try:
            result = fn(*args, **kwargs)
            del args, kwargs
            # a generator's body runs here: it can be cancelled or time out meanwhile too
            return finish_result(worker, result, fn_name, nret, task_id, owner)
        finally:
            worker.calls.pop()
            worker.pending_stops.pop(task_id, None)
    except SystemExit as exc:  # the task asks its process to exit: it does
        exit_process(worker, exc, fn_name)
    except BaseException as exc:  # the task's own error, reported to its owner
        if task_id in worker.recursive_cancels:
            worker.cancel_children(task_id)
        return failed_message(task_id, stop_error(exc), fn_name)
    finally:
        worker.children.pop(task_id, None)
        worker.recursive_cancels.discard(task_id)


def stop_error(exc: BaseException) -> BaseException:
    """What the owner of a task gets for ``exc``: the error a stop stands for, or ``exc``."""
    if isinstance(exc, TaskInterrupted):
        err: BaseException = (TaskTimeoutError(str(exc)) if exc.timed_out
                              else TaskCancelledError(str(exc)))
        return err.with_traceback(exc.__traceback__)
    return exc


def exit_process(worker: Worker, exc: SystemExit, fn_name: str) -> None:
    """``sys.exit()`` in a task or actor method: the process exits, as the call asked.  The
    node reports the task's worker as crashed (retried under ``max_retries``, then
    ``WorkerCrashedError``); an actor ends for good (later calls raise ``ActorDiedError``
    saying it exited on purpose).  The slot's note says why, for those messages."""
    code = exc.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # as the interpreter does for sys.exit("message")
    status = 0 if code is None else code if isinstance(code, int) else 1
    why = f"{fn_name} called sys.exit({code!r})"
    if worker.client.actor_epoch is not None:
        worker.seg.set_note(worker.slot, f"it exited on purpose: {why}")
        status = EXITED_ON_PURPOSE
    else:
        worker.seg.set_note(worker.slot, why)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def finish_result(worker: Worker, result, fn_name: str, nret: int, task_id: bytes,
                  owner: int) -> bytes:
    """Store a call's result(s); for a streaming call, iterate the generator and announce
    each item to the owner as it comes.  Raises what the task raises.  Refs inside the
    result travel as they are, pending ones too (see :func:`serialize_result`)."""
    def store(s):  # the task's owner claims its results when they arrive
        return worker.client.store(s)

    if nret == STREAMING:
        if not inspect.isgenerator(result):
            raise TypeError(f"{fn_name} was called with num_returns='streaming' but returned "
                            f"{type(result).__name__}, not a generator")
        count = 0
        for item in result:
            stream_item(worker, item, fn_name, count, task_id, owner)
            count += 1
        return encode((MSG_DONE, task_id, _OK, count, None))
    if inspect.isgenerator(result):
        raise TypeError(f"{fn_name} returned a generator: call it with "
                        f".options(num_returns='streaming') to get its items as they come, "
                        f"or return a list")
    if nret == 0:  # as in Ray, what the function returns is dropped
        return encode((MSG_DONE, task_id, _OK, [], None))
    if nret == 1:
        if type(result) in SIMPLE_TYPES and _small(result):
            blob = _NONE_BLOB if result is None else simple_blob(result)  # the common case
            return encode((MSG_DONE, task_id, _OK, [("i", blob)], None))
        results = (result,)
    else:
        if not isinstance(result, (tuple, list)) or len(result) != nret:
            raise ValueError(
                f"{fn_name} was declared with num_returns={nret} but returned "
                f"{type(result).__name__} of length "
                f"{len(result) if hasattr(result, '__len__') else 'n/a'}")
        results = result
    blobs, pins = serialize_result(worker, results, f"the return value of {fn_name}", owner)
    try:
        locs = [store(s) for s in blobs]
    except BaseException:
        drop_message_blocks(worker.client, Done(MSG_DONE, task_id, _OK, [], pins))
        raise
    return encode((MSG_DONE, task_id, _OK, locs, pins))


def _small(value) -> bool:
    """Whether a builtin scalar is small enough for the inline fast path (a large ``str``,
    ``bytes`` or ``int`` goes the general way: into the arena above the inline threshold)."""
    t = type(value)
    if t is str or t is bytes:
        return len(value) < 4096
    if t is int:
        return value.bit_length() < 32768
    return True


def stream_item(worker: Worker, item, fn_name: str, index: int, task_id: bytes,
                owner: int) -> None:
    """Store one item of a streaming call and announce it to the owner at once."""
    blobs, pins = serialize_result(worker, (item,), f"item {index} yielded by {fn_name}", owner)
    try:
        loc = worker.client.store(blobs[0])
    except BaseException:
        drop_message_blocks(worker.client, Item(MSG_ITEM, task_id, index, ("i", b""), pins))
        raise
    worker.send(owner, encode((MSG_ITEM, task_id, index, loc, pins)))


def serialize_result(worker: Worker, values, what: str, receiver: int
                     ) -> tuple[list, list | None]:
    """Serialize ``values`` (nothing is stored yet); returns the blobs and the export pins
    of the refs inside them (see :func:`export_pins`; ``None`` when they hold none).  A
    ref this process owns whose object is still pending travels pending, as in Ray: this
    process *lends* it to ``receiver`` (see :meth:`CoreClient.lend`) and answers its
    request once the object is ready, so the returning task never waits for it."""
    with capture_refs() as exported:
        blobs = [serialize(v, what) for v in values]
    pins = export_pins(worker.client, exported, receiver) if exported else None
    return blobs, pins


def drop_message_blocks(client, msg: Done | Item) -> None:
    """Free what an undelivered completion or item holds: its result blocks (owned by this
    process) and its export pins."""
    locs, pins = result_blocks(msg)
    for loc in locs:
        if loc[0] == "a":
            client.arena.release(loc[1])
    for pin in pins or ():
        if type(pin) is int:
            client.arena.unpin(pin)
        else:  # a loan of an object this process owns
            client.dead_refs.append(pin[1])


def export_pins(client, refs, receiver: int) -> list:
    """What keeps the objects of refs about to travel in a result alive until the receiver
    holds them: the pin of each arena block (an ``int``: the receiver unpins it when it
    frees the result; it belongs to the message, not to this process's pin ledger, so this
    process's death cannot give it back a second time), and for each pending object this
    process owns a loan ``(owner slot, object id)`` (the receiver sends ``MSG_RELEASE``
    when its last ref to the object is gone).  An empty list still tells the receiver that
    the result holds refs."""
    pins: list = []
    lent: set = set()
    for ref in refs:
        loc = client.location_for_export(ref._id)
        if loc is not None:
            if loc[0] == "a":
                client.arena.pin(loc[1])
                pins.append(loc[1])
        elif ref._owned and ref._client is client and ref._id not in lent:
            if client.lend(ref._id):
                lent.add(ref._id)
                pins.append((client.slot, ref._id))
    return pins
