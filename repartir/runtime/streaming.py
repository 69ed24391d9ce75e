"""Streaming generators: a task or actor method that ``yield``s, called with
``num_returns="streaming"``, returns an :class:`ObjectRefGenerator` that hands out one
``ObjectRef`` per item as soon as the worker has produced it (each item is stored and
announced to the owner the moment it is yielded)."""

from __future__ import annotations

import collections
import time
import weakref

from ..ids import new_object_id

__all__ = ["STREAMING", "ObjectRefGenerator", "StreamLink", "submit_streaming"]

STREAMING = -1  # num_returns value in task records meaning "streaming" (0: no returns)


class ObjectRefGenerator:
    """Iterator of the refs of a streaming task's items, in order.

    ``next()`` blocks until the next item exists or the task ended; if the task raised,
    the last ref's ``get`` raises that error.  ``completed()`` tells whether the task ended.
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
        client = self._client
        nap = 0.00005
        while True:
            client.poll()
            if self._items:
                return self._items.popleft()
            if self._done:
                if self._error is not None:
                    err, self._error = self._error, None
                    oid = new_object_id()
                    with client._lock:
                        client.table[oid] = [0, err, None, None]
                        return client.make_ref(oid)
                raise StopIteration
            time.sleep(nap)
            nap = min(nap * 2, 0.002)

    def __repr__(self) -> str:
        return f"ObjectRefGenerator(done={self._done}, buffered={len(self._items)})"


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
                     actor_id: bytes | None = None) -> ObjectRefGenerator:
    gen = ObjectRefGenerator(client)
    client.submit(fn_key, fn_loc, fn_name, args, kwargs, opts, target=target, stream=gen,
                  actor_id=actor_id)
    return gen


