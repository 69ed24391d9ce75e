"""The task manager (``repartir/runtime/task_manager.py``; ``docs/architecture.md``, "Runtime
state machines"): events in, instructions out, checked table by table without processes --
dependencies, retries, cancel trees, actor epochs."""

from __future__ import annotations

import pytest

from repartir.errors import ActorDiedError
from repartir.runtime.messages import TaskOptions
from repartir.runtime.protocol import StopReason, StopRequest
from repartir.runtime.task_manager import Fail, Stop, Task, TaskManager, TaskState, Unqueue
from repartir.serialization import error_payload

S = TaskState


def opts(max_retries=3, retry_exceptions=False):
    return TaskOptions(1, (1000,), 1, 0.0, max_retries, retry_exceptions)


def task(name, target=None, actor_id=None, **kw):
    tid = name.encode().ljust(16, b".")
    return Task(tid, [tid + b"r0"], name, opts(**kw), target, actor_id)


def kinds(instrs):
    """Instructions as (kind, task name) pairs, the way the tables read."""
    out = []
    for i in instrs:
        if type(i) is Stop:
            out.append(("Stop", i.task_id.rstrip(b".").decode(), i.request, i.force))
        else:
            name = i.task.fn_name
            out.append((type(i).__name__, name) if type(i) is not Fail
                       else ("Fail", name, type(i.error).__name__))
    return out


# -- dependencies ------------------------------------------------------------------------------

def test_a_task_without_pending_arguments_is_pushed_at_once():
    m = TaskManager()
    t = task("a")
    assert kinds(m.submit(t, [])) == [("Push", "a")]
    assert t.state == S.QUEUED and m.get(t.task_id) is t


#: (pending argument ids of each task, objects resolved in order) -> pushes after each
DEP_TABLE = [
    ([[b"x"]], [b"x"], [["a"]]),
    ([[b"x", b"y"]], [b"x", b"y"], [[], ["a"]]),
    ([[b"x", b"y"]], [b"y", b"x"], [[], ["a"]]),
    ([[b"x", b"x"]], [b"x"], [["a"]]),  # the same ref twice: one resolution is enough
    ([[b"x"], [b"x"]], [b"x"], [["a", "b"]]),  # two tasks on one object: both go
    ([[b"x"], [b"y"]], [b"z", b"y", b"x"], [[], ["b"], ["a"]]),
]


@pytest.mark.parametrize("pending, resolved, pushes", DEP_TABLE)
def test_tasks_go_when_their_last_argument_resolves(pending, resolved, pushes):
    m = TaskManager()
    tasks = [task(n) for n in "abcd"[:len(pending)]]
    for t, p in zip(tasks, pending):
        assert m.submit(t, list(p)) == []
        assert t.state == S.WAITING
    for oid, expected in zip(resolved, pushes):
        assert [i.task.fn_name for i in m.resolved(oid)] == expected
    assert all(t.state == S.QUEUED for t in tasks)
    assert m.waiting == {}


# -- ends: completion, exceptions, crashes -----------------------------------------------------

def test_completed_removes_the_task_and_a_duplicate_is_not_ours():
    m = TaskManager()
    t = task("a")
    m.submit(t, [])
    assert m.completed(t.task_id) is t
    assert m.completed(t.task_id) is None  # a late duplicate of a retried task
    assert len(m) == 0


#: (retry_exceptions, max_retries, exception, attempts so far) -> retried
RAISED_TABLE = [
    (False, 3, ValueError("v"), 0, False),
    (True, 3, ValueError("v"), 0, True),
    (True, 3, ValueError("v"), 3, False),  # out of retries
    ((ValueError,), 3, ValueError("v"), 1, True),
    ((KeyError,), 3, ValueError("v"), 0, False),  # not a listed type
]


@pytest.mark.parametrize("retry_exceptions, max_retries, exc, attempt, retried", RAISED_TABLE)
def test_a_raised_task_runs_again_only_under_retry_exceptions(retry_exceptions, max_retries,
                                                              exc, attempt, retried):
    m = TaskManager()
    t = task("a", max_retries=max_retries, retry_exceptions=retry_exceptions)
    m.submit(t, [])
    t.attempt = attempt
    out = m.raised(t.task_id, error_payload(exc, "a"))
    if retried:
        assert kinds(out) == [("Retry", "a")] and t.attempt == attempt + 1
        assert m.get(t.task_id) is t
    else:
        assert out == [] and m.get(t.task_id) is None  # ends: the core stores the error


def test_crashes_retry_until_max_retries_then_fail():
    m = TaskManager()
    t = task("a", max_retries=2)
    m.submit(t, [])
    seen = [kinds(m.crashed(t.task_id, StopReason.CRASH, "killed by signal SIGKILL"))
            for _ in range(3)]
    assert seen == [[("Retry", "a")], [("Retry", "a")],
                    [("Fail", "a", "WorkerCrashedError")]]
    assert m.get(t.task_id) is None
    assert m.crashed(t.task_id, StopReason.CRASH, "late") == []  # already ended


def test_a_crash_of_a_cancelled_task_is_the_cancel():
    m = TaskManager()
    t = task("a")
    m.submit(t, [])
    [unq] = m.cancel(t.task_id, force=True, recursive=True)
    assert type(unq) is Unqueue and t.state == S.CANCELLING
    assert kinds(m.unqueued(t, False, True, True)) == [("Stop", "a", StopRequest.CANCEL, True)]
    assert kinds(m.crashed(t.task_id, StopReason.CRASH, "killed")) == [
        ("Fail", "a", "TaskCancelledError")]


# -- cancel and cancel trees -------------------------------------------------------------------

#: (state reached, recursive, force, found in a deque) -> instructions after unqueue
CANCEL_TABLE = [
    ("waiting", True, False, None, [("Fail", "a", "TaskCancelledError")]),
    ("queued", True, False, True, [("Fail", "a", "TaskCancelledError")]),
    ("queued", True, False, False, [("Stop", "a", StopRequest.CANCEL, False)]),
    ("queued", False, False, False, [("Stop", "a", StopRequest.CANCEL_ONE, False)]),
    ("queued", False, True, False, [("Stop", "a", StopRequest.CANCEL, True)]),
]


@pytest.mark.parametrize("state, recursive, force, found, expected", CANCEL_TABLE)
def test_cancel(state, recursive, force, found, expected):
    m = TaskManager()
    t = task("a")
    m.submit(t, [b"x"] if state == "waiting" else [])
    out = m.cancel(t.task_id, force, recursive)
    if found is not None:
        assert [type(i) for i in out] == [Unqueue]
        out = m.unqueued(t, found, force, recursive)
    assert kinds(out) == expected
    if type(out[0]) is Fail:
        assert m.get(t.task_id) is None and m.waiting == {}
        assert m.resolved(b"x") == []  # a cancelled task never goes
    assert t.cancelled


def test_cancel_again_kills_only_with_force_and_only_a_running_task():
    m = TaskManager()
    t = task("a")
    m.submit(t, [])
    m.cancel(t.task_id, False, True)
    m.unqueued(t, False, False, True)
    assert m.cancel(t.task_id, False, True) == []  # already cancelled
    assert kinds(m.cancel(t.task_id, True, True)) == [("Stop", "a", StopRequest.CANCEL, True)]
    assert m.cancel(b"unknown".ljust(16, b"."), True, True) == []  # finished: nothing to do


def test_force_cancel_of_an_actor_call_is_refused():
    m = TaskManager()
    t = task("m", target=5, actor_id=b"A")
    m.submit(t, [])
    with pytest.raises(ValueError, match="repartir.kill"):
        m.cancel(t.task_id, True, True)
    assert not t.cancelled


def test_a_cancelled_call_leaves_its_actor_line_and_later_calls_go():
    m = TaskManager()
    a, b = task("a", target=5, actor_id=b"A"), task("b", target=5, actor_id=b"A")
    assert m.submit(a, [b"x"]) == []
    assert m.submit(b, []) == []  # behind a, which waits for its argument
    # a leaves the line at once: b goes without waiting for a's argument
    assert kinds(m.cancel(a.task_id, False, True)) == [("Fail", "a", "TaskCancelledError"),
                                                       ("SendCall", "b")]
    assert m.resolved(b"x") == []
    assert b.state == S.SENT and m.actor_lines == {}


def test_children_of_a_call_are_taken_once_for_its_cancel_tree():
    m = TaskManager()
    parent = b"P".ljust(16, b".")
    kids = [task(n) for n in "abc"]
    for k in kids:
        m.submit(k, [], parent=parent)
    m.submit(task("d"), [])  # not a child
    assert m.take_children(parent) == {k.task_id for k in kids}
    assert m.take_children(parent) == set()


def test_cancel_queued_sends_no_call_that_waited_behind_a_cancelled_one():
    m = TaskManager()
    a, b = task("a", target=5, actor_id=b"A"), task("b", target=5, actor_id=b"A")
    m.submit(a, [b"x"])
    m.submit(b, [])
    out, queued = m.cancel_queued()
    assert kinds(out) == [("Fail", "a", "TaskCancelledError"), ("Fail", "b", "TaskCancelledError")]
    assert queued == [] and len(m) == 0


def test_cancel_queued_cancels_what_has_not_started():
    m = TaskManager()
    w, q1, q2, c = task("w"), task("q1"), task("q2"), task("c", target=3, actor_id=b"A")
    m.submit(w, [b"x"])
    m.submit(q1, [])
    m.submit(q2, [])
    m.submit(c, [])  # sent: runs in its actor, not cancelled by Ctrl-C of the driver
    out, queued = m.cancel_queued()
    assert kinds(out) == [("Fail", "w", "TaskCancelledError")]
    assert {t.fn_name for t in queued} == {"q1", "q2"}
    out = m.unqueued_many(queued, {q1.task_id})  # q2 was already taken by a worker
    assert kinds(out) == [("Fail", "q1", "TaskCancelledError")]
    assert set(m.tasks) == {q2.task_id, c.task_id}


# -- actor calls and epochs --------------------------------------------------------------------

def test_calls_to_one_actor_go_in_submission_order():
    m = TaskManager()
    a, b, c = (task(n, target=7, actor_id=b"A") for n in "abc")
    assert kinds(m.submit(a, [])) == [("SendCall", "a")]
    assert m.submit(b, [b"x"]) == []
    assert m.submit(c, []) == []  # ready, but behind b
    assert kinds(m.resolved(b"x")) == [("SendCall", "b"), ("SendCall", "c")]


#: (dead, max_task_retries, attempt, running) -> instruction for a call sent to epoch 0
EPOCH_TABLE = [
    (False, 3, 0, False, ("SendCall", "m")),  # queued in the dead process: re-sent, free
    (False, 0, 0, False, ("SendCall", "m")),
    (False, 1, 0, True, ("SendCall", "m")),  # running there: a retry counts
    (False, 0, 0, True, ("Fail", "m", "ActorDiedError")),  # no retries left
    (True, 3, 0, False, ("Fail", "m", "ActorDiedError")),  # dead for good
]


@pytest.mark.parametrize("dead, max_retries, attempt, running, expected", EPOCH_TABLE)
def test_a_new_actor_epoch_resends_or_fails_the_calls_it_lost(dead, max_retries, attempt,
                                                              running, expected):
    m = TaskManager()
    t = task("m", target=4, actor_id=b"A", max_retries=max_retries)
    m.submit(t, [])
    t.record, t.epoch, t.attempt = b"sent", 0, attempt
    out = m.actor_epoch(4, b"A", 1, dead, "killed by repartir.kill()",
                        {t.task_id} if running else set())
    assert kinds(out) == [expected]
    if expected[0] == "Fail":
        assert isinstance(out[0].error, ActorDiedError) and m.get(t.task_id) is None
        if dead:
            assert "repartir.kill()" in str(out[0].error)


def test_an_epoch_leaves_other_actors_and_newer_calls_alone():
    m = TaskManager()
    other = task("o", target=4, actor_id=b"B")  # an earlier actor in that slot
    newer = task("n", target=4, actor_id=b"A")
    for t, epoch in ((other, 0), (newer, 1)):
        m.submit(t, [])
        t.record, t.epoch = b"sent", epoch
    assert m.actor_epoch(4, b"A", 1, False, "", set()) == []


def test_a_call_to_a_dead_actor_fails():
    m = TaskManager()
    t = task("m", target=4, actor_id=b"A")
    m.submit(t, [])
    err = ActorDiedError("gone")
    assert kinds(m.call_failed(t, err)) == [("Fail", "m", "ActorDiedError")]
    assert len(m) == 0

