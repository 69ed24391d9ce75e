"""The executor: call a task's function or an actor's method with its arguments and turn
what it returns (or raises) into the completion message for its owner -- results inline or
in the arena, streamed items announced one by one, the items of a generator called with
``num_returns=N`` or ``"dynamic"`` stored as they come, refs inside results exported
(pins) or lent (pending objects this process owns).  Shared by worker processes and actor
processes.
"""

from __future__ import annotations

import atexit
import inspect
import os
import sys
from typing import Any, Protocol

from ..errors import ActorExit, TaskCancelledError, TaskInterrupted, TaskTimeoutError
from ..ids import new_object_id
from ..serialization import SIMPLE_TYPES, error_payload, serialize, simple_blob
from .context import running_task
from .messages import EXITED_ON_PURPOSE, failed_message
from .protocol import ARENA, MSG_DONE, MSG_ITEM, Done, Item, Status, encode, inline, result_blocks
from .objectref import ObjectRef, capture_refs
from .streaming import DYNAMIC, STREAMING, DynamicObjectRefGenerator

__all__ = ["run_function", "stop_error", "exit_process", "exit_reason", "end_actor_process",
           "finish_result", "finish_generator", "finish_async_generator", "stream_item",
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
    (results stored inline or in the arena, or the error).  While it runs, the task is
    this thread's ``context.running_task`` (``get_runtime_context().get_task_id()``)."""
    running = running_task.set(task_id)
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
        if worker.client.actor_epoch is not None:
            raise  # an actor's method: the actor's runner ends it (actor_process.py)
        exit_process(worker, exc, fn_name)
    except BaseException as exc:  # the task's own error, reported to its owner
        if task_id in worker.recursive_cancels:
            worker.cancel_children(task_id)
        return failed_message(task_id, stop_error(exc), fn_name)
    finally:
        worker.children.pop(task_id, None)
        worker.recursive_cancels.discard(task_id)
        running_task.reset(running)


def stop_error(exc: BaseException) -> BaseException:
    """What the owner of a task gets for ``exc``: the error a stop stands for, or ``exc``."""
    if isinstance(exc, TaskInterrupted):
        err: BaseException = (TaskTimeoutError(str(exc)) if exc.timed_out
                              else TaskCancelledError(str(exc)))
        return err.with_traceback(exc.__traceback__)
    return exc


def exit_process(worker: Worker, exc: SystemExit, fn_name: str) -> None:
    """``sys.exit()`` in a task: the process exits, as the call asked.  The node reports the
    task's worker as crashed (retried under ``max_retries``, then ``WorkerCrashedError``).
    The slot's note says why, for that message.  (An actor's method that exits goes through
    :func:`end_actor_process` instead.)"""
    code = exc.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # as the interpreter does for sys.exit("message")
    status = 0 if code is None else code if isinstance(code, int) else 1
    worker.seg.set_note(worker.slot, f"{fn_name} called sys.exit({code!r})")
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def exit_reason(exc: SystemExit, fn_name: str) -> str:
    """Why an actor's method ended its actor, for the note of its slot (what
    ``ActorDiedError`` then says): ``exit_actor()`` (its message) or ``sys.exit(code)``."""
    if isinstance(exc, ActorExit):  # its message follows the method's name
        return f"{fn_name} {str(exc) or 'called repartir.actor.exit_actor()'}"
    code = exc.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # as the interpreter does for sys.exit("message")
    return f"{fn_name} called sys.exit({code!r})"


def end_actor_process(worker: Worker, why: str) -> None:
    """End an actor on purpose (``exit_actor()``, ``__ray_terminate__``, ``sys.exit()`` in a
    method): note why in its slot, run the process's ``atexit`` handlers (as the
    interpreter would at exit, and as Ray does), flush the output and exit with
    ``EXITED_ON_PURPOSE``, which the node never restarts.  Its callers' pending calls, the
    one that ended it included, then raise ``ActorDiedError`` saying it exited on purpose
    and why.  Never returns."""
    try:
        worker.seg.set_note(worker.slot, f"it exited on purpose: {why}")
        atexit._run_exitfuncs()  # (errors in handlers are printed, as at interpreter exit)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(EXITED_ON_PURPOSE)


def finish_result(worker: Worker, result, fn_name: str, nret: int, task_id: bytes,
                  owner: int) -> bytes:
    """Store a call's result(s); for a streaming call, iterate the generator and announce
    each item to the owner as it comes; for a generator called with ``num_returns=N`` or
    ``"dynamic"``, see :func:`finish_generator`.  Raises what the task raises.  Refs inside
    the result travel as they are, pending ones too (see :func:`serialize_result`)."""
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
        return finish_generator(worker, result, fn_name, nret, task_id, owner)
    if nret == DYNAMIC:
        raise TypeError(f"{fn_name} was called with num_returns='dynamic' but returned "
                        f"{type(result).__name__}, not a generator: yield the items, or "
                        f"call it with another num_returns")
    if nret == 0:  # as in Ray, what the function returns is dropped
        return encode((MSG_DONE, task_id, _OK, [], None))
    if nret == 1:
        if type(result) in SIMPLE_TYPES and _small(result):
            blob = _NONE_BLOB if result is None else simple_blob(result)  # the common case
            return encode((MSG_DONE, task_id, _OK, [inline(blob)], None))
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


class _Items:
    """The items of a generator called with ``num_returns=N`` (one ref each) or
    ``"dynamic"`` (one object each, owned by this process, their refs in a
    :class:`DynamicObjectRefGenerator`), each stored as it is yielded, so the generator
    never holds them all (Ray's reason for generators with a fixed ``num_returns``)."""

    def __init__(self, worker: Worker, fn_name: str, nret: int, task_id: bytes,
                 owner: int) -> None:
        self.worker = worker
        self.fn_name = fn_name
        self.nret = nret
        self.task_id = task_id
        self.owner = owner
        self.locs: list = []  # num_returns=N: where each item is
        self.pins: list | None = None  # their export pins and loans
        self.refs: list = []  # "dynamic": a ref per item

    def count(self) -> int:
        return len(self.refs) if self.nret == DYNAMIC else len(self.locs)

    def full(self) -> bool:
        return self.nret != DYNAMIC and len(self.locs) >= self.nret

    def add(self, item) -> None:
        what = f"item {self.count()} yielded by {self.fn_name}"
        client = self.worker.client
        if self.nret == DYNAMIC:
            with capture_refs() as nested:
                s = serialize(item, what)
            self.refs.append(_own(client, client.store(s), nested or None))
            return
        blobs, pins = serialize_result(self.worker, (item,), what, self.owner)
        try:
            loc = client.store(blobs[0])
        except BaseException:
            drop_message_blocks(client, Item(MSG_ITEM, self.task_id, 0, ("i", b""), pins))
            raise
        self.locs.append(loc)
        if pins is not None:
            self.pins = (self.pins or []) + pins

    def done(self) -> bytes:
        """The completion once the generator is exhausted."""
        if self.nret == DYNAMIC:
            refs, self.refs = self.refs, []
            return finish_result(self.worker, DynamicObjectRefGenerator(refs), self.fn_name,
                                 1, self.task_id, self.owner)
        if len(self.locs) < self.nret:
            n = len(self.locs)
            return self.raised(ValueError(
                f"{self.fn_name} yielded {n} item(s) but was called with "
                f"num_returns={self.nret}: the refs from index {n} on hold this error. Yield "
                f"exactly num_returns items, or call it with num_returns='streaming' or "
                f"'dynamic' when the number of items is not known in advance."))
        return encode((MSG_DONE, self.task_id, _OK, self.locs, self.pins))

    def raised(self, exc: BaseException) -> bytes:
        """The completion when the generator raised ``exc`` (or yielded too few items): as in
        Ray, the items yielded before keep their values and the remaining refs hold the
        error; for ``"dynamic"``, the error is one more ref, the last."""
        err = ("e", error_payload(exc, self.fn_name))
        if self.nret == DYNAMIC:
            self.refs.append(_own(self.worker.client, err, None))
            return self.done()
        if not self.locs:  # every ref holds the error: a plain failure (retries apply)
            return failed_message(self.task_id, exc, self.fn_name)
        locs = self.locs + [err] * (self.nret - len(self.locs))
        return encode((MSG_DONE, self.task_id, _OK, locs, self.pins))

    def too_many(self) -> bytes:
        """The completion when the generator yields more than ``num_returns`` items: every
        ref holds the error (Ray only logs it, a known bug of Ray's)."""
        self.drop()
        return failed_message(self.task_id, ValueError(
            f"{self.fn_name} yielded more than num_returns={self.nret} items. Yield exactly "
            f"num_returns items, or call it with num_returns='streaming' or 'dynamic' when "
            f"the number of items is not known in advance."), self.fn_name)

    def drop(self) -> None:
        """Free the items stored so far (the call fails as a whole)."""
        drop_message_blocks(self.worker.client,
                            Done(MSG_DONE, self.task_id, _OK, self.locs, self.pins))
        self.locs, self.pins, self.refs = [], None, []


def _own(client, loc, nested: list | None):
    """A ref to a new object of this process at ``loc`` (as ``put`` makes one);
    ``nested``: the refs its value holds."""
    oid = new_object_id()
    with client._lock:
        client.objects.own(oid, loc, 0, nested)
        return client.make_ref(oid)


def finish_generator(worker: Worker, gen, fn_name: str, nret: int, task_id: bytes,
                     owner: int) -> bytes:
    """Run a generator called with ``num_returns=N`` or ``"dynamic"`` to its end and return
    the completion (see :class:`_Items`).  An ``Exception`` raised by the generator goes
    into the refs; a stop (cancel, timeout), ``SystemExit`` or a failure to store an item
    frees the items stored so far and propagates."""
    items = _Items(worker, fn_name, nret, task_id, owner)
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration:
                return items.done()
            except Exception as exc:  # the generator's own error  # noqa: BLE001
                return items.raised(exc)
            if items.full():
                gen.close()
                return items.too_many()
            items.add(item)
    except BaseException:
        items.drop()
        raise


async def finish_async_generator(worker: Worker, agen, fn_name: str, nret: int,
                                 task_id: bytes, owner: int) -> bytes:
    """:func:`finish_generator` for an async generator (a method of an async actor), and
    its items streamed as they come for ``num_returns="streaming"``."""
    if nret == STREAMING:
        count = 0
        async for item in agen:
            stream_item(worker, item, fn_name, count, task_id, owner)
            count += 1
        return encode((MSG_DONE, task_id, _OK, count, None))
    items = _Items(worker, fn_name, nret, task_id, owner)
    try:
        while True:
            try:
                item = await agen.__anext__()
            except StopAsyncIteration:
                return items.done()
            except Exception as exc:  # the generator's own error  # noqa: BLE001
                return items.raised(exc)
            if items.full():
                await agen.aclose()
                return items.too_many()
            items.add(item)
    except BaseException:
        items.drop()
        raise


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
        drop_message_blocks(worker.client, Item(MSG_ITEM, task_id, index, inline(b""), pins))
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
    if exported:  # (actor handles travel with tokens of their own: handles.py)
        exported = [r for r in exported if type(r) is ObjectRef]
    pins = export_pins(worker.client, exported, receiver) if exported else None
    return blobs, pins


def drop_message_blocks(client, msg: Done | Item) -> None:
    """Free what an undelivered completion or item holds: its result blocks (owned by this
    process) and its export pins."""
    locs, pins = result_blocks(msg)
    for loc in locs:
        if loc[0] == ARENA:
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
            if loc[0] == ARENA:
                client.arena.pin(loc[1])
                pins.append(loc[1])
        elif ref._owned and ref._client is client and ref._id not in lent:
            if client.lend(ref._id):
                lent.add(ref._id)
                pins.append((client.slot, ref._id))
    return pins
