"""``@remote`` on a function: ``RemoteFunction`` and its options."""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable

from ..scheduler import record
from ..serialization import dumps_code
from . import context, driver
from .messages import TaskOptions, validate_memory
from .signature import ArgCheck, arg_check
from .streaming import STREAMING, parse_num_returns, submit_streaming

__all__ = ["RemoteFunction", "validate_options", "parse_priority"]

_TASK_OPTIONS = {"num_cpus", "num_gpus", "num_returns", "max_retries", "resources", "name",
                 "retry_exceptions", "priority", "timeout", "scheduling_strategy", "memory",
                 "max_calls"}
_PRIORITY_NAMES = {"high": record.HIGH, "normal": record.NORMAL, "low": record.LOW}


def parse_priority(value: Any) -> int:
    """``"high"``/``"normal"``/``"low"`` (any case), or an enum member with such a name."""
    name = getattr(value, "name", value)
    if isinstance(name, str) and name.lower() in _PRIORITY_NAMES:
        return _PRIORITY_NAMES[name.lower()]
    raise ValueError(f"priority must be 'high', 'normal' or 'low', got {value!r}")


def validate_options(options: dict) -> dict:
    """Check option names and values; returns them.

    Raises:
        ValueError: an unknown option, or a value out of range.
    """
    unknown = set(options) - _TASK_OPTIONS
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; known: {sorted(_TASK_OPTIONS)}")
    parse_num_returns(options.get("num_returns", 1), False)
    mr = options.get("max_retries", 3)
    if not isinstance(mr, int) or mr < -1:
        raise ValueError(f"max_retries must be an int >= -1 (-1: for ever), got {mr!r}")
    for key in ("num_cpus", "num_gpus"):
        v = options.get(key, 0)
        if not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{key} must be a number >= 0, got {v!r}")
    validate_memory(options.get("memory"))
    mc = options.get("max_calls", 0)
    if isinstance(mc, bool) or not isinstance(mc, int) or mc < 0:
        raise ValueError(f"max_calls must be an int >= 0 (0: no limit), got {mc!r}")
    t = options.get("timeout")
    if t is not None and (not isinstance(t, (int, float)) or t <= 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {t!r}")
    re = options.get("retry_exceptions", False)
    if not isinstance(re, bool):
        types = tuple(re) if isinstance(re, (list, tuple)) else None
        if not types or not all(isinstance(c, type) and issubclass(c, BaseException)
                                for c in types):
            raise ValueError("retry_exceptions must be a bool or a list of exception types")
    if "priority" in options:
        parse_priority(options["priority"])
    return options


class RemoteFunction:
    """A function made remote.  ``f.remote(*args, **kwargs)`` submits a task and returns an
    ``ObjectRef`` at once (a list of ``num_returns`` refs when ``num_returns > 1``, ``None``
    when ``num_returns=0``).  ``f.options(**opts)`` returns a copy with other options
    (``max_calls`` excepted, as in Ray).

    A generator function streams by default, as in Ray: ``.remote()`` returns an
    ``ObjectRefGenerator`` (``num_returns="streaming"``).  With ``num_returns=N`` it must
    yield N items, one per ref (fewer or more: a ``ValueError`` in the refs); with
    ``num_returns="dynamic"`` one ref whose value is a ``DynamicObjectRefGenerator`` of
    the items' refs."""

    def __init__(self, fn: Callable, options: dict, key: bytes | None = None) -> None:
        self._name = getattr(fn, "__qualname__", repr(fn))
        if key is None:
            _refuse_async(fn, self._name)
        self._function = fn
        self._generator = _is_generator_function(fn)
        self._options = validate_options(dict(options))
        self._key = key or os.urandom(16)
        self._blob: bytes | None = None
        self._task_options: tuple[Any, TaskOptions] | None = None
        self._check: ArgCheck | None = None  # made at the first .remote()
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name} cannot be called directly: use "
            f"{self._name}.remote(...) to run it as a task, or call the original with "
            f"{self._name}._function(...).")

    def options(self, **options: Any) -> "RemoteFunction":
        """A copy with other options (those of ``@remote``).

        Raises:
            ValueError: an unknown option or a value out of range, or ``max_calls`` other
                than the function's (fixed by ``@remote``, as in Ray).
        """
        if options.get("max_calls", self._options.get("max_calls", 0)) != \
                self._options.get("max_calls", 0):
            raise ValueError(
                f"max_calls of {self._name} cannot be changed with .options() (as in Ray): "
                f"give it to @remote(max_calls=...), on a function of its own if needed")
        merged = dict(self._options)
        merged.update(options)
        rf = RemoteFunction(self._function, merged, self._key)
        rf._blob = self._blob
        rf._check = self._check
        return rf

    def _code(self) -> bytes:
        if self._blob is None:
            # with max_calls, the blob is the pair (function, max_calls): see Worker._run
            mc = self._options.get("max_calls", 0)
            self._blob = dumps_code((self._function, mc) if mc else self._function,
                                    f"remote function {self._name}")
        return self._blob

    def _opts_for(self, client) -> TaskOptions:
        cached = self._task_options
        if cached is not None and cached[0] is client:
            return cached[1]
        o = self._options
        re = o.get("retry_exceptions", False)
        mr = o.get("max_retries", 3)
        opts = TaskOptions(
            num_returns=parse_num_returns(o.get("num_returns"), self._generator),
            demand=client.demand_vector(o.get("num_cpus", 1), o.get("num_gpus", 0),
                                        o.get("resources") or {}, o.get("memory") or 0),
            priority=parse_priority(o.get("priority", "normal")),
            timeout=float(o.get("timeout") or 0.0),
            max_retries=(1 << 30) if mr == -1 else mr,
            retry_exceptions=re if isinstance(re, bool) else tuple(re),
        )
        self._task_options = (client, opts)
        return opts

    def remote(self, *args: Any, **kwargs: Any):
        """Submit the task; returns its ref(s) at once: one ``ObjectRef``, a list of
        ``num_returns`` of them, ``None`` for ``num_returns=0`` (the task still runs; an error
        it ends with is logged by the ``repartir`` logger), or an ``ObjectRefGenerator`` for
        ``num_returns="streaming"``.

        Raises:
            TypeError: the arguments do not fit the function's signature.
            SerializationError: an argument cannot be pickled.
            InfeasibleTaskError: no node can ever satisfy the task's resources.
        """
        check = self._check
        if check is None:
            check = self._check = arg_check(self._function, self._name)
        if kwargs or not check.min_pos <= len(args) <= check.max_pos:
            check.check(args, kwargs)
        if context.cluster is not None:  # a driver connected to a cluster (docs/cluster.md)
            return context.cluster.submit(self, args, kwargs)
        if context.inner is not None:  # a task on a cluster's node (cluster/inner.py)
            ref = context.inner.submit(self, args, kwargs)
            if ref is not None:  # else it fits this node: run it here
                return ref
        client = driver.client()
        opts = self._opts_for(client)
        loc = client.functions.get(self._key) or client.export_function(self._key, self._code)
        if opts.num_returns == STREAMING:
            return submit_streaming(client, self._key, loc, self._name, args, kwargs, opts)
        refs = client.submit(self._key, loc, self._name, args, kwargs, opts)
        if opts.num_returns > 1:
            return refs
        return refs[0] if refs else None  # (num_returns=0, as in Ray)

    def __reduce__(self):
        return (_rebuild, (self._function, self._options, self._key))

    def __repr__(self) -> str:
        return f"<RemoteFunction {self._name}>"


def _rebuild(fn: Callable, options: dict, key: bytes) -> RemoteFunction:
    return RemoteFunction(fn, options, key)


def _is_generator_function(fn: Callable) -> bool:
    """Whether calling ``fn`` makes a generator (also behind ``functools.partial`` or as the
    ``__call__`` of a callable object)."""
    call = fn if inspect.isroutine(fn) or isinstance(fn, functools.partial) \
        else getattr(type(fn), "__call__", fn)
    while isinstance(call, functools.partial):
        call = call.func
    return inspect.isgeneratorfunction(call)


def _refuse_async(fn: Callable, name: str) -> None:
    """Raises:
        ValueError: ``fn`` is an ``async def`` function or async generator (also behind
            ``functools.partial`` or as the ``__call__`` of a callable object), which a task
            cannot run: it would return a coroutine, as in Ray.
    """
    call = fn if inspect.isroutine(fn) or isinstance(fn, functools.partial) \
        else getattr(type(fn), "__call__", fn)
    while isinstance(call, functools.partial):
        call = call.func
    if inspect.iscoroutinefunction(call):
        raise ValueError(
            f"{name} is an 'async def' function, which a task cannot run (it would return a "
            f"coroutine). Define it with 'def' and run its coroutine inside with "
            f"asyncio.run(...), or make it a method of an actor: actor methods may be "
            f"'async def'.")
    if inspect.isasyncgenfunction(call):
        raise ValueError(
            f"{name} is an async generator, which a task cannot run. Use a plain generator "
            f"(it streams its items), or make it a method of an actor: actor methods may be "
            f"async generators.")
