"""``ActorPool``: spread calls over a fixed set of actors, one call per actor at a time (Ray's
``ray.util.ActorPool``), built on the public API only (actor handles, ``wait``, ``get``).

::

    import repartir
    from repartir.util import ActorPool

    @repartir.remote
    class Doubler:
        def double(self, v):
            return 2 * v

    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    print(list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4])))   # [2, 4, 6, 8]

A value submitted while every actor is busy waits in the pool (in this process) and is
called as soon as a result is taken with ``get_next``/``get_next_unordered`` and its actor
is free again.  Results are taken one by one: a failed call raises its error when its
result is taken, its actor goes back to the pool, and the other results stay to be taken.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

import repartir

__all__ = ["ActorPool"]

_TIMED_OUT = "Timed out waiting for result"


def _refs_of(future: Any) -> list:
    """The refs of what ``fn`` returned: one ``ObjectRef``, or a list or tuple of them (a
    method with ``num_returns > 1``)."""
    if isinstance(future, repartir.ObjectRef):
        return [future]
    if isinstance(future, (list, tuple)) and future and all(
            isinstance(r, repartir.ObjectRef) for r in future):
        return list(future)
    raise TypeError(
        f"the function given to ActorPool must return what an actor method's .remote() "
        f"returns (an ObjectRef, or a list of them), got {type(future).__qualname__}: "
        f"write e.g. lambda actor, value: actor.method.remote(value)")


class ActorPool:
    """A pool of actors taking one call each at a time (Ray's ``ray.util.ActorPool``).

    Args:
        actors: the actor handles (``ActorHandle``) the pool calls; the pool may start
            empty and get actors with :meth:`push`.

    Submission order is kept by :meth:`get_next` (and :meth:`map`); :meth:`get_next_unordered`
    (and :meth:`map_unordered`) takes whichever result is ready first.  Unlike Ray, the two
    may be mixed: :meth:`get_next` always takes the oldest result not yet taken.  Not
    thread-safe (as Ray's): use one pool from one thread.
    """

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle_actors: list = list(actors)
        for a in self._idle_actors:
            _check_actor(a)
        self._busy: dict[int, tuple[Any, list, Any]] = {}  # index -> (future, refs, actor)
        self._next_task_index = 0
        self._pending_submits: list[tuple[Callable, Any]] = []  # waiting for a free actor

    # -- submitting ------------------------------------------------------------------

    def submit(self, fn: Callable[[Any, Any], Any], value: Any) -> None:
        """Call ``fn(actor, value)`` on an idle actor -- ``fn`` must return the ref(s) of
        one actor call, e.g. ``lambda a, v: a.method.remote(v)`` -- or, when every actor is
        busy, keep ``(fn, value)`` until one is free (it is called when a result is taken).
        Returns nothing: take the results with :meth:`get_next` or
        :meth:`get_next_unordered`, in the order of the calls to ``submit``.

        Raises:
            TypeError: ``fn`` did not return an ObjectRef or a list of them.
        """
        if self._idle_actors:
            actor = self._idle_actors.pop()
            try:
                future = fn(actor, value)
                refs = _refs_of(future)
            except BaseException:
                self._idle_actors.append(actor)
                raise
            self._busy[self._next_task_index] = (future, refs, actor)
            self._next_task_index += 1
        else:
            self._pending_submits.append((fn, value))

    def map(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """Call ``fn(actor, v)`` for every ``v`` of ``values`` over the pool's actors and
        yield the results in the order of ``values``.  Results not yet taken from earlier
        submissions, and values still waiting for an actor, are dropped first (Ray drops
        the results, and calls the waiting values before dropping theirs too).  The calls
        are submitted at once (those beyond the number of actors as actors free up while
        results are taken); a failed call raises its error from the iterator, which then
        ends: the remaining results can still be taken with :meth:`get_next`.

        Raises:
            TypeError: ``fn`` did not return an ObjectRef or a list of them.
        """
        self._drop_results()
        for v in values:
            self.submit(fn, v)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next()
        return results()

    def map_unordered(self, fn: Callable[[Any, Any], Any],
                      values: Iterable[Any]) -> Iterator[Any]:
        """As :meth:`map`, but yield each result as soon as it is ready, in any order."""
        self._drop_results()
        for v in values:
            self.submit(fn, v)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next_unordered()
        return results()

    # -- taking results --------------------------------------------------------------

    def has_next(self) -> bool:
        """Whether a submitted call's result is still to be taken (a call waiting for a
        free actor counts once it has one, as in Ray)."""
        return bool(self._busy)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The result of the oldest call not yet taken, waiting up to ``timeout`` seconds
        (``None``: no limit).  Its actor goes back to the pool (and takes the oldest value
        waiting in :meth:`submit`), whether the call succeeded or not.

        Returns:
            the call's value (a list for a call with several returns).

        Raises:
            StopIteration: no result is left to take (``has_next()`` is false).
            TimeoutError: the result was not ready within ``timeout``; it stays to be
                taken, unless ``ignore_if_timedout`` is true: then it is dropped and its
                actor goes back to the pool.
            ValueError: ``timeout`` is negative.
            the call's error: as ``repartir.get`` raises it (``TaskError``, and the
                method's own exception type).
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        _check_timeout(timeout)
        index = min(self._busy)
        refs = self._busy[index][1]
        if timeout is not None:
            ready, _ = repartir.wait(refs, num_returns=len(refs), timeout=timeout)
            if len(ready) < len(refs):
                self._timed_out(index, ignore_if_timedout)
        return self._take(index)

    def get_next_unordered(self, timeout: float | None = None,
                           ignore_if_timedout: bool = False) -> Any:
        """The result of any call that is ready (the oldest of those ready), waiting up to
        ``timeout`` seconds for one (``None``: no limit).  Its actor goes back to the pool.

        Raises:
            StopIteration: no result is left to take.
            TimeoutError: no result was ready within ``timeout``; with
                ``ignore_if_timedout``, the oldest call is dropped (its actor goes back to
                the pool), otherwise nothing changes.
            ValueError: ``timeout`` is negative.
            the call's error: as ``repartir.get`` raises it.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        _check_timeout(timeout)
        index = self._first_ready(timeout)
        if index is None:
            self._timed_out(min(self._busy), ignore_if_timedout)
        return self._take(index)

    # -- the actors --------------------------------------------------------------------

    def has_free(self) -> bool:
        """Whether an actor is idle and no submitted value waits for one."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self) -> Any | None:
        """Take an idle actor out of the pool (``None`` when :meth:`has_free` is false)."""
        if self.has_free():
            return self._idle_actors.pop()
        return None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool (it takes the oldest value waiting in :meth:`submit`).

        Raises:
            ValueError: the actor is already in the pool, idle or busy.
            TypeError: ``actor`` is not an actor handle.
        """
        _check_actor(actor)
        busy = [a for _, _, a in self._busy.values()]
        if actor in self._idle_actors or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

    # -- inside ------------------------------------------------------------------------

    def _take(self, index: int) -> Any:
        future, _refs, actor = self._busy.pop(index)
        self._return_actor(actor)
        return repartir.get(future)

    def _timed_out(self, index: int, ignore: bool) -> None:
        if not ignore:
            raise TimeoutError(_TIMED_OUT)
        future, _refs, actor = self._busy.pop(index)
        self._return_actor(actor)
        raise TimeoutError(f"{_TIMED_OUT}. The task {future} has been ignored.")

    def _first_ready(self, timeout: float | None) -> int | None:
        """The oldest call whose refs are all ready, waiting up to ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            flat = list(dict.fromkeys(r for _, refs, _ in self._busy.values() for r in refs))
            ready, not_ready = repartir.wait(flat, num_returns=len(flat), timeout=0)
            done = set(ready)
            for index, (_, refs, _) in sorted(self._busy.items()):
                if all(r in done for r in refs):
                    return index
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            repartir.wait(not_ready, num_returns=1, timeout=left)

    def _return_actor(self, actor: Any) -> None:
        self._idle_actors.append(actor)
        if self._pending_submits:
            self.submit(*self._pending_submits.pop(0))

    def _drop_results(self) -> None:
        """Forget every result not yet taken (their actors go back to the pool) and every
        value still waiting for an actor."""
        self._pending_submits.clear()
        while self.has_next():
            future, _refs, actor = self._busy.pop(min(self._busy))
            self._return_actor(actor)


def _check_actor(actor: Any) -> None:
    if not isinstance(actor, repartir.ActorHandle):
        raise TypeError(f"ActorPool takes actor handles (what Cls.remote() returns), got "
                        f"{type(actor).__qualname__}")


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout}")
