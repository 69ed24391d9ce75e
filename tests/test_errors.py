"""Errors: the exception hierarchy, task exceptions raised by ``get`` as both ``TaskError``
and the original type with the remote traceback, unpicklable arguments refused at
``.remote()``, unpicklable exceptions and results that still arrive promptly, and calling a
remote function directly."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import repartir
from repartir import errors
from repartir.runtime.core import CoreClient
from repartir.runtime.worker import Worker


class TwoArgError(Exception):
    """Cannot be unpickled as such: ``pickle`` calls ``TwoArgError(*args)`` with one
    argument; it arrives made again from its state (``errors.exception_state``)."""

    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")
        self.a, self.b = a, b


class LockHoldingError(Exception):
    """Cannot even be pickled in the worker: it holds a lock."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class CustomError(Exception):
    pass


class FinalLikeError(KeyError):
    pass


def _inner_helper_that_raises(x):
    raise ValueError(f"bad value {x}")


@repartir.remote
def raise_value_error(x):
    return _inner_helper_that_raises(x)


@repartir.remote
def raise_custom(code):
    err = CustomError("custom failure", code)
    err.code = code
    raise err


@repartir.remote
def raise_key_error():
    raise FinalLikeError("missing-key")


@repartir.remote
def raise_two_arg_error():
    raise TwoArgError("x", "y")


@repartir.remote
def raise_lock_holding_error():
    raise LockHoldingError("holds a lock")


@repartir.remote
def return_a_lock():
    return threading.Lock()


@repartir.remote
def add(a, b=0):
    return a + b


@repartir.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


# --------------------------------------------------------------------------- hierarchy


def test_error_hierarchy_and_exports():
    for name in [
        "RepartirError",
        "TaskError",
        "SerializationError",
        "GetTimeoutError",
        "WorkerCrashedError",
        "ObjectStoreFullError",
        "RepartirSystemError",
    ]:
        cls = getattr(errors, name)
        assert getattr(repartir, name) is cls, f"repartir.{name} must be repartir.errors.{name}"
        assert issubclass(cls, errors.RepartirError)
    assert issubclass(errors.RepartirError, Exception)
    assert issubclass(errors.GetTimeoutError, TimeoutError)


def test_message_of_unknown_kind_is_a_system_error():
    """The client's message handler refuses a message kind it does not know (it used to
    drop it silently); no process is needed to see it."""
    import pickle
    import types

    from repartir.runtime import protocol

    with pytest.raises(errors.RepartirSystemError, match="no known kind"):
        protocol.decode(pickle.dumps((99, b"x")))  # what poll() does with inbox bytes
    client = object.__new__(CoreClient)
    client.slot = 3
    with pytest.raises(errors.RepartirSystemError, match="unknown kind 99"):
        client._handle(types.SimpleNamespace(kind=99))  # a decoded kind it does not handle


def test_task_record_of_unknown_kind_is_a_system_error():
    """A worker refuses a task record of a kind it does not know; ``execute`` reports the
    error to the task's owner and the worker goes on."""
    worker = object.__new__(Worker)
    with pytest.raises(errors.RepartirSystemError, match="unknown kind 7"):
        worker._run(7, b"", bytes(16), 0)


# --------------------------------------------------------------------------- task exceptions


def test_task_exception_is_task_error_and_original_type(rt):
    ref = raise_value_error.remote(42)
    with pytest.raises(ValueError) as info:
        repartir.get(ref)
    err = info.value
    assert isinstance(err, repartir.TaskError)
    assert isinstance(err, repartir.RepartirError)
    text = str(err)
    assert "bad value 42" in text
    assert "raise_value_error" in text, "the remote traceback must name the task function"
    assert "_inner_helper_that_raises" in text, "the remote traceback must include inner frames"
    assert "ValueError" in text


def test_except_clause_of_original_type_catches(rt):
    try:
        repartir.get([add.remote(1), raise_value_error.remote(1)])
    except ValueError as exc:
        assert isinstance(exc, repartir.TaskError)
    else:
        pytest.fail("get must raise")


def test_custom_exception_keeps_type_and_attributes(rt):
    with pytest.raises(CustomError) as info:
        repartir.get(raise_custom.remote(7))
    assert isinstance(info.value, repartir.TaskError)
    assert info.value.args == ("custom failure", 7)
    assert info.value.code == 7
    with pytest.raises(KeyError):
        repartir.get(raise_key_error.remote())


def test_error_is_raised_again_on_every_get(rt):
    ref = raise_value_error.remote(3)
    for _ in range(2):
        with pytest.raises(ValueError):
            repartir.get(ref)


def test_failed_task_counts_as_ready_in_wait(rt):
    bad = raise_value_error.remote(0)
    ready, not_ready = repartir.wait([bad], timeout=30)
    assert ready == [bad] and not_ready == []


def test_error_propagates_to_dependent_task(rt):
    bad = raise_value_error.remote(5)
    dependent = add.remote(bad, 1)
    with pytest.raises(repartir.RepartirError) as info:
        repartir.get(dependent, timeout=30)
    assert "bad value 5" in str(info.value)


def test_session_usable_after_task_errors(rt):
    for _ in range(5):
        with pytest.raises(ValueError):
            repartir.get(raise_value_error.remote(1))
    assert repartir.get([add.remote(i, 1) for i in range(20)]) == list(range(1, 21))


# --------------------------------------------------------------------------- unpicklable values


def test_unpicklable_positional_argument_fails_at_remote(rt):
    with pytest.raises(repartir.SerializationError) as info:
        add.remote(threading.Lock(), 1)
    message = str(info.value)
    assert "lock" in message.lower(), f"message must name the argument's type: {message}"
    assert "0" in message or "first" in message.lower(), (
        f"message must name the position: {message}")


def test_unpicklable_keyword_argument_fails_at_remote(rt):
    with pytest.raises(repartir.SerializationError) as info:
        add.remote(1, b=threading.Lock())
    message = str(info.value)
    assert "'b'" in message or " b " in message or "b=" in message or "`b`" in message, message
    assert "lock" in message.lower(), message


def test_unpicklable_value_nested_in_argument(rt):
    with pytest.raises(repartir.SerializationError):
        add.remote([1, threading.Lock()], 2)
    # The session is unharmed.
    assert repartir.get(add.remote(1, 2)) == 3


def test_unpicklable_value_in_put(rt):
    with pytest.raises(repartir.SerializationError):
        repartir.put({"guard": threading.Lock()})
    assert repartir.get(repartir.put(1)) == 1


@pytest.mark.timeout(60)
def test_exception_whose_init_takes_other_arguments_keeps_its_type(rt):
    start = time.monotonic()
    with pytest.raises(TwoArgError) as info:
        repartir.get(raise_two_arg_error.remote(), timeout=30)
    assert time.monotonic() - start < 10
    assert isinstance(info.value, repartir.TaskError)
    assert (info.value.a, info.value.b, info.value.args) == ("x", "y", ("x-y",))
    text = str(info.value)
    assert "TwoArgError" in text
    assert "x-y" in text
    assert "raise_two_arg_error" in text, "the remote traceback is kept"
    # The session keeps working, on every worker.
    assert (repartir.get([add.remote(i, i) for i in range(20)], timeout=30)
            == [2 * i for i in range(20)])
    with pytest.raises(repartir.TaskError):
        repartir.get(raise_two_arg_error.remote(), timeout=30)
    assert repartir.get(add.remote(2, 2), timeout=30) == 4


@pytest.mark.timeout(60)
def test_exception_that_cannot_be_pickled_in_worker_arrives_promptly(rt):
    with pytest.raises(repartir.TaskError) as info:
        repartir.get(raise_lock_holding_error.remote(), timeout=30)
    text = str(info.value)
    assert "LockHoldingError" in text and "holds a lock" in text
    assert repartir.get(add.remote(1, 1), timeout=30) == 2


@repartir.remote(max_retries=0)
def exits(code):
    import sys

    sys.exit(code)


@pytest.mark.timeout(60)
def test_sys_exit_in_a_task_exits_its_worker_not_the_driver(rt):
    """As in Ray: the worker exits, the task fails with WorkerCrashedError naming the exit
    (no retries here), and the driver and the pool go on."""
    with pytest.raises(repartir.WorkerCrashedError) as info:
        repartir.get(exits.remote(3), timeout=30)
    assert not isinstance(info.value, SystemExit)
    assert "sys.exit" in str(info.value) or "exit" in str(info.value).lower()
    assert repartir.get(add.remote(1, 2), timeout=30) == 3


@pytest.mark.timeout(60)
def test_unpicklable_actor_argument_is_named_at_remote(rt):
    import threading

    @repartir.remote
    class Keeper:
        def __init__(self, thing):
            self.thing = thing

    with pytest.raises(repartir.errors.SerializationError,
                       match=r"argument 0 of .*Keeper.__init__"):
        Keeper.remote(threading.Lock())


def test_negative_timeouts_are_refused(rt):
    ref = add.remote(1, 1)
    with pytest.raises(ValueError, match="timeout"):
        repartir.get(ref, timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        repartir.wait([ref], timeout=-0.5)
    assert repartir.get(ref, timeout=30) == 2


@pytest.mark.timeout(60)
def test_unpicklable_result_fails_promptly(rt):
    with pytest.raises(repartir.RepartirError) as info:
        repartir.get(return_a_lock.remote(), timeout=30)
    assert not isinstance(info.value, repartir.GetTimeoutError), "must fail, not hang"
    assert "lock" in str(info.value).lower()
    assert repartir.get(add.remote(1, 1), timeout=30) == 2


# --------------------------------------------------------------------------- misuse


def test_calling_remote_function_directly_raises_type_error():
    with pytest.raises(TypeError, match=r"\.remote"):
        add(1, 2)


def test_get_timeout_error_is_timeout_error(rt):
    ref = nap.remote(1.0)
    with pytest.raises(TimeoutError):
        repartir.get(ref, timeout=0.05)
    assert repartir.get(ref) == 1.0


def test_task_raising_on_big_argument(rt):
    @repartir.remote
    def index_out_of_range(a):
        return a[len(a) + 1]

    with pytest.raises(IndexError) as info:
        repartir.get(index_out_of_range.remote(np.zeros(300_000)))
    assert "index_out_of_range" in str(info.value)


def test_a_task_error_of_a_user_type_pickles_whatever_its_init_takes():
    """A ``TaskError(UserType)`` crosses a process (a cluster's node to its driver) by its
    fields and its cause's state, not by calling ``UserType(*args)``."""
    import pickle

    for cause in (TwoArgError(1, 2), CustomError("c", 7), FinalLikeError("k")):
        err = errors.TaskError.build("f", "t", str(cause), "tb", cause)
        assert isinstance(err, type(cause))
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and isinstance(back, type(cause))
        assert back.args == cause.args and back.__dict__.get("a") == cause.__dict__.get("a")
        assert (back.function_name, back.traceback_str) == ("f", "tb")
    assert errors.exception_from_state((int, (), {})) is None  # not an exception type
