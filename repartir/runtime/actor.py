"""Actors: ``@remote`` on a class.

``Cls.remote(*args)`` starts a dedicated process for the instance (a slot of the node, like a
worker, but never stolen from) and returns an :class:`ActorHandle`.  ``handle.m.remote(...)``
sends a call into the actor's **inbox** -- the same multi-producer ring through which the
actor receives the completions of tasks it submits -- so the calls of one caller arrive, and
run, in submission order (a call still waiting for an ``ObjectRef`` argument holds back the
later calls of the same caller, as in Ray).  Results go back to each caller's inbox like task
results.

Concurrency inside the actor: one call at a time by default; ``max_concurrency > 1`` runs calls
on that many threads; an actor with ``async def`` methods runs them on an asyncio event loop,
up to ``max_concurrency`` (default 1000) at once.

Faults: a constructor that raises makes the actor dead (every pending and later call raises
:class:`~repartir.errors.ActorDiedError` with the cause); a process that dies is restarted up
to ``max_restarts`` times (the constructor runs again) and the calls it was running are
re-sent up to ``max_task_retries`` times; after that the actor is dead.

Lifetime (as in Ray): an actor ends when every handle to it is gone.  The creating process
counts its handles through one :class:`_ActorLife` they share; when the last one dies, an
exit call is queued behind that process's calls, and the process is stopped once the exit
call has run (so every call made before runs to the end, and its results stay readable).
A handle that was passed to a task or another actor makes its actor live until
``repartir.kill()`` or ``shutdown()`` (copies in other processes are not counted), and so
does ``lifetime="detached"``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import threading
import time
from typing import Any

from ..errors import ActorDiedError, RepartirError, SerializationError, TaskCancelledError
from ..scheduler.segment import SlotState
from ..serialization import dumps_code
from . import driver
from .messages import MSG_DONE, OK, TaskOptions, failed_message, name_bad_argument
from .objectref import capture_refs
from .signature import arg_check, method_arg_check

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "actor_dead_error", "run_actor",
           "ACTOR_OPTIONS", "CTOR_FAILED_EXIT"]

ACTOR_OPTIONS = {"num_cpus", "num_gpus", "resources", "name", "namespace", "lifetime",
                 "get_if_exists", "max_restarts", "max_task_retries", "max_concurrency",
                 "memory", "scheduling_strategy"}
CTOR_FAILED_EXIT = 77  # exit code of an actor process whose constructor raised
EXIT_METHOD = "__repartir_exit__"  # the call queued when the last handle of an actor dies


class _ActorLife:
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


def _method_table(cls: type) -> dict[str, dict]:
    """``{name: {"num_returns", "is_async", "check"}}`` for each method an actor of ``cls``
    can be called with: functions, static and class methods (not dunders but ``__call__``)."""
    table = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("__") and name not in ("__call__",):
            continue
        if inspect.isfunction(member) or inspect.ismethoddescriptor(member) \
                or (inspect.ismethod(member) and member.__self__ is cls):  # a classmethod
            table[name] = {
                "num_returns": getattr(member, "__repartir_num_returns__", 1),
                "is_async": inspect.iscoroutinefunction(member)
                or inspect.isasyncgenfunction(member),
                "check": method_arg_check(cls, name, f"{cls.__qualname__}.{name}"),
            }
    return table


def method(*, num_returns: int | str = 1):
    """Decorate an actor method with options (Ray's ``ray.method``): ``num_returns``."""
    def deco(fn):
        fn.__repartir_num_returns__ = num_returns
        return fn
    return deco


class ActorClass:
    """A class made remote.  ``Cls.remote(*args, **kwargs)`` starts an actor and returns its
    :class:`ActorHandle`; ``Cls.options(**opts)`` returns a copy with other options.

    Other attributes are read from the class itself: class attributes, static and class
    methods (``Cls.helper()`` runs locally, as on the plain class), and ``dir(Cls)`` lists
    them.  Inside the actor's process, the name under which the class was decorated is the
    plain class (so ``super(Cls, self).__init__()`` works), see :func:`_unveil_class`."""

    def __init__(self, cls: type, options: dict, methods: dict | None = None) -> None:
        unknown = set(options) - ACTOR_OPTIONS
        if unknown:
            raise ValueError(f"unknown actor option(s) {sorted(unknown)}; known: "
                             f"{sorted(ACTOR_OPTIONS)}")
        mc = options.get("max_concurrency")
        if mc is not None and (not isinstance(mc, int) or mc < 1):
            raise ValueError(f"max_concurrency must be an int >= 1, got {mc!r}")
        for key in ("max_restarts", "max_task_retries"):
            v = options.get(key, 0)
            if not isinstance(v, int) or v < -1:
                raise ValueError(f"{key} must be an int >= -1 (-1: for ever), got {v!r}")
        lifetime = options.get("lifetime")
        if lifetime not in (None, "detached", "non_detached"):
            raise ValueError(f"lifetime must be 'detached' or None, got {lifetime!r}")
        self._cls = cls
        self._options = dict(options)
        self._methods = _method_table(cls) if methods is None else methods
        self._check = arg_check(cls, cls.__qualname__) if methods is None else None
        for attr in ("__module__", "__qualname__", "__name__", "__doc__"):
            try:
                self.__dict__[attr] = getattr(cls, attr)
            except AttributeError:
                pass
        self.__dict__["__wrapped__"] = cls  # sent by reference: see serialization

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor class {self._cls.__qualname__} cannot be instantiated directly: "
                        f"use {self._cls.__qualname__}.remote(...)")

    def __getattr__(self, name: str) -> Any:
        """Class attributes, static and class methods of the class itself."""
        cls = self.__dict__.get("_cls")
        if cls is None or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        return getattr(cls, name)

    def __dir__(self) -> list[str]:
        return sorted(set(object.__dir__(self)) | set(dir(self._cls)))

    def __mro_entries__(self, bases: tuple) -> tuple:
        raise TypeError(
            f"cannot subclass the actor class {self._cls.__qualname__}: define the class "
            f"without @repartir.remote, subclass that, and make actor classes of both with "
            f"repartir.remote(TheClass)")

    def __repr__(self) -> str:
        return f"<ActorClass {self._cls.__module__}.{self._cls.__qualname__}>"

    def options(self, **options: Any) -> "ActorClass":
        merged = dict(self._options)
        merged.update(options)
        ac = ActorClass(self._cls, merged, self._methods)
        ac._check = self._check
        return ac

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        """Start an actor; returns its handle at once (the constructor runs in the actor).

        Raises:
            TypeError: the arguments do not fit the constructor's signature.
            ValueError: an actor with this ``name`` exists (without ``get_if_exists``).
            SerializationError: the class or an argument cannot be pickled.
        """
        self._check.check(args, kwargs)
        client = driver.client()
        node = client.node
        if node is None:
            raise RepartirError(
                "actors can only be created from the driver in this version; create the "
                "actor in the driver and pass its handle to the task")
        if self._options.get("name") is None:
            return self._create(client, node, args, kwargs)
        with _naming:  # look-up and creation of a named actor: one thread at a time
            return self._create(client, node, args, kwargs)

    def _create(self, client, node, args: tuple, kwargs: dict) -> "ActorHandle":
        opts = self._options
        name = opts.get("name")
        namespace = opts.get("namespace") or "default"
        if name is not None:
            existing = named_handle(node, namespace, name)
            if existing is not None:
                if opts.get("get_if_exists"):
                    return existing
                raise ValueError(f"an actor named {name!r} already exists in namespace "
                                 f"{namespace!r}; pass get_if_exists=True to reuse it")
        demand = client.demand_vector(opts.get("num_cpus", 0), opts.get("num_gpus", 0),
                                      opts.get("resources") or {})
        with capture_refs() as held:  # refs among the arguments live as long as the actor
            try:
                creation = dumps_code((self._cls, args, kwargs))
            except Exception as exc:
                try:
                    dumps_code(self._cls)
                except Exception:
                    raise SerializationError(
                        f"actor class {self._cls.__qualname__} cannot be serialized: {exc}"
                    ) from None
                raise name_bad_argument(f"{self._cls.__qualname__}.__init__", args,
                                        kwargs) from None
        mc = opts.get("max_concurrency")
        is_async = any(m["is_async"] for m in self._methods.values())
        config = {
            "class_name": self._cls.__qualname__,
            "max_concurrency": mc or (1000 if is_async else 1),
            "is_async": is_async,
            "max_restarts": opts.get("max_restarts", 0),
        }
        actor_id = os.urandom(16)
        client.poll()  # actors whose last handle died start exiting, freeing their slots
        slot = node.create_actor(actor_id, creation, config, demand, held)
        handle = ActorHandle(actor_id, slot, self._cls.__qualname__, self._methods,
                             opts.get("max_task_retries", 0), client.session)
        if opts.get("lifetime") == "detached":
            node.detached.add(actor_id)
        else:
            handle._life = _ActorLife(client, slot, actor_id, self._cls.__qualname__)
            node.actor_lives[actor_id] = handle._life
        if name is not None:
            node.named_actors[(namespace, name)] = handle._copy(None)
        return handle


_naming = threading.Lock()  # makes "is the name free? then create" one step


def named_handle(node, namespace: str, name: str) -> "ActorHandle | None":
    """A handle to the live actor ``name`` of ``namespace``, or ``None``."""
    template = node.named_actors.get((namespace, name))
    if template is None or template.state == "DEAD":
        return None
    life = node.actor_lives.get(template._actor_id)
    if life is None and template._actor_id not in node.detached:
        return None  # its last handle died: it is exiting
    return template._copy(life)


class ActorHandle:
    """A handle to an actor: ``handle.method.remote(...)`` calls it.  Can be passed to tasks
    and other actors.  ``state`` is ``"STARTING"``, ``"ALIVE"``, ``"RESTARTING"`` or
    ``"DEAD"``."""

    def __init__(self, actor_id: bytes, slot: int, class_name: str, methods: dict,
                 max_task_retries: int, session: str) -> None:
        self._actor_id = actor_id
        self._slot = slot
        self._class_name = class_name
        self._methods = methods
        self._max_task_retries = max_task_retries
        self._session = session
        self._opts: dict = {}
        self._life: _ActorLife | None = None  # set in the creating process

    def _copy(self, life: "_ActorLife | None") -> "ActorHandle":
        h = ActorHandle(self._actor_id, self._slot, self._class_name, self._methods,
                        self._max_task_retries, self._session)
        h._life = life
        return h

    def __getattr__(self, name: str) -> "ActorMethod":
        methods = self.__dict__.get("_methods") or {}
        if name in methods:
            return ActorMethod(self, name, methods[name])
        raise AttributeError(f"actor {self.__dict__.get('_class_name')} has no method {name!r}")

    def __dir__(self) -> list[str]:
        return sorted(set(object.__dir__(self)) | set(self._methods))

    @property
    def state(self) -> Any:
        """``"STARTING"``, ``"ALIVE"``, ``"RESTARTING"`` or ``"DEAD"`` -- or, if the actor's
        class has a method named ``state``, that method (user methods come first)."""
        methods = self.__dict__.get("_methods") or {}
        if "state" in methods:
            return ActorMethod(self, "state", methods["state"])
        client = driver.client()
        if client.segment.actor_epoch(self._slot)[1] != self._actor_id:
            return "DEAD"
        st = client.segment.slot_state(self._slot)[0]
        return {SlotState.ACTOR: "ALIVE", SlotState.STARTING: "STARTING",
                SlotState.ACTOR_RESTARTING: "RESTARTING"}.get(st, "DEAD")

    def __reduce__(self):
        life = self.__dict__.get("_life")
        if life is not None:
            life.escaped = True  # copies elsewhere are not counted: it lives until shutdown
        return (_rebuild_handle, (self._actor_id, self._slot, self._class_name, self._methods,
                                  self._max_task_retries, self._session))

    def __repr__(self) -> str:
        return f"ActorHandle({self._class_name}, {self._actor_id.hex()[:12]})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)


def _rebuild_handle(actor_id: bytes, slot: int, class_name: str, methods: dict,
                    max_task_retries: int, session: str) -> ActorHandle:
    h = ActorHandle(actor_id, slot, class_name, methods, max_task_retries, session)
    from . import context

    client = context.current_client()
    node = client.node if client is not None else None
    if node is not None:  # back in the creating process: share the handles' count
        h._life = node.actor_lives.get(actor_id)
    return h


class ActorMethod:
    """``handle.method``: ``.remote(*args, **kwargs)`` calls it and returns its ref(s)."""

    def __init__(self, handle: ActorHandle, name: str, meta: dict,
                 num_returns: Any = None) -> None:
        self._handle = handle
        self._name = name
        self._meta = meta
        self._num_returns = meta["num_returns"] if num_returns is None else num_returns

    def options(self, *, num_returns: Any = None) -> "ActorMethod":
        return ActorMethod(self._handle, self._name, self._meta, num_returns)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor method {self._name} cannot be called directly: use "
                        f".{self._name}.remote(...)")

    def remote(self, *args: Any, **kwargs: Any):
        """Call the method; returns its ref(s) at once (a list when ``num_returns > 1``, an
        ``ObjectRefGenerator`` for ``num_returns="streaming"``).

        Raises:
            TypeError: the arguments do not fit the method's signature.
            SerializationError: an argument cannot be pickled.
        """
        from .streaming import STREAMING, submit_streaming

        check = self._meta["check"]
        if kwargs or not check.min_pos <= len(args) <= check.max_pos:
            check.check(args, kwargs)
        client = driver.client()
        h = self._handle
        nret = self._num_returns
        retries = h._max_task_retries
        opts = TaskOptions(
            num_returns=STREAMING if nret == "streaming" else int(nret),
            demand=(), priority=1, timeout=0.0,
            max_retries=(1 << 30) if retries == -1 else retries, retry_exceptions=False)
        fn_name = f"{h._class_name}.{self._name}"
        if nret == "streaming":
            return submit_streaming(client, self._name, (0, 0), fn_name, args, kwargs, opts,
                                    target=h._slot, actor_id=h._actor_id)
        refs = client.submit(self._name, (0, 0), fn_name, args, kwargs, opts, target=h._slot,
                             actor_id=h._actor_id)
        return refs[0] if opts.num_returns == 1 else refs


# -- the actor's process ------------------------------------------------------------------


def run_actor(client, worker, spec: dict) -> None:
    """Main loop of an actor process: build the instance, then run calls from the inbox."""
    seg, slot = client.segment, client.slot
    config = spec["actor"]
    try:
        with open(config["creation_file"], "rb") as f:
            cls, args, kwargs = pickle.load(f)
        _unveil_class(cls)
        from .objectref import ObjectRef

        args = [client.get([a], None)[0] if isinstance(a, ObjectRef) else a for a in args]
        instance = cls(*args, **kwargs)
    except BaseException as exc:  # the constructor failed: the actor is dead
        import traceback

        tb = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
        seg.set_note(slot, f"the constructor of {config['class_name']}{where} raised {tb}")
        os._exit(CTOR_FAILED_EXIT)
    seg.claim_slot(SlotState.ACTOR, os.getpid(), slot)
    client.actor_epoch = seg.actor_epoch(slot)[0]
    for msg in list(client.calls):  # calls taken while the constructor waited in get
        if msg[5] != client.actor_epoch:
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

    def _decode(self, msg):
        _, task_id, owner, body, arena_spec, _epoch = msg
        if body is None:
            off, n = arena_spec
            body = self.client.arena.read(off, n)
        return task_id, owner, pickle.loads(body)

    def _prepare(self, msg):
        """(task_id, owner, bound method, fn_name, args_loc, dep_locs, nret) or a reply
        already made (cancelled, unknown method)."""
        task_id, owner, (name, _, _, fn_name, args_loc, dep_locs, nret) = self._decode(msg)
        if self.seg.is_cancelled(task_id):
            err = TaskCancelledError(f"call {fn_name} was cancelled before it started")
            return owner, failed_message(task_id, err, fn_name)
        try:
            fn = self._drain if name == EXIT_METHOD else getattr(self.instance, name)
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
        """The exit call: returns once no other call runs (threaded and async actors run
        several at once); the owner then stops the process."""
        if self.is_async:
            async def wait() -> None:
                while self.active > 1:
                    await asyncio.sleep(0.001)
            return wait()
        while self.active > 1:
            time.sleep(0.001)
        return None

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
        from .worker import run_function

        prep = self._start(msg)
        if prep is None:
            return
        task_id, owner, fn, fn_name, args_loc, dep_locs, nret = prep
        try:
            reply = run_function(self.worker, fn, fn_name, args_loc, dep_locs, nret, task_id,
                                 owner)
            self.worker.send(owner, reply)
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
        from concurrent.futures import ThreadPoolExecutor

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
            while client.calls:
                msg = client.calls.popleft()
                await sem.acquire()
                task = loop.create_task(self._async_call(msg, sem))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(0)

    async def _stream_async(self, agen, fn_name: str, nret, task_id: bytes, owner: int):
        """Stream the items of an ``async def`` generator method, as they come."""
        from .streaming import STREAMING
        from .worker import stream_item

        if nret != STREAMING:
            raise TypeError(f"{fn_name} returned an async generator: call it with "
                            f".options(num_returns='streaming') to get its items as they come")
        count = 0
        async for item in agen:
            stream_item(self.worker, item, fn_name, count, task_id, owner)
            count += 1
        return pickle.dumps((MSG_DONE, task_id, OK, count, None), 5)

    async def _async_call(self, msg, sem) -> None:
        from .worker import finish_result

        try:
            prep = self._start(msg)
            if prep is None:
                return
            task_id, owner, fn, fn_name, args_loc, dep_locs, nret = prep
            try:
                try:
                    args, kwargs = self.worker.load_args(args_loc, dep_locs)
                    result = fn(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                    if inspect.isasyncgen(result):
                        reply = await self._stream_async(result, fn_name, nret, task_id, owner)
                    else:
                        reply = finish_result(self.worker, result, fn_name, nret, task_id,
                                              owner)
                except SystemExit as exc:
                    from .worker import exit_process
                    exit_process(self.worker, exc, fn_name)
                except BaseException as exc:
                    reply = failed_message(task_id, exc, fn_name)
                self.worker.send(owner, reply)
            finally:
                self._leave(task_id)
        finally:
            sem.release()

