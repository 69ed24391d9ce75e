"""What the processes of a node say to each other about tasks: inbox message kinds, task
options, the marker of a dependency inside an argument blob, and the completion of a failed
task; and how a running task is stopped (a signal to its worker, or killing it)."""

from __future__ import annotations

import os
import pickle
import signal
import struct
from typing import Sequence

from ..errors import InfeasibleTaskError, SerializationError
from ..scheduler import record
from ..serialization import error_payload, serialize

__all__ = ["ARENA_SPEC", "MSG_DONE", "MSG_REQUEST", "MSG_OBJECT", "MSG_CRASHED", "MSG_CALL",
           "MSG_ITEM", "MSG_ACTOR_EPOCH", "MSG_LARGE", "MSG_RELEASE", "MSG_OWNER_DIED", "OK",
           "FAILED", "CRASH", "TIMEOUT", "CANCEL", "CANCEL_ONE", "ACTOR_DIED", "EXITED_ON_PURPOSE",
           "TaskOptions", "Dep", "failed_message", "stop_task",
           "name_bad_argument", "demand_vector"]

ARENA_SPEC = struct.Struct("<QQ")
MSG_DONE, MSG_REQUEST, MSG_OBJECT, MSG_CRASHED, MSG_CALL, MSG_ITEM = 0, 1, 2, 3, 4, 5
MSG_ACTOR_EPOCH = 6  # an actor's process was replaced, or the actor died
MSG_RELEASE = 8  # (MSG_RELEASE, object id): a loan of a pending object ends (see lend)
MSG_OWNER_DIED = 9  # (MSG_OWNER_DIED, slot): that process died; objects it lent are lost
MSG_LARGE = 7  # (MSG_LARGE, offset, nbytes, generation): a message too large for an inbox,
#                 in an arena block the receiver claims, reads and frees
OK, FAILED = 0, 1
CRASH, TIMEOUT, CANCEL, ACTOR_DIED = 0, 1, 2, 3  # why a task stopped (MSG_CRASHED)
EXITED_ON_PURPOSE = 78  # exit code of an actor process whose method called sys.exit()
CANCEL_ONE = 4  # a stop request: cancel(recursive=False), the task but not its children


class TaskOptions:
    """A remote function's options, checked and turned into what a task record needs.

    Attributes:
        num_returns: objects the task returns (>= 1).
        demand: resource vector in milli-units (see :mod:`repartir.scheduler.record`).
        priority: ``record.HIGH``, ``NORMAL`` or ``LOW``.
        timeout: seconds before the running task is stopped (0: none).
        max_retries: re-runs after a worker crash (and matching exceptions).
        retry_exceptions: ``False``, ``True`` or a tuple of exception types to retry.
    """

    __slots__ = ("num_returns", "demand", "priority", "timeout", "max_retries",
                 "retry_exceptions")

    def __init__(self, num_returns: int, demand: tuple, priority: int, timeout: float,
                 max_retries: int, retry_exceptions) -> None:
        self.num_returns = num_returns
        self.demand = demand
        self.priority = priority
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_exceptions = retry_exceptions


class Dep:
    """Stands for the ``index``-th top-level ObjectRef argument inside a task's args blob."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self):
        return (Dep, (self.index,))


def failed_message(task_id: bytes, exc: BaseException, fn_name: str) -> bytes:
    """The completion message of a task that raised ``exc``."""
    return pickle.dumps((MSG_DONE, task_id, FAILED, error_payload(exc, fn_name), None), 5)


def stop_task(segment, task_id: bytes, reason: int, force: bool) -> bool:
    """Stop a running task: ``force`` kills its worker (the node then reports the task as
    cancelled or timed out, and retries the other tasks that worker ran); otherwise the
    worker gets ``SIGUSR1`` and raises ``TaskCancelledError``/``TaskTimeoutError`` inside
    the task.  Returns whether a worker running it was found."""
    found = segment.find_running(task_id)
    if found is None:
        return False
    slot, pid = found
    try:
        if force:
            segment.request_stop(slot, task_id, reason)
            os.kill(pid, signal.SIGKILL)
        else:
            segment.request_stop(slot, task_id, reason)
            os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        return False
    return True


def name_bad_argument(fn_name: str, args: Sequence, kwargs: dict) -> SerializationError:
    for i, a in enumerate(args):
        try:
            serialize(a)
        except SerializationError as exc:
            return SerializationError(
                f"argument {i} of {fn_name}() ({type(a).__qualname__}) cannot be serialized: "
                f"{exc.__cause__}. "
                + getattr(exc, "hint", "Pass something picklable, or create it inside the task."))
    for k, a in kwargs.items():
        try:
            serialize(a)
        except SerializationError as exc:
            return SerializationError(
                f"keyword argument {k!r} of {fn_name}() ({type(a).__qualname__}) cannot be "
                f"serialized: {exc.__cause__}. Pass something picklable, or create it inside "
                f"the task."
            )
    return SerializationError(f"the arguments of {fn_name}() cannot be serialized")


def demand_vector(names: list, totals: tuple, num_cpus: float, num_gpus: float,
                  resources: dict) -> tuple:
    """The resource vector (milli-units, in the order of ``names``: CPU, GPU, then the
    node's custom resources) of a task asking for these amounts on a node with ``totals``.

    Raises:
        ValueError: a negative amount, or CPU/GPU passed in ``resources``.
        InfeasibleTaskError: the node does not have that much of something, or does not
            have the resource at all.
    """
    want = {"CPU": num_cpus, "GPU": num_gpus}
    for name, amount in (resources or {}).items():
        if name in ("CPU", "GPU"):
            raise ValueError(f"ask for {name} with num_{name.lower()}s=, not resources=")
        want[name] = amount
    v = [0] * record.NRES
    for name, amount in want.items():
        if amount < 0:
            raise ValueError(f"resource {name} must be >= 0, got {amount}")
        if not amount:
            continue
        if name not in names:
            raise InfeasibleTaskError(
                f"the task asks for {amount:g} {name} but no node has resource {name!r} "
                f"(declared: {names}); declare it with init(resources={{{name!r}: n}}).")
        i = names.index(name)
        v[i] = int(round(amount * 1000))
        if v[i] > totals[i]:
            raise InfeasibleTaskError(
                f"the task asks for {amount:g} {name} but the node has only "
                f"{totals[i] / 1000:g}; it could never run. Ask for less, or start the "
                f"node with more (init(num_cpus=..., num_gpus=..., resources=...)).")
    v = tuple(v)
    return record.DEFAULT_VECTOR if v == record.DEFAULT_VECTOR else v
