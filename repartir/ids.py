"""Identifiers of tasks and objects.

An object id is 16 bytes: an 8-byte random prefix chosen once per process and an 8-byte
counter, so ids made by different processes never collide without any coordination.  The
object id of a task's return ``i`` is the task id with the return index in its last two
bytes' high bits cleared -- concretely ``task_id[:14] + index.to_bytes(2)``, task ids
being made with their last two bytes zero.
"""

from __future__ import annotations

import itertools
import os
import threading

__all__ = ["new_task_id", "return_id", "task_of", "new_object_id", "mine", "reset_after_fork"]

_prefix = os.urandom(8)
_counter = itertools.count(1)
_lock = threading.Lock()


def _next() -> int:
    return next(_counter)  # itertools.count is atomic under the GIL


def new_task_id() -> bytes:
    """A fresh task id (16 bytes, last two bytes zero)."""
    return _prefix + (_next() << 16).to_bytes(8, "big")


def return_id(task_id: bytes, index: int) -> bytes:
    """The object id of return ``index`` (0-based, < 65535) of ``task_id``."""
    return task_id[:14] + (index + 1).to_bytes(2, "big")


def task_of(object_id: bytes) -> bytes:
    """The id of the task whose return ``object_id`` is (see :func:`return_id`)."""
    return object_id[:14] + b"\0\0"


def new_object_id() -> bytes:
    """A fresh id for an object made by ``put``."""
    return _prefix + ((_next() << 16) | 0xFFFF).to_bytes(8, "big")


def mine(object_or_task_id: bytes) -> bool:
    """Whether this process made the id."""
    return object_or_task_id[:8] == _prefix


def reset_after_fork() -> None:
    """Choose a new prefix (call in a child that was forked, so ids stay unique)."""
    global _prefix, _counter
    with _lock:
        _prefix = os.urandom(8)
        _counter = itertools.count(1)


os.register_at_fork(after_in_child=reset_after_fork)  # a forked child makes ids of its own
