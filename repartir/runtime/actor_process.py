"""The main loop of an actor process: build the instance (its constructor's failure makes the
actor dead), then take calls from the inbox and run them through the executor -- one at a
time, on ``max_concurrency`` threads, or on an asyncio event loop for ``async def`` methods.
Started by ``worker.main`` when the process's spec names an actor."""

from __future__ import annotations

import asyncio
import atexit
import inspect
import os
import pickle
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import ActorExit, TaskCancelledError
from ..scheduler.segment import SlotState
from .actor import ActorClass
from . import context
from .actor_life import CTOR_FAILED_EXIT, EXIT_METHOD, TERMINATE_METHODS
from .executor import (end_actor_process, exit_reason, finish_async_generator,
                       finish_result, run_function)
from .messages import failed_message
from .protocol import Call
from .objectref import ObjectRef

__all__ = ["run_actor"]


def run_actor(client, worker, spec: dict) -> None:
    """Main loop of an actor process: build the instance, then run calls from the inbox."""
    seg, slot = client.segment, client.slot
    config = spec["actor"]
    epoch, actor_id = seg.actor_epoch(slot)
    context.set_actor(actor_id, epoch != config.get("first_epoch", epoch))
    try:
        with open(config["creation_file"], "rb") as f:
            cls, args, kwargs = pickle.load(f)
        _unveil_class(cls)
        args = [client.get([a], None)[0] if isinstance(a, ObjectRef) else a for a in args]
        instance = cls(*args, **kwargs)
    except BaseException as exc:  # the constructor failed: the actor is dead
        tb = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
        seg.set_note(slot, f"the constructor of {config['class_name']}{where} raised {tb}")
        os._exit(CTOR_FAILED_EXIT)
    seg.claim_slot(SlotState.ACTOR, os.getpid(), slot)
    client.actor_epoch = seg.actor_epoch(slot)[0]
    for msg in list(client.calls):  # calls taken while the constructor waited in get
        if msg.epoch != client.actor_epoch:
            client.calls.remove(msg)
    runner = _Runner(client, worker, instance, config)
    # while a call waits (blocking) for refs it returns, no other call of this actor runs
    if config["is_async"]:
        asyncio.run(runner.run_async())
    elif config["max_concurrency"] > 1:
        runner.run_threaded()
    else:
        runner.run_sync()


def _unveil_class(cls: type) -> None:
    """In the actor's process, make the name of the actor class, as the class's own code
    reads it, the plain class: ``super(Cls, self)``, ``Cls.CONSTANT`` and ``Cls.helper()``
    then work inside the actor as in a local instance.

    The class's functions (methods, static and class methods, properties) read the name as
    a global of their module or as a closure cell (a class defined inside a function); the
    ones that hold an :class:`ActorClass` of ``cls`` get ``cls`` instead.  So that
    ``Cls.remote(...)`` and ``Cls.options(...)`` there still mean what they mean elsewhere,
    the class gets these two attributes of its ``ActorClass`` (unless it defines them)."""
    found: list[ActorClass] = []

    def is_actor_class(value: Any) -> bool:
        if isinstance(value, ActorClass) and value.__dict__.get("_cls") is cls:
            found.append(value)
            return True
        return False

    seen: set[int] = set()
    for klass in cls.__mro__:
        for member in vars(klass).values():
            # a function, or what holds one: static and class methods (__func__), properties
            # (fget...), functools' cached_property and partialmethod (func)
            funcs = [member] + [getattr(member, attr, None)
                                for attr in ("__func__", "func", "fget", "fset", "fdel")]
            for fn in funcs:
                fn = inspect.unwrap(fn) if inspect.isfunction(fn) else fn
                if not inspect.isfunction(fn):
                    continue
                g = fn.__globals__
                if id(g) not in seen:
                    seen.add(id(g))
                    for key in [k for k, v in g.items() if is_actor_class(v)]:
                        g[key] = cls
                for cell in fn.__closure__ or ():
                    try:
                        if is_actor_class(cell.cell_contents):
                            cell.cell_contents = cls
                    except ValueError:  # an empty cell
                        pass
    if found:
        for attr in ("remote", "options"):
            if not any(attr in vars(klass) for klass in cls.__mro__):
                try:
                    setattr(cls, attr, getattr(found[0], attr))
                except (AttributeError, TypeError):  # a metaclass that refuses it
                    pass


class _Runner:
    def __init__(self, client, worker, instance, config: dict) -> None:
        self.client = client
        self.worker = worker
        self.seg = client.segment
        self.slot = client.slot
        self.instance = instance
        self.max_concurrency = config["max_concurrency"]
        self.is_async = config["is_async"]
        self._running_lock = threading.Lock()
        self.active = 0  # calls running now
        self.exiting = False  # a call ended the actor: no other call starts

    def _decode(self, msg: Call):
        body = msg.body
        if body is None:
            off, n = msg.arena_spec
            body = self.client.arena.read(off, n)
        return msg.task_id, msg.owner, pickle.loads(body)

    def _prepare(self, msg):
        """(task_id, owner, bound method, fn_name, args_loc, dep_locs, nret) or a reply
        already made (cancelled, unknown method)."""
        task_id, owner, (name, _, _, fn_name, args_loc, dep_locs, nret) = self._decode(msg)
        if self.seg.is_cancelled(task_id):
            err = TaskCancelledError(f"call {fn_name} was cancelled before it started")
            return owner, failed_message(task_id, err, fn_name)
        try:
            fn = (self._drain if name == EXIT_METHOD else self._terminate
                  if name in TERMINATE_METHODS else getattr(self.instance, name))
        except AttributeError as exc:
            return owner, failed_message(task_id, exc, fn_name)
        return (task_id, owner, fn, fn_name, args_loc, dep_locs, nret)

    def _enter(self, owner: int, task_id: bytes) -> None:
        with self._running_lock:
            self.seg.push_running(self.slot, owner, task_id, time.monotonic(), 0.0)
            self.active += 1

    def _leave(self, task_id: bytes) -> None:
        with self._running_lock:
            self.seg.remove_running(self.slot, task_id)
            self.active -= 1

    def _drain(self):
        """The exit call, queued when the actor's last handle is gone: returns once no other
        call runs (threaded and async actors run several at once), having run the process's
        ``atexit`` handlers (as an actor that ends on purpose does); the owner then stops
        the process."""
        if self.is_async:
            async def wait() -> None:
                while self.active > 1:
                    await asyncio.sleep(0.001)
                self._run_atexit()
            return wait()
        while self.active > 1:
            time.sleep(0.001)
        self._run_atexit()
        return None

    def _run_atexit(self) -> None:
        self.exiting = True  # no call starts after these
        atexit._run_exitfuncs()  # (errors in handlers are printed, as at interpreter exit)
        sys.stdout.flush()
        sys.stderr.flush()

    @staticmethod
    def _terminate():
        """``handle.__ray_terminate__.remote()`` (or ``__repartir_terminate__``): ends the
        actor as ``exit_actor()`` does, once the calls made before it have run."""
        raise ActorExit("was called: the actor ends after the calls made before")

    def _exit(self, exc: SystemExit, fn_name: str) -> None:
        """A method ended the actor (``exit_actor()``, ``__ray_terminate__``, ``sys.exit``):
        no other call starts; as in Ray, the calls of a threaded actor already running end
        first; then the process exits (:func:`end_actor_process`).  Never returns."""
        self.exiting = True
        why = exit_reason(exc, fn_name)
        while self.active > 1:
            time.sleep(0.001)
        end_actor_process(self.worker, why)

    async def _exit_async(self, exc: SystemExit, fn_name: str) -> None:
        """:meth:`_exit` in an async actor: the coroutines already running end first."""
        self.exiting = True
        why = exit_reason(exc, fn_name)
        while self.active > 1:
            await asyncio.sleep(0.001)
        end_actor_process(self.worker, why)

    def _start(self, msg):
        """Decode a call and record it as running; ``None`` when it was answered at once
        (cancelled before it started, or no such method)."""
        prep = self._prepare(msg)
        if len(prep) == 2:
            self.worker.send(*prep)
            return None
        self._enter(prep[1], prep[0])
        return prep

    def _call(self, msg) -> None:
        if self.exiting:  # its caller hears of the actor's death instead
            return
        prep = self._start(msg)
        if prep is None:
            return
        task_id, owner, fn, fn_name, args_loc, dep_locs, nret = prep
        try:
            reply = run_function(self.worker, fn, fn_name, args_loc, dep_locs, nret, task_id,
                                 owner)
            self.worker.send(owner, reply)
        except SystemExit as exc:  # the method ends the actor
            self._exit(exc, fn_name)
        finally:
            self._leave(task_id)

    def _next(self, timeout: float):
        """The next call: spin briefly on the inbox (a wake-up costs 100+ us on virtual
        machines), then park on it."""
        client = self.client
        client.poll()
        if client.calls:
            return client.calls.popleft()
        seg, inbox = self.seg, client.inbox
        if self.worker.spin > 0 and seg.try_start_spinning(self.worker.max_spinners, self.slot):
            try:
                end = time.monotonic() + self.worker.spin
                while time.monotonic() < end and not inbox.pending():
                    os.sched_yield()
            finally:
                seg.stop_spinning(self.slot)
        if not inbox.pending():
            inbox.park(timeout)
        client.poll()
        return client.calls.popleft() if client.calls else None

    def run_sync(self) -> None:
        while not self.seg.shutting_down:
            msg = self._next(0.5)
            if msg is not None:
                self._call(msg)

    def run_threaded(self) -> None:
        slots = threading.BoundedSemaphore(self.max_concurrency)
        with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="actor") as pool:
            while not self.seg.shutting_down:
                msg = self._next(0.5)
                if msg is None:
                    continue
                slots.acquire()
                pool.submit(self._threaded_call, msg, slots)

    def _threaded_call(self, msg, slots) -> None:
        try:
            self._call(msg)
        finally:
            slots.release()

    async def run_async(self) -> None:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(self.max_concurrency)
        client = self.client
        tasks: set = set()
        while not self.seg.shutting_down:
            client.poll()
            if not client.calls:
                await loop.run_in_executor(None, client.inbox.park, 0.005)
                continue
            while client.calls and not self.exiting:
                msg = client.calls.popleft()
                await sem.acquire()
                task = loop.create_task(self._async_call(msg, sem))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(0)

    async def _async_call(self, msg, sem) -> None:
        try:
            if self.exiting:  # its caller hears of the actor's death instead
                return
            prep = self._start(msg)
            if prep is None:
                return
            task_id, owner, fn, fn_name, args_loc, dep_locs, nret = prep
            context.running_task.set(task_id)  # this asyncio task's own context
            try:
                try:
                    args, kwargs = self.worker.load_args(args_loc, dep_locs)
                    result = fn(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                    if inspect.isasyncgen(result):
                        reply = await finish_async_generator(self.worker, result, fn_name,
                                                             nret, task_id, owner)
                    else:
                        reply = finish_result(self.worker, result, fn_name, nret, task_id,
                                              owner)
                except SystemExit as exc:  # the method ends the actor
                    await self._exit_async(exc, fn_name)
                except BaseException as exc:
                    reply = failed_message(task_id, exc, fn_name)
                self.worker.send(owner, reply)
            finally:
                self._leave(task_id)
        finally:
            sem.release()

