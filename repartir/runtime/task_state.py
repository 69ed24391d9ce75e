"""What happens to a task when it ends badly, decided from plain values (no processes, no
shared memory, no I/O): whether it runs again, and if not, the error its refs get.  The
core worker (``core.py``) feeds it the facts of a ``Crashed`` or failed ``Done`` message
and carries out the answer (``docs/architecture.md``, "Faults").  Tested table-style in
``tests/runtime/test_task_state.py``.

Ray's rules, which these follow: a task whose process dies is re-run up to ``max_retries``
times (an actor call up to ``max_task_retries``); an exception it raises is re-run only
under ``retry_exceptions`` (``True`` or a tuple of exception types), within the same count;
a cancelled or timed-out task never runs again.
"""

from __future__ import annotations

from ..errors import ActorDiedError, TaskCancelledError, TaskTimeoutError, WorkerCrashedError
from .protocol import StopReason

__all__ = ["after_crash", "retries_error"]


def after_crash(*, fn_name: str, reason: int, detail: str, cancelled: bool, attempt: int,
                max_retries: int, actor_call: bool, timeout: float) -> Exception | None:
    """A task ended without a result (``Crashed``): ``None`` to run it again, or the error
    its refs get.

    Args:
        reason: a :class:`~.protocol.StopReason`.
        detail: what the node saw ("killed by signal SIGKILL", "exit code 3: ...").
        cancelled: its owner cancelled it (a crash after a cancel is the cancel).
        attempt: runs so far, minus one (0 on the first run).
        max_retries: ``max_retries`` of a task, ``max_task_retries`` of an actor call.
        actor_call: it is a call to an actor (the actor's process died).
        timeout: its ``timeout=`` in seconds, for the message.
    """
    if cancelled or reason == StopReason.CANCEL:
        return TaskCancelledError(f"task {fn_name} was cancelled")
    if reason == StopReason.ACTOR_DIED:
        return ActorDiedError(f"the actor of {fn_name} died: {detail}")
    if reason == StopReason.TIMEOUT:
        return TaskTimeoutError(f"task {fn_name} ran longer than its timeout of {timeout:g} s "
                                f"and was stopped ({detail})")
    if attempt < max_retries:  # (a stream's retry skips the items it had sent)
        return None
    if actor_call:
        return ActorDiedError(
            f"the actor process running {fn_name} died ({detail}) and the call was tried "
            f"{attempt + 1} time(s) (max_task_retries={max_retries})")
    return WorkerCrashedError(
        f"the worker running {fn_name} died ({detail}); the task was tried {attempt + 1} "
        f"time(s) (max_retries={max_retries}). If the task uses too much memory or crashes "
        f"natively, fix it or raise max_retries.")


def retries_error(*, retry_exceptions, cancelled: bool, attempt: int, max_retries: int,
                  cause: BaseException | None) -> bool:
    """Whether a task that raised ``cause`` (``None``: an error not raised by the task's
    code) runs again: ``retry_exceptions`` is ``True``, or a tuple of exception types that
    ``cause`` is an instance of; never when cancelled or out of retries."""
    if not retry_exceptions or cancelled or attempt >= max_retries:
        return False
    if retry_exceptions is True:
        return True
    return cause is not None and isinstance(cause, retry_exceptions)
