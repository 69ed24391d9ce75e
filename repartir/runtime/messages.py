"""Tasks between processes, apart from the messages themselves (``protocol.py``): task
options, the marker of a dependency inside an argument blob, the completion of a failed
task, and how a running task is stopped (a signal to its worker, or killing it)."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
from typing import Sequence

from ..errors import InfeasibleTaskError, SerializationError
from ..scheduler import record
from ..serialization import error_from_payload, error_payload, serialize
from .protocol import MSG_DONE, Status, StopRequest, encode

__all__ = ["ARENA_SPEC", "EXITED_ON_PURPOSE", "TaskOptions", "Dep", "failed_message",
           "stop_task", "name_bad_argument", "demand_vector", "validate_memory",
           "log_unreturned_error"]

ARENA_SPEC = struct.Struct("<QQ")
EXITED_ON_PURPOSE = 78  # exit code of an actor process whose method called sys.exit()


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


def log_unreturned_error(fn_name: str, error: tuple) -> None:
    """A task of ``num_returns=0`` ended with an error that no ref can carry to a ``get``:
    log it (logger ``repartir``, level ERROR, with the remote traceback) instead of losing
    it.  ``error`` is the location its refs would have got: ``("e", payload)`` for an
    exception the task raised, ``("x", pickled error)`` for one of the runtime (a crash, a
    cancel, a time-out)."""
    try:
        err = error_from_payload(error[1]) if error[0] == "e" else pickle.loads(error[1])
    except Exception as exc:  # noqa: BLE001 -- the report must not fail the poll
        err = exc
    logging.getLogger("repartir").error(
        "repartir: task %s (num_returns=0) failed and no ref can raise it: %s: %s", fn_name,
        type(err).__name__, err)


def failed_message(task_id: bytes, exc: BaseException, fn_name: str) -> bytes:
    """The completion message of a task that raised ``exc``."""
    return encode((MSG_DONE, task_id, int(Status.FAILED), error_payload(exc, fn_name), None))


def stop_task(segment, task_id: bytes, reason: StopRequest, force: bool) -> bool:
    """Stop a running task: ``force`` kills its worker (the node then reports the task as
    cancelled or timed out, and retries the other tasks that worker ran); otherwise the
    worker gets ``SIGUSR1`` and raises ``TaskInterrupted`` inside the task (its owner gets
    ``TaskCancelledError``/``TaskTimeoutError``).  Returns whether a worker running it was
    found."""
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


def validate_memory(memory) -> None:
    """Raises:
        ValueError: ``memory`` (bytes of the ``memory`` resource) is not ``None`` or a
            number >= 0.
    """
    if memory is not None and (isinstance(memory, bool) or not isinstance(memory, (int, float))
                               or memory < 0):
        raise ValueError(f"memory is the bytes a task or actor reserves, a number >= 0, got "
                         f"{memory!r}")


def _amount(name: str, amount: float) -> str:
    if name == "memory":
        return f"{amount:,.0f} bytes ({amount / 2**30:.3g} GiB) of memory"
    return f"{amount:g} {name}"


def demand_vector(names: list, totals: tuple, num_cpus: float, num_gpus: float,
                  resources: dict, memory: float = 0) -> tuple:
    """The resource vector (milli-units, in the order of ``names``: CPU, GPU, memory, then
    the node's custom resources) of a task or actor asking for these amounts on a node with
    ``totals``; ``memory`` in bytes.

    Raises:
        ValueError: a negative amount, or CPU/GPU/memory passed in ``resources``.
        InfeasibleTaskError: the node does not have that much of something, or does not
            have the resource at all (a node started with ``num_cpus=0`` runs only what asks
            for no CPU).
    """
    want = {"CPU": num_cpus, "GPU": num_gpus, "memory": memory}
    for name, amount in (resources or {}).items():
        if name in ("CPU", "GPU"):
            raise ValueError(f"ask for {name} with num_{name.lower()}s=, not resources=")
        if name == "memory":
            raise ValueError("ask for memory with memory= (bytes), not resources=")
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
            if name == "CPU" and totals[i] == 0:
                raise InfeasibleTaskError(
                    f"the task asks for {amount:g} CPU but this node was started with "
                    f"init(num_cpus=0): it runs only tasks and actors of num_cpus=0 (a "
                    f"cluster, not available yet, would run it on another node). Ask for "
                    f"num_cpus=0, or start the node with CPUs.")
            raise InfeasibleTaskError(
                f"the task asks for {_amount(name, amount)} but the node has only "
                f"{_amount(name, totals[i] / 1000)}; it could never run. Ask for less, or "
                f"start the node with more (init(num_cpus=..., num_gpus=..., memory=..., "
                f"resources=...)).")
    v = tuple(v)
    return record.DEFAULT_VECTOR if v == record.DEFAULT_VECTOR else v
