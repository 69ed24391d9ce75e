"""Generators, as Ray has them.  A task or actor method that ``yield``s streams by default
(``num_returns="streaming"``): ``.remote()`` returns an :class:`ObjectRefGenerator` that
hands out one ``ObjectRef`` per item as soon as the worker has produced it (each item is
stored and announced to the owner the moment it is yielded).  Called with
``num_returns=N`` it fills one ref per item; with ``num_returns="dynamic"`` it returns one
ref whose value is a :class:`DynamicObjectRefGenerator` of the items' refs (the executor,
``executor.py``, does both)."""

from __future__ import annotations

import asyncio
import collections
import time
import weakref
from typing import Any

from ..ids import new_object_id

__all__ = ["STREAMING", "DYNAMIC", "ObjectRefGenerator", "DynamicObjectRefGenerator",
           "StreamLink", "submit_streaming", "parse_num_returns"]

STREAMING = -1  # num_returns value in task records meaning "streaming" (0: no returns)
DYNAMIC = -2  # num_returns value in task records meaning "dynamic" (one ref: the list)


def parse_num_returns(value: Any, is_generator: bool) -> int:
    """The ``num_returns`` of a task record for the option ``value`` (``None``: not given;
    a generator function then streams, as in Ray).

    Raises:
        ValueError: not an int between 0 and 65533, ``"streaming"`` or ``"dynamic"``.
    """
    if value is None:
        return STREAMING if is_generator else 1
    if value == "streaming":
        return STREAMING
    if value == "dynamic":
        return DYNAMIC
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65533:
        raise ValueError(f"num_returns must be an int between 0 and 65533, 'streaming' or "
                         f"'dynamic', got {value!r}")
    return value


class ObjectRefGenerator:
    """Iterator of the refs of a streaming task's items, in order (Ray's
    ``ObjectRefGenerator``).

    ``next()`` blocks until the next item exists or the task ended; if the task raised,
    one more ref comes last, whose ``get`` raises that error.  ``async for ref in gen``
    (``__aiter__``/``__anext__``) waits the same way without blocking the event loop, in
    async actors and in asyncio code of the driver.  ``completed()`` tells whether the
    task ended.  Not thread-safe, and not to be passed to other tasks (as in Ray).
    """

    def __init__(self, client) -> None:
        self._client = client
        self._items: collections.deque = collections.deque()
        self._done = False
        self._error = None
        self._task_id: bytes | None = None

    # called by the owner's poll(), under its lock
    def add(self, ref) -> None:
        self._items.append(ref)

    def end(self, error_loc) -> None:
        self._done = True
        self._error = error_loc

    def completed(self) -> bool:
        return self._done

    def __iter__(self) -> "ObjectRefGenerator":
        return self

    def __next__(self):
        nap = 0.00005
        while True:
            ref = self._take()
            if ref is not None:
                return ref
            time.sleep(nap)
            nap = min(nap * 2, 0.002)

    def __aiter__(self) -> "ObjectRefGenerator":
        return self

    async def __anext__(self):
        nap = 0.00005
        while True:
            try:
                ref = self._take()
            except StopIteration:
                raise StopAsyncIteration from None
            if ref is not None:
                return ref
            await asyncio.sleep(nap)
            nap = min(nap * 2, 0.002)

    def _take(self):
        """The next ref, or ``None`` while there is none yet.

        Raises:
            StopIteration: the task ended and every ref was handed out.
        """
        client = self._client
        client.poll()
        if self._items:
            return self._items.popleft()
        if self._done:
            if self._error is not None:
                err, self._error = self._error, None
                oid = new_object_id()
                with client._lock:
                    client.objects.own(oid, err)
                    return client.make_ref(oid)
            raise StopIteration
        return None

    def __repr__(self) -> str:
        return f"ObjectRefGenerator(done={self._done}, buffered={len(self._items)})"


class DynamicObjectRefGenerator:
    """The value of the ref a ``num_returns="dynamic"`` call returns (Ray's
    ``DynamicObjectRefGenerator``): the refs of the items its generator yielded, in order
    -- iterable, with ``len()`` and indexing.  If the generator raised, one more ref comes
    last, whose ``get`` raises that error.  It can be passed to other tasks (its refs
    travel with it)."""

    __slots__ = ("_refs",)

    def __init__(self, refs: list) -> None:
        self._refs = list(refs)

    def __iter__(self):
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, index):
        return self._refs[index]

    def __reduce__(self):
        return (DynamicObjectRefGenerator, (self._refs,))

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"


class StreamLink:
    """A streaming task's tie to its ``ObjectRefGenerator``, weak: once the caller dropped
    the generator, items that still arrive are freed at once instead of piling up."""

    __slots__ = ("_gen", "delivered")

    def __init__(self, gen) -> None:
        self._gen = weakref.ref(gen)
        self.delivered = 0  # items handed to the generator: a retry skips that many

    def alive(self) -> bool:
        return self._gen() is not None

    def add(self, ref) -> None:
        gen = self._gen()
        if gen is not None:
            gen.add(ref)

    def end(self, error_loc) -> None:
        gen = self._gen()
        if gen is not None:
            gen.end(error_loc)


def submit_streaming(client, fn_key, fn_loc, fn_name: str, args, kwargs, opts,
                     target: int | None = None,
                     actor_id: bytes | None = None, keep=None) -> ObjectRefGenerator:
    gen = ObjectRefGenerator(client)
    client.submit(fn_key, fn_loc, fn_name, args, kwargs, opts, target=target, stream=gen,
                  actor_id=actor_id, keep=keep)
    return gen


