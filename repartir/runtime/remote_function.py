"""``@remote`` on a function: ``RemoteFunction`` and its options."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

from ..serialization import dumps_code
from . import driver

__all__ = ["RemoteFunction", "validate_options"]

_TASK_OPTIONS = {"num_cpus", "num_gpus", "num_returns", "max_retries", "resources", "name",
                 "retry_exceptions", "scheduling_strategy", "memory"}


def validate_options(options: dict) -> dict:
    """Check option names and values; returns them.

    Raises:
        ValueError / TypeError: an unknown option, or a value out of range.
    """
    unknown = set(options) - _TASK_OPTIONS
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; known: {sorted(_TASK_OPTIONS)}")
    nr = options.get("num_returns", 1)
    if not isinstance(nr, int) or nr < 1 or nr > 65534:
        raise ValueError(f"num_returns must be an int between 1 and 65534, got {nr!r}")
    mr = options.get("max_retries", 3)
    if not isinstance(mr, int) or mr < -1:
        raise ValueError(f"max_retries must be an int >= -1 (-1: forever), got {mr!r}")
    nc = options.get("num_cpus", 1)
    if not isinstance(nc, (int, float)) or nc < 0:
        raise ValueError(f"num_cpus must be a number >= 0, got {nc!r}")
    return options


class RemoteFunction:
    """A function made remote.  ``f.remote(*args, **kwargs)`` submits a task and returns an
    ``ObjectRef`` at once (a list of ``num_returns`` refs when ``num_returns > 1``).
    ``f.options(**opts)`` returns a copy with other options."""

    def __init__(self, fn: Callable, options: dict, key: bytes | None = None) -> None:
        self._function = fn
        self._options = validate_options(dict(options))
        self._key = key or os.urandom(16)
        self._name = getattr(fn, "__qualname__", repr(fn))
        self._blob: bytes | None = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name} cannot be called directly: use "
            f"{self._name}.remote(...) to run it as a task, or call the original with "
            f"{self._name}._function(...).")

    def options(self, **options: Any) -> "RemoteFunction":
        merged = dict(self._options)
        merged.update(options)
        rf = RemoteFunction(self._function, merged, self._key)
        rf._blob = self._blob
        return rf

    def _code(self) -> bytes:
        if self._blob is None:
            self._blob = dumps_code(self._function, f"remote function {self._name}")
        return self._blob

    def remote(self, *args: Any, **kwargs: Any):
        client = driver.client()
        loc = client.functions.get(self._key) or client.export_function(self._key, self._code)
        opts = self._options
        nret = opts.get("num_returns", 1)
        mr = opts.get("max_retries", 3)
        refs = client.submit(self._key, loc, self._name, args, kwargs, nret,
                             (1 << 30) if mr == -1 else mr)
        return refs[0] if nret == 1 else refs

    def __reduce__(self):
        return (_rebuild, (self._function, self._options, self._key))

    def __repr__(self) -> str:
        return f"<RemoteFunction {self._name}>"


def _rebuild(fn: Callable, options: dict, key: bytes) -> RemoteFunction:
    return RemoteFunction(fn, options, key)
