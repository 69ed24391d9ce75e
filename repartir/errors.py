"""Exceptions raised by repartir.

Every exception derives from :class:`RepartirError`; those that mirror a built-in
condition also derive from the built-in type (``GetTimeoutError`` is a ``TimeoutError``)
so existing ``except`` clauses keep working.  A task's exception is raised by ``get`` as
an instance of :class:`TaskError` *and* of the user's exception type, with the remote
traceback text attached (as in Ray's ``RayTaskError`` and CPython's
``concurrent.futures.process._RemoteTraceback``).
"""

from __future__ import annotations

import queue as _queue

__all__ = [
    "RepartirError",
    "TaskError",
    "SerializationError",
    "GetTimeoutError",
    "WorkerCrashedError",
    "ObjectStoreFullError",
    "ObjectLostError",
    "TaskCancelledError",
    "TaskTimeoutError",
    "TaskInterrupted",
    "InfeasibleTaskError",
    "ActorDiedError",
    "ActorExit",
    "AlreadyInitializedError",
    "RepartirSystemError",
    "DeviceError",
    "DeviceNotFoundError",
    "WireError",
    "WireTimeoutError",
    "TokenError",
    "EncryptionError",
    "RemoteTraceback",
    "Empty",
    "Full",
    "NodeDiedError",
]


class RepartirError(Exception):
    """Root of every error raised by repartir."""


class RemoteTraceback(Exception):
    """Carries a remote traceback's text; set as ``__cause__`` of a task's error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class TaskError(RepartirError):
    """A task raised an exception.

    Attributes:
        function_name: qualified name of the remote function.
        type_name: ``module.QualName`` of the original exception type.
        message: ``str()`` of the original exception.
        traceback_str: the formatted remote traceback.
        cause: the original exception, or ``None`` when it could not be unpickled here.
    """

    function_name: str = ""
    type_name: str = ""
    message: str = ""
    traceback_str: str = ""
    cause: BaseException | None = None

    def __str__(self) -> str:  # the same text whichever class the instance also is
        return (
            f"task {self.function_name} raised {self.type_name}: {self.message}\n\n"
            f"Remote traceback:\n{self.traceback_str}"
        )

    @classmethod
    def build(
        cls,
        function_name: str,
        type_name: str,
        message: str,
        traceback_str: str,
        cause: BaseException | None,
    ) -> "TaskError":
        """Make the error ``get`` raises: an instance of ``TaskError`` and, when the original
        exception arrived intact and is an ``Exception``, of its type too (``except
        ValueError`` catches it).  ``SystemExit`` and other ``BaseException`` types that are
        not ``Exception`` s arrive as a plain ``TaskError`` (``cause`` holds them)."""
        err: TaskError | None = None
        # SystemExit, KeyboardInterrupt, GeneratorExit: never re-raised as themselves in
        # the caller (a task's sys.exit() must not end the driver), so only a TaskError
        if isinstance(cause, Exception) and not isinstance(cause, TaskError):
            err = _dual_instance(type(cause), cause)
        if err is None:
            err = cls(message)
        err.function_name = function_name
        err.type_name = type_name
        err.message = message
        err.traceback_str = traceback_str
        err.cause = cause
        err.__cause__ = RemoteTraceback(traceback_str)
        return err


_dual_classes: dict[type, type] = {}


def exception_state(exc: BaseException) -> tuple:
    """``(type, args, __dict__)`` of ``exc``: enough to make it again with
    :func:`exception_from_state` without calling its ``__init__``, for exceptions whose
    ``__init__`` takes other arguments than their ``args`` (which ordinary pickling of an
    exception cannot make again: it calls ``type(*args)``)."""
    return (type(exc), tuple(exc.args), dict(getattr(exc, "__dict__", {})))


def exception_from_state(state: tuple) -> BaseException | None:
    """The exception of an :func:`exception_state`, or ``None`` when it cannot be made."""
    t, args, attrs = state
    for make in (lambda: t.__new__(t, *args), lambda: BaseException.__new__(t)):
        try:
            exc = make()
            exc.args = args
            if attrs:
                exc.__dict__.update(attrs)
            return exc
        except Exception:
            continue
    return None


def _task_error(function_name: str, type_name: str, message: str, traceback_str: str,
                state: tuple | None) -> "TaskError":
    cause = exception_from_state(state) if state is not None else None
    return TaskError.build(function_name, type_name, message, traceback_str, cause)


def _reduce_dual(self: "TaskError") -> tuple:
    """How a ``TaskError(UserType)`` pickles: by its fields and its cause's state, so it
    unpickles whatever the user type's ``__init__`` takes."""
    state = exception_state(self.cause) if self.cause is not None else None
    return (_task_error, (self.function_name, self.type_name, self.message,
                          self.traceback_str, state))


def _dual_instance(user_type: type, cause: BaseException) -> TaskError | None:
    """An object that is both a TaskError and a ``user_type``, carrying ``cause``'s state."""
    dual = _dual_classes.get(user_type)
    if dual is None:
        try:
            dual = type(
                f"TaskError({user_type.__name__})",
                (TaskError, user_type),
                {"__module__": __name__, "__str__": TaskError.__str__,
                 "__reduce__": _reduce_dual},
            )
        except TypeError:  # final type or incompatible layout
            return None
        _dual_classes[user_type] = dual
    err = None
    for make in (lambda: user_type.__new__(dual, *cause.args),  # e.g. OSError's own __new__
                 lambda: BaseException.__new__(dual)):
        try:
            err = make()
            break
        except Exception:
            continue
    if err is None:
        return None
    try:
        err.args = cause.args
        if hasattr(cause, "__dict__"):
            err.__dict__.update(cause.__dict__)
    except Exception:
        return None
    return err  # type: ignore[return-value]


class SerializationError(RepartirError, TypeError):
    """A value could not be serialized (or deserialized).  The message names the value."""


class GetTimeoutError(RepartirError, TimeoutError):
    """``get`` or ``wait`` ran out of its ``timeout`` before the objects were ready."""


class WorkerCrashedError(RepartirError):
    """The worker process running a task died (signal, ``os._exit``, segfault, out of
    memory) more often than ``max_retries`` allowed.  The message names the exit code or
    signal."""


class ObjectStoreFullError(RepartirError, MemoryError):
    """The shared-memory object store cannot hold an object, and neither can the spill
    directory on disk.  The message gives the sizes and the directory and says how to make
    room (``object_store_memory=``, ``REPARTIR_SPILL_DIR``, drop references)."""


class ObjectLostError(RepartirError):
    """An object's value is gone (freed, or its owner died) and cannot be rebuilt."""


class TaskCancelledError(RepartirError):
    """The task was cancelled by ``cancel()`` (or by Ctrl-C in its driver) before it
    finished."""


class TaskTimeoutError(RepartirError, TimeoutError):
    """The task ran longer than its ``timeout=`` option and was stopped."""


class TaskInterrupted(KeyboardInterrupt):
    """Raised *inside* a running task (or a call of a one-call-at-a-time actor) by
    ``cancel()`` or by its ``timeout=``.  It derives from ``KeyboardInterrupt``, as Ray's
    in-task cancellation does, so ``except Exception`` in the task does not swallow it;
    catch it (or ``KeyboardInterrupt``) to clean up, and re-raise.  The task's caller gets
    ``TaskCancelledError`` or ``TaskTimeoutError`` from ``get``.

    Attributes:
        timed_out: ``True`` for a timeout, ``False`` for a cancel.
    """

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out

    def __reduce__(self):
        return (type(self), (str(self), self.timed_out))


class InfeasibleTaskError(RepartirError, ValueError):
    """A task asks for resources no node has (e.g. ``num_gpus=1`` on a node without GPUs);
    raised at submission instead of waiting for ever."""


class ActorDiedError(RepartirError):
    """The actor is dead: its constructor failed, it was killed, or its process died more
    often than ``max_restarts`` allowed.  The message gives the cause."""


class ActorExit(SystemExit):
    """Raised by :func:`repartir.actor.exit_actor` inside an actor method to end the actor
    on purpose (Ray raises a ``SystemExit`` there too, ``AsyncioActorExit`` in async actors).
    A ``SystemExit``, so ``except Exception`` in the method does not swallow it; let it
    propagate.  The message says why; callers then get :class:`ActorDiedError` with it."""


class AlreadyInitializedError(RepartirError, RuntimeError):
    """``init()`` was called twice without ``shutdown()`` (a ``RuntimeError``, as in Ray)."""


class RepartirSystemError(RepartirError):
    """An internal fault of the runtime, not of the user's code: a broken invariant, a
    message of an unknown kind, a corrupted task record.  Please report it with its message
    (it names what was found)."""


class DeviceError(RepartirError):
    """A device (an OpenCL GPU or CPU, see ``repartir.devices``) could not do what was asked:
    most often a kernel that does not compile.

    Attributes:
        device: the device's name as its driver reports it (e.g. ``"NVIDIA H200"``).
        options: the build options passed to the OpenCL compiler (``""`` when none).
        log: the compiler's full build log (``""`` when the error is not a build failure).

    Picklable: it crosses process boundaries whole (a device actor raises it and ``get``
    raises it again in the caller with every attribute intact).
    """

    def __init__(self, message: str, *, device: str = "", options: str = "",
                 log: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.device = device
        self.options = options
        self.log = log

    def __reduce__(self):
        return (_rebuild_device_error, (type(self), self.message, self.device, self.options,
                                        self.log))

    def __str__(self) -> str:
        text = self.message
        if self.device:
            text += f"\n  device: {self.device}"
        if self.options or self.log:
            text += f"\n  build options: {self.options or '(none)'}"
        if self.log:
            text += "\n  build log:\n" + "\n".join("    " + line for line in
                                                   self.log.rstrip().splitlines())
        return text


def _rebuild_device_error(cls: type, message: str, device: str, options: str,
                          log: str) -> DeviceError:
    return cls(message, device=device, options=options, log=log)


class DeviceNotFoundError(DeviceError, LookupError):
    """No device of the kind asked for is present (no OpenCL platform, no GPU, an index out
    of range).  The message lists the devices that are present and says how to get one
    (``pip install "repartir[gpu]"`` brings PoCL, an OpenCL implementation for the CPU)."""


class WireError(RepartirError, ValueError):
    """A message of the cluster's wire layer (``repartir.cluster``) was refused: malformed
    frames, a MAC that does not verify, a replayed or reflected sequence number, or a
    verified payload that could not be unpickled.  Endpoints drop such messages (and log
    them, rate-limited) instead of raising; :func:`repartir.cluster.wire.verify` raises it.

    Attributes:
        reason: one of ``"malformed"``, ``"bad_mac"``, ``"replay"``, ``"reflected"``,
            ``"undecodable"``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.reason, str(self)))


class WireTimeoutError(RepartirError, TimeoutError):
    """No verified message arrived on a cluster endpoint within the ``timeout`` given.  The
    message names the address, the messages dropped meanwhile, and what to check (the same
    cluster token at both ends; with encryption, the server's public key)."""


class TokenError(RepartirError, PermissionError):
    """The cluster token is missing where one is required (listening on or connecting to a
    non-loopback address), unsafe (a token file readable by group or others, too short), or
    differs from the peer's (the peer refused our messages).  The message says what to do."""


class EncryptionError(TokenError):
    """A connection's CurveZMQ handshake failed: one side encrypts (``--encrypt``) and the
    other does not, or the client holds another server public key than the server's.  The
    message says which, and what to pass (``--server-key``, ``REPARTIR_SERVER_KEY``).  A
    :class:`TokenError`, so that code refusing a peer's token refuses this too."""


class Empty(RepartirError, _queue.Empty):
    """A :class:`repartir.util.queue.Queue` had no item to give: ``get(block=False)`` or
    ``get_nowait()`` on an empty queue, a blocking ``get`` past its ``timeout``, or
    ``get_nowait_batch(n)`` with fewer than ``n`` items queued.  Also a ``queue.Empty``,
    as Ray's ``ray.util.queue.Empty``; import it as ``repartir.util.queue.Empty``."""


class Full(RepartirError, _queue.Full):
    """A :class:`repartir.util.queue.Queue` of bounded ``maxsize`` had no room:
    ``put(block=False)`` or ``put_nowait()`` on a full queue, a blocking ``put`` past its
    ``timeout``, or ``put_nowait_batch(items)`` with more items than free places.  Also a
    ``queue.Full``, as Ray's ``ray.util.queue.Full``; import it as
    ``repartir.util.queue.Full``."""


class NodeDiedError(WorkerCrashedError):
    """A node of the cluster died (or was cut off) while it ran a task, past the task's
    ``max_retries``; or it held an object that a ``get`` needed (``ObjectLostError`` then).
    The message names the node and its address.  Also a :class:`WorkerCrashedError`, as a
    task whose worker process died."""
