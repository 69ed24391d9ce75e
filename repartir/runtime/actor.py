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

Anywhere (as in Ray): the driver, tasks and actor methods create actors, call them, pass
and return their handles, look named ones up (:func:`get_actor`) and kill them
(:func:`kill_actor`).  The node lives in the driver; elsewhere these go to it as messages
(``protocol.ActorOp``, answered by ``protocol.ActorOpReply``; ``handles.py``).

Lifetime (as in Ray): an actor ends when every handle to it, in every process, is gone.
Each process counts its handles of an actor through one :class:`ActorLife` they share and
tells the node when its first one appears and its last one dies; a pickled handle is a copy
in flight, counted by the node from the pickling to the first unpickling (its *token*).  When
the node's count reaches 0 (``handle_table.py``), an exit call is queued behind the calls
made before, and the process is stopped once the exit call has run (so every call made
before runs to the end, and its results stay readable).  ``lifetime="detached"`` actors live
until ``repartir.kill()`` or ``shutdown()``; so does an actor a pickled copy of whose handle
is never unpickled (a dropped result holding it, say).
"""

from __future__ import annotations

import inspect
import time
from typing import Any

from ..errors import SerializationError
from ..scheduler.segment import SlotState
from ..serialization import dumps_code
from . import context, driver
from .actor_life import TERMINATE_METHODS, ActorLife, SentHandle
from .messages import TaskOptions, name_bad_argument, validate_memory
from .node_actors import no_such_actor
from .objectref import capture_refs, capturing
from .protocol import ActorOpKind
from .signature import ArgCheck, arg_check, method_arg_check
from .streaming import STREAMING, parse_num_returns, submit_streaming

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "ACTOR_OPTIONS", "get_actor",
           "kill_actor"]

ACTOR_OPTIONS = {"num_cpus", "num_gpus", "resources", "name", "namespace", "lifetime",
                 "get_if_exists", "max_restarts", "max_task_retries", "max_concurrency",
                 "memory", "scheduling_strategy"}
def _method_table(cls: type) -> dict[str, dict]:
    """``{name: {"num_returns", "is_async", "check"}}`` for each method an actor of ``cls``
    can be called with: functions, static and class methods (not dunders but ``__call__``).
    A generator method (sync or async) streams unless ``@method(num_returns=...)`` says
    otherwise, as in Ray."""
    table = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("__") and name not in ("__call__",):
            continue
        if inspect.isfunction(member) or inspect.ismethoddescriptor(member) \
                or (inspect.ismethod(member) and member.__self__ is cls):  # a classmethod
            generator = inspect.isgeneratorfunction(member) or inspect.isasyncgenfunction(member)
            table[name] = {
                "num_returns": getattr(member, "__repartir_num_returns__",
                                       "streaming" if generator else 1),
                "is_async": inspect.iscoroutinefunction(member)
                or inspect.isasyncgenfunction(member),
                "check": method_arg_check(cls, name, f"{cls.__qualname__}.{name}"),
            }
    return table


def method(*, num_returns: int | str = 1):
    """Decorate an actor method with options (Ray's ``ray.method``): ``num_returns``, an int
    from 0 to 65533 (a generator method then yields that many items, one per ref),
    ``"streaming"`` (the default of generator methods: an ``ObjectRefGenerator``) or
    ``"dynamic"`` (one ref whose value is a ``DynamicObjectRefGenerator``).

    Raises:
        ValueError: another ``num_returns``.
    """
    parse_num_returns(num_returns, False)

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
        validate_memory(options.get("memory"))
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
        Works in the driver, in tasks and in actor methods alike; in a driver connected
        to a cluster, the actor is placed on a node (docs/cluster.md, "Actors on a
        cluster").

        Raises:
            TypeError: the arguments do not fit the constructor's signature.
            ValueError: an actor with this ``name`` exists (without ``get_if_exists``).
            SerializationError: the class or an argument cannot be pickled.
            InfeasibleTaskError: no node has the resources it asks for.
            RepartirError: every actor slot of the node is taken (``REPARTIR_MAX_ACTORS``),
                or, outside the driver, the node did not answer.
        """
        self._check.check(args, kwargs)
        if context.cluster is not None:  # a driver connected to a cluster (docs/cluster.md)
            return context.cluster.actors.create(self, args, kwargs)
        if context.inner is not None:  # a task or actor on a cluster's node (cluster/inner.py)
            return context.inner.create_actor(self, args, kwargs)
        client = driver.client()
        opts = self._options
        demand = client.demand_vector(opts.get("num_cpus", 0), opts.get("num_gpus", 0),
                                      opts.get("resources") or {}, opts.get("memory") or 0)
        # refs and handles among the arguments live as long as the actor (restarts included)
        with capture_refs() as held:
            try:
                creation = dumps_code((self._cls, args, kwargs))
            except Exception as exc:
                client.land_unsent(held)
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
        spec = {
            "name": opts.get("name"),
            "namespace": opts.get("namespace") or "default",
            "get_if_exists": bool(opts.get("get_if_exists")),
            "detached": opts.get("lifetime") == "detached",
            "demand": demand,
            "config": {
                "class_name": self._cls.__qualname__,
                "max_concurrency": mc or (1000 if is_async else 1),
                "is_async": is_async,
                "max_restarts": opts.get("max_restarts", 0),
            },
            "handle": (self._cls.__qualname__, self._methods, opts.get("max_task_retries", 0)),
        }
        node = client.node
        try:
            if node is not None:
                client.poll()  # actors whose last handle died start exiting, freeing slots
                created, fields = node.new_actor(spec, creation, held, (client.slot,
                                                                        client.pid))
            else:  # a task or an actor: the node, in the driver, creates it
                created, fields = client.actor_op(ActorOpKind.CREATE, (spec, creation))
                if created and held:  # kept here until the actor is dead (ActorEpoch)
                    client.actor_held[fields[0]] = held
        except BaseException:
            client.land_unsent(held)
            raise
        if not created:  # get_if_exists found it: the arguments were not used
            client.land_unsent(held)
        return _rebuild_handle(*fields)


def get_actor(name: str, namespace: str | None = None) -> "ActorHandle":
    """The handle of the live actor created with ``name=`` (in ``namespace``, default
    ``"default"``), from any process.

    Raises:
        ValueError: no live actor has that name.
        RepartirError: outside the driver, the node did not answer.
    """
    if context.cluster is not None:  # a driver connected to a cluster (docs/cluster.md)
        return context.cluster.actors.get_actor(name, namespace)
    if context.inner is not None:  # a task or actor on a cluster's node (cluster/inner.py)
        return context.inner.get_actor(name, namespace)
    client = driver.client()
    namespace = namespace or "default"
    node = client.node
    if node is None:
        return _rebuild_handle(*client.actor_op(ActorOpKind.GET_ACTOR, (namespace, name)))
    fields = node.named(namespace, name, (client.slot, client.pid))
    if fields is None:
        raise no_such_actor(name, namespace)
    return _rebuild_handle(*fields)


def kill_actor(actor: "ActorHandle", no_restart: bool = True) -> None:
    """Kill ``actor``'s process at once, from any process (see ``repartir.kill``); with
    ``no_restart``, return once it is dead (within 10 s)."""
    if context.cluster is not None:  # a driver connected to a cluster (docs/cluster.md)
        return context.cluster.actors.kill(actor, no_restart)
    if context.inner is not None and context.inner.kill(actor, no_restart):
        return None  # a cluster actor, killed by its node (cluster/inner.py)
    client = driver.client()
    node = client.node
    if node is not None:
        node.kill_actor(actor._slot, no_restart, actor_id=actor._actor_id)
    else:
        client.actor_op(ActorOpKind.KILL, (actor._actor_id, actor._slot, no_restart))
    if no_restart:  # once kill() returns, the actor is dead and its name is free
        deadline = time.monotonic() + 10
        while actor.state != "DEAD" and time.monotonic() < deadline:
            time.sleep(0.002)


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
        self._life: ActorLife | None = None  # this process's count of the actor's handles

    def __getattr__(self, name: str) -> "ActorMethod":
        methods = self.__dict__.get("_methods") or {}
        if name in methods:
            return ActorMethod(self, name, methods[name])
        if name in TERMINATE_METHODS:  # Ray's, and its repartir name: end the actor
            return ActorMethod(self, name, {"num_returns": 1, "is_async": False,
                                            "check": ArgCheck(f"{self._class_name}.{name}", ())})
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
        """A copy in flight: the node counts it (its token) from now until a process
        unpickles it, so the actor cannot end while the copy is on its way."""
        token = 0
        client = context.current_client()
        if client is not None and client.session == self._session:
            token = client.handle_sent(self._actor_id)
            captured = capturing()
            if captured is not None:  # kept with the task, object or actor that holds it
                captured.append(SentHandle(self, self._actor_id, token))
        return (_rebuild_handle, (self._actor_id, self._slot, self._class_name, self._methods,
                                  self._max_task_retries, self._session, token))

    def __repr__(self) -> str:
        return f"ActorHandle({self._class_name}, {self._actor_id.hex()[:12]})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)


def _rebuild_handle(actor_id: bytes, slot: int, class_name: str, methods: dict,
                    max_task_retries: int, session: str, token: int = 0) -> ActorHandle:
    """A handle unpickled (or made from the node's answer): it joins this process's count
    of the actor's handles (``ADD`` for the first one), then its copy has landed."""
    h = ActorHandle(actor_id, slot, class_name, methods, max_task_retries, session)
    client = context.current_client()
    if client is not None and client.session == session:
        h._life = client.life_of(actor_id)
        if token:
            client.handle_landed(actor_id, token)
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
        """A copy that calls with another ``num_returns`` (see :func:`method`).

        Raises:
            ValueError: ``num_returns`` is not an int from 0 to 65533, ``"streaming"`` or
                ``"dynamic"``.
        """
        if num_returns is not None:
            parse_num_returns(num_returns, False)
        return ActorMethod(self._handle, self._name, self._meta, num_returns)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor method {self._name} cannot be called directly: use "
                        f".{self._name}.remote(...)")

    def remote(self, *args: Any, **kwargs: Any):
        """Call the method; returns its ref(s) at once (a list when ``num_returns > 1``,
        ``None`` when it is 0, an
        ``ObjectRefGenerator`` for ``num_returns="streaming"``, the default of generator
        methods; one ref to a ``DynamicObjectRefGenerator`` for ``"dynamic"``).

        Raises:
            TypeError: the arguments do not fit the method's signature.
            SerializationError: an argument cannot be pickled.
        """

        check = self._meta["check"]
        if kwargs or not check.min_pos <= len(args) <= check.max_pos:
            check.check(args, kwargs)
        client = driver.client()
        h = self._handle
        nret = parse_num_returns(self._num_returns, False)
        retries = h._max_task_retries
        opts = TaskOptions(
            num_returns=nret,
            demand=(), priority=1, timeout=0.0,
            max_retries=(1 << 30) if retries == -1 else retries, retry_exceptions=False)
        fn_name = f"{h._class_name}.{self._name}"
        life = h._life  # the call keeps the handles' count until it is sent
        if nret == STREAMING:
            return submit_streaming(client, self._name, (0, 0), fn_name, args, kwargs, opts,
                                    target=h._slot, actor_id=h._actor_id, keep=life)
        refs = client.submit(self._name, (0, 0), fn_name, args, kwargs, opts, target=h._slot,
                             actor_id=h._actor_id, keep=life)
        if nret > 1:
            return refs
        return refs[0] if refs else None  # (num_returns=0, as in Ray)
