"""``Queue``: a first-in, first-out queue shared by the driver, tasks and actors (Ray's
``ray.util.queue.Queue``), kept by an async actor of its own and built on the public API.

::

    import repartir
    from repartir.util.queue import Empty, Queue

    q = Queue(maxsize=100)            # anywhere; pass it to tasks and actors

    @repartir.remote
    def produce(q, n):
        for i in range(n):
            q.put(i)                  # blocks while the queue is full

    repartir.get(produce.remote(q, 10))
    print([q.get(timeout=5) for _ in range(10)])    # [0, 1, ..., 9]
    try:
        q.get(timeout=0.1)
    except Empty:
        pass

Each operation is one call to the queue's actor (an ``async def`` actor taking no CPU, so a
blocked ``get`` or ``put`` waits there without holding up the others).  Items are stored as
a task's arguments are (numpy arrays in the object store; an ``ObjectRef`` given as the item
itself is replaced by its value, as in Ray).  A queue is created, used and shut down in the
driver, tasks and actors alike; its actor ends with the last copy of the queue anywhere (as
any actor with its last handle), or at :meth:`Queue.shutdown`.  Two *tasks* that wait on
each other through a queue (a producer and a consumer) can hang: a task waiting for the
queue actor's answer may run the other one on its worker's stack (helping), and resumes only
when that one returns -- see ``docs/util.md``, "Queue", for what works.
"""

from __future__ import annotations

import asyncio
from typing import Any

import repartir
from repartir.errors import Empty, Full, RepartirError

__all__ = ["Queue", "Empty", "Full"]


class _QueueActor:
    """The queue itself, in its actor's process (Ray's ``_QueueActor``)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            raise Full(f"the queue stayed full (maxsize {self.maxsize}) for {timeout} s") \
                from None

    async def get(self, timeout: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Empty(f"the queue stayed empty for {timeout} s") from None

    def put_nowait(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"the queue is full (maxsize {self.maxsize})") from None

    def put_nowait_batch(self, items: list) -> None:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            raise Full(f"Cannot add {len(items)} items to queue of size "
                       f"{self.queue.qsize()} and maxsize {self.maxsize}.")
        for item in items:
            self.queue.put_nowait(item)

    def get_nowait(self) -> Any:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("the queue is empty") from None

    def get_nowait_batch(self, num_items: int) -> list:
        if num_items > self.queue.qsize():
            raise Empty(f"Cannot get {num_items} items from queue of size "
                        f"{self.queue.qsize()}.")
        return [self.queue.get_nowait() for _ in range(num_items)]


def _plain(err: BaseException) -> BaseException:
    """The ``Empty``/``Full`` the queue's actor raised, without the task error around it
    (``repartir.get`` raises a ``TaskError`` that is also an ``Empty``)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, (Empty, Full)) else err


class Queue:
    """A FIFO queue shared by the driver, tasks and actors (Ray's
    ``ray.util.queue.Queue``).  Pass it to tasks and actors as an argument (or inside
    one); every copy uses the same queue.

    Args:
        maxsize: the most items the queue holds (an ``int``; default 0: no limit).
        actor_options: options of the queue's actor (``Cls.options(...)``), e.g.
            ``{"name": "jobs"}``; default none (``num_cpus=0``).

    Raises:
        ValueError: ``maxsize`` is not an int >= 0.
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0 (0: no limit), got {maxsize!r}")
        self.maxsize = maxsize
        self.actor = repartir.remote(_QueueActor).options(**(actor_options or {})).remote(
            maxsize)

    def _handle(self):
        if self.actor is None:
            raise RepartirError("this Queue was shut down (Queue.shutdown()); make a new one")
        return self.actor

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue now."""
        return repartir.get(self._handle().qsize.remote())

    def qsize(self) -> int:
        """The number of items in the queue now (as :meth:`size`)."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue holds no item now."""
        return repartir.get(self._handle().empty.remote())

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items now (never, with ``maxsize=0``)."""
        return repartir.get(self._handle().full.remote())

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item`` at the end.  With ``block`` (the default), wait for a free place,
        at most ``timeout`` seconds (``None``: no limit); without, take one at once.

        Raises:
            Full: no free place at once (``block=False``), or none within ``timeout``.
            ValueError: ``timeout`` is negative.
        """
        try:
            if not block:
                repartir.get(self._handle().put_nowait.remote(item))
            else:
                _check_timeout(timeout)
                repartir.get(self._handle().put.remote(item, timeout))
        except Full as err:
            raise _plain(err) from None

    async def put_async(self, item: Any, block: bool = True,
                        timeout: float | None = None) -> None:
        """As :meth:`put`, awaited in asyncio code (an async actor, ``asyncio.run``)."""
        try:
            if not block:
                await self._handle().put_nowait.remote(item)
            else:
                _check_timeout(timeout)
                await self._handle().put.remote(item, timeout)
        except Full as err:
            raise _plain(err) from None

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the first item.  With ``block`` (the default), wait for one,
        at most ``timeout`` seconds (``None``: no limit); without, take one at once.

        Raises:
            Empty: no item at once (``block=False``), or none within ``timeout``.
            ValueError: ``timeout`` is negative.
        """
        try:
            if not block:
                return repartir.get(self._handle().get_nowait.remote())
            _check_timeout(timeout)
            return repartir.get(self._handle().get.remote(timeout))
        except Empty as err:
            raise _plain(err) from None

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """As :meth:`get`, awaited in asyncio code."""
        try:
            if not block:
                return await self._handle().get_nowait.remote()
            _check_timeout(timeout)
            return await self._handle().get.remote(timeout)
        except Empty as err:
            raise _plain(err) from None

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``.

        Raises:
            Full: the queue is full.
        """
        return self.put(item, block=False)

    def put_nowait_batch(self, items: list) -> None:
        """Add every item of ``items`` at once, in order, or none of them.

        Raises:
            TypeError: ``items`` is not a list.
            Full: the queue has fewer than ``len(items)`` free places.
        """
        if not isinstance(items, list):
            raise TypeError(f"put_nowait_batch() takes a list of items, got "
                            f"{type(items).__qualname__}")
        try:
            repartir.get(self._handle().put_nowait_batch.remote(items))
        except Full as err:
            raise _plain(err) from None

    def get_nowait(self) -> Any:
        """``get(block=False)``.

        Raises:
            Empty: the queue is empty.
        """
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Remove and return the first ``num_items`` items at once (a list, in order), or
        none of them.

        Raises:
            TypeError: ``num_items`` is not an int.
            ValueError: ``num_items`` is negative.
            Empty: the queue holds fewer than ``num_items`` items.
        """
        if not isinstance(num_items, int) or isinstance(num_items, bool):
            raise TypeError(f"get_nowait_batch() takes an int, got "
                            f"{type(num_items).__qualname__}")
        if num_items < 0:
            raise ValueError(f"num_items must be >= 0, got {num_items}")
        try:
            return repartir.get(self._handle().get_nowait_batch.remote(num_items))
        except Empty as err:
            raise _plain(err) from None

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """End the queue's actor; the items left are lost and this queue, and every copy
        of it, cannot be used any more (``ActorDiedError`` in copies, ``RepartirError``
        here).  Without ``force``, it first waits, at most ``grace_period_s`` seconds,
        until the actor has taken the calls this process made before (a ``put_async`` not
        yet awaited, say); then, or with ``force`` at once, the actor is killed (a ``get``
        or ``put`` still blocked in another process raises ``ActorDiedError``).  Calling
        it twice does nothing."""
        if self.actor is None:
            return
        if not force:
            done = self.actor.qsize.remote()  # after this process's earlier calls
            repartir.wait([done], timeout=grace_period_s)
        repartir.kill(self.actor)
        self.actor = None


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
