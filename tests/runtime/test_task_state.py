"""The decisions taken when a task ends badly (``repartir/runtime/task_state.py``;
``docs/architecture.md``, "Faults"), table by table, without processes."""

from __future__ import annotations

import pytest

from repartir.errors import (ActorDiedError, TaskCancelledError, TaskTimeoutError,
                             WorkerCrashedError)
from repartir.runtime.protocol import StopReason
from repartir.runtime.task_state import after_crash, retries_error

R = StopReason
RETRY = None

#: (reason, cancelled, attempt, max_retries, actor_call) -> None (run again) or error type
CRASH_TABLE = [
    # a worker died: retried while attempts remain, then WorkerCrashedError
    (R.CRASH, False, 0, 3, False, RETRY),
    (R.CRASH, False, 2, 3, False, RETRY),
    (R.CRASH, False, 3, 3, False, WorkerCrashedError),
    (R.CRASH, False, 0, 0, False, WorkerCrashedError),
    # an actor's process died under a call: max_task_retries, then ActorDiedError
    (R.CRASH, False, 0, 1, True, RETRY),
    (R.CRASH, False, 1, 1, True, ActorDiedError),
    (R.CRASH, False, 0, 0, True, ActorDiedError),
    # a cancel or time-out is never retried, whatever the retries left
    (R.CANCEL, False, 0, 3, False, TaskCancelledError),
    (R.TIMEOUT, False, 0, 3, False, TaskTimeoutError),
    (R.TIMEOUT, False, 0, 3, True, TaskTimeoutError),
    # a crash after its owner cancelled it is the cancel (force=True kills the worker)
    (R.CRASH, True, 0, 3, False, TaskCancelledError),
    (R.TIMEOUT, True, 0, 3, False, TaskCancelledError),
    # the actor was dead before the call ran
    (R.ACTOR_DIED, False, 0, 3, True, ActorDiedError),
]


@pytest.mark.parametrize("reason, cancelled, attempt, max_retries, actor_call, expected",
                         CRASH_TABLE)
def test_after_crash(reason, cancelled, attempt, max_retries, actor_call, expected):
    err = after_crash(fn_name="f", reason=reason, detail="killed by signal SIGKILL",
                      cancelled=cancelled, attempt=attempt, max_retries=max_retries,
                      actor_call=actor_call, timeout=2.5)
    if expected is RETRY:
        assert err is None
        return
    assert type(err) is expected
    assert "f" in str(err)
    if expected in (WorkerCrashedError, ActorDiedError):
        assert "SIGKILL" in str(err)
    if expected is WorkerCrashedError:
        assert f"tried {attempt + 1} time(s)" in str(err) and "max_retries" in str(err)
    if expected is TaskTimeoutError:
        assert "2.5 s" in str(err)


#: (retry_exceptions, cancelled, attempt, max_retries, cause) -> runs again
ERROR_TABLE = [
    (False, False, 0, 3, ValueError("x"), False),
    (True, False, 0, 3, ValueError("x"), True),
    (True, False, 3, 3, ValueError("x"), False),  # out of retries
    (True, True, 0, 3, ValueError("x"), False),  # cancelled
    ((ValueError,), False, 0, 3, ValueError("x"), True),
    ((ValueError,), False, 0, 3, KeyError("x"), False),
    ((LookupError,), False, 0, 3, KeyError("x"), True),  # a subclass
    ((ValueError, KeyError), False, 1, 2, KeyError("x"), True),
    ((ValueError,), False, 0, 3, None, False),  # not raised by the task's code
    (True, False, 0, 0, ValueError("x"), False),
]


@pytest.mark.parametrize("retry_exceptions, cancelled, attempt, max_retries, cause, expected",
                         ERROR_TABLE)
def test_retries_error(retry_exceptions, cancelled, attempt, max_retries, cause, expected):
    assert retries_error(retry_exceptions=retry_exceptions, cancelled=cancelled,
                         attempt=attempt, max_retries=max_retries, cause=cause) is expected
