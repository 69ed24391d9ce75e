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
counts its handles through one :class:`ActorLife` they share; when the last one dies, an
exit call is queued behind that process's calls, and the process is stopped once the exit
call has run (so every call made before runs to the end, and its results stay readable).
A handle that was passed to a task or another actor makes its actor live until
``repartir.kill()`` or ``shutdown()`` (copies in other processes are not counted), and so
does ``lifetime="detached"``.
"""

from __future__ import annotations

import inspect
import os
import threading
from typing import Any

from ..errors import RepartirError, SerializationError
from ..scheduler.segment import SlotState
from ..serialization import dumps_code
from . import context, driver
from .actor_life import TERMINATE_METHODS, ActorLife
from .messages import TaskOptions, name_bad_argument, validate_memory
from .objectref import capture_refs
from .signature import ArgCheck, arg_check, method_arg_check
from .streaming import STREAMING, parse_num_returns, submit_streaming

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "ACTOR_OPTIONS"]

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
                                      opts.get("resources") or {}, opts.get("memory") or 0)
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
            handle._life = ActorLife(client, slot, actor_id, self._cls.__qualname__)
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
        self._life: ActorLife | None = None  # set in the creating process

    def _copy(self, life: "ActorLife | None") -> "ActorHandle":
        h = ActorHandle(self._actor_id, self._slot, self._class_name, self._methods,
                        self._max_task_retries, self._session)
        h._life = life
        return h

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
        if nret == STREAMING:
            return submit_streaming(client, self._name, (0, 0), fn_name, args, kwargs, opts,
                                    target=h._slot, actor_id=h._actor_id)
        refs = client.submit(self._name, (0, 0), fn_name, args, kwargs, opts, target=h._slot,
                             actor_id=h._actor_id)
        if nret > 1:
            return refs
        return refs[0] if refs else None  # (num_returns=0, as in Ray)
