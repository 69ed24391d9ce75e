"""Semantics of the public API on a local node of two workers (Ray's names and meanings):
``remote``/``options``, ``ObjectRef``, ``get``, ``wait``, ``put``, passing refs to tasks."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import repartir


@repartir.remote
def add(a, b=0):
    return a + b


@repartir.remote
def nap(seconds: float, value=None):
    time.sleep(seconds)
    return value if value is not None else seconds


@repartir.remote
def gated(gate: str, value=None, timeout: float = 60.0):
    """Return ``value`` once the file ``gate`` exists (or after ``timeout`` s, returning
    ``"gate never opened"``): a task that finishes only when the test says so."""
    end = time.monotonic() + timeout
    while not os.path.exists(gate):
        if time.monotonic() > end:
            return "gate never opened"
        time.sleep(0.005)
    return value


#: A generous bound on what must be quick (figures of the kind belong in the benchmark,
#: docs/benchmarks.md; a shared 2-core machine can stall a process for a second or more).
QUICK_S = 10.0


@repartir.remote
def inc_after(x, seconds: float = 0.0):
    time.sleep(seconds)
    return x + 1


@repartir.remote(num_returns=2)
def split_pair(x):
    return x, -x


@repartir.remote(num_cpus=1, num_returns=2, max_retries=0)
def with_all_options(x):
    return x * 2, str(x)


@repartir.remote
def triple(x):
    return x, x + 1, x + 2


@repartir.remote
def inspect_arg(x):
    """Type names of the argument and, for a list, of its items."""
    if isinstance(x, list):
        return ["ObjectRef" if isinstance(i, repartir.ObjectRef) else type(i).__name__ for i in x]
    return type(x).__name__


@repartir.remote
def get_nested(refs):
    return [repartir.get(r) for r in refs]


@repartir.remote
def echo(x):
    return x


# --------------------------------------------------------------------------- remote, refs


def test_public_names_exported():
    for name in ["init", "shutdown", "is_initialized", "remote", "get", "wait", "put", "ObjectRef"]:
        assert hasattr(repartir, name), name
        assert name in repartir.__all__, name
    assert len(repartir.__all__) == len(set(repartir.__all__)), "a public name is exported twice"


def test_remote_returns_object_ref_at_once(rt, tmp_path):
    gate = tmp_path / "gate"
    start = time.monotonic()
    ref = gated.remote(str(gate), "done")  # cannot finish before the gate opens
    assert time.monotonic() - start < QUICK_S
    assert isinstance(ref, repartir.ObjectRef)
    assert repartir.wait([ref], timeout=0) == ([], [ref]), "remote() waited for the task"
    gate.touch()
    assert repartir.get(ref, timeout=60) == "done"


def test_object_ref_is_hashable_with_hex(rt):
    r1, r2 = add.remote(1, 2), add.remote(1, 2)
    h = r1.hex()
    assert isinstance(h, str) and h and int(h, 16) >= 0
    assert r1.hex() != r2.hex()
    assert r1 == r1 and r1 != r2
    d = {r1: "one", r2: "two"}
    assert d[r1] == "one" and d[r2] == "two"
    assert len({r1, r2, r1}) == 2
    assert repartir.get([r1, r2]) == [3, 3]


def test_args_and_kwargs(rt):
    assert repartir.get(add.remote(1, 2)) == 3
    assert repartir.get(add.remote(1, b=5)) == 6
    assert repartir.get(add.remote(7)) == 7
    assert repartir.get(add.remote("a", b="b")) == "ab"


def test_lambda_and_closure(rt):
    k = 10
    f = repartir.remote(lambda x: x + k)
    assert repartir.get(f.remote(5)) == 15

    def outer(y):
        return [y] * 3

    assert repartir.get(repartir.remote(outer).remote(2)) == [2, 2, 2]


def test_many_tasks(rt):
    refs = [add.remote(i, i) for i in range(500)]
    assert repartir.get(refs) == [2 * i for i in range(500)]


def test_put_and_get_small_values(rt):
    for value in [0, None, "text", {"a": [1, 2]}, (1, 2.5), b"\x00" * 10]:
        assert repartir.get(repartir.put(value)) == value


# --------------------------------------------------------------------------- get


def test_get_list_keeps_order(rt):
    # Tasks finish in the reverse of submission order.
    durations = [0.6, 0.4, 0.2, 0.0]
    refs = [nap.remote(d, i) for i, d in enumerate(durations)]
    assert repartir.get(refs) == [0, 1, 2, 3]
    mixed = [refs[2], repartir.put("x"), refs[0], refs[2]]
    assert repartir.get(mixed) == [2, "x", 0, 2]


def test_get_empty_list(rt):
    assert repartir.get([]) == []


def test_get_twice_returns_same_value(rt):
    ref = add.remote(2, 3)
    assert repartir.get(ref) == 5
    assert repartir.get(ref) == 5


def test_get_timeout(rt, tmp_path):
    gate = tmp_path / "gate"
    ref = gated.remote(str(gate), "late")  # finishes only when the gate opens
    start = time.monotonic()
    with pytest.raises(repartir.GetTimeoutError) as info:
        repartir.get(ref, timeout=0.2)
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < QUICK_S  # not before the timeout; not waiting for the task
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, repartir.RepartirError)
    with pytest.raises(TimeoutError):
        repartir.get([repartir.put(1), ref], timeout=0.05)
    # The task is unaffected by the caller's timeout.
    gate.touch()
    assert repartir.get(ref, timeout=30) == "late"


def test_get_timeout_zero_on_ready_object(rt):
    ref = repartir.put(41)
    assert repartir.get(ref, timeout=0) == 41


def test_get_of_non_ref_is_rejected(rt):
    with pytest.raises((TypeError, ValueError)):
        repartir.get(5)


# --------------------------------------------------------------------------- wait


def _assert_partition(refs, ready, not_ready):
    assert sorted(map(refs.index, ready)) == list(map(refs.index, ready)), (
        "ready not in input order")
    assert sorted(map(refs.index, not_ready)) == list(map(refs.index, not_ready)), (
        "not_ready not in input order"
    )
    assert sorted(map(refs.index, ready + not_ready)) == list(range(len(refs)))


def test_wait_num_returns_and_order(rt):
    refs = [nap.remote(0.0, 0), nap.remote(1.5, 1), nap.remote(0.0, 2)]
    ready, not_ready = repartir.wait(refs, num_returns=2, timeout=20)
    assert isinstance(ready, list) and isinstance(not_ready, list)
    assert ready == [refs[0], refs[2]]
    assert not_ready == [refs[1]]
    assert repartir.get(refs) == [0, 1, 2]


def test_wait_default_num_returns_is_one(rt):
    refs = [nap.remote(1.5, "slow"), nap.remote(0.0, "fast")]  # two workers run both at once
    ready, not_ready = repartir.wait(refs, timeout=20)
    assert ready == [refs[1]]
    assert not_ready == [refs[0]]
    assert repartir.get(ready[0]) == "fast"
    assert repartir.get(refs[0]) == "slow"


def test_wait_returns_at_most_num_returns(rt):
    refs = [repartir.put(i) for i in range(6)]
    ready, not_ready = repartir.wait(refs, num_returns=2)
    assert len(ready) == 2 and len(not_ready) == 4
    _assert_partition(refs, ready, not_ready)
    ready, not_ready = repartir.wait(refs, num_returns=6)
    assert ready == refs and not_ready == []


def test_wait_timeout_zero_returns_immediately(rt, tmp_path):
    gate = tmp_path / "gate"
    slow = [gated.remote(str(gate), i) for i in range(2)]  # not done before the gate opens
    done = repartir.put("done")
    refs = [slow[0], done, slow[1]]
    start = time.monotonic()
    ready, not_ready = repartir.wait(refs, num_returns=3, timeout=0)
    assert time.monotonic() - start < QUICK_S
    assert ready == [done]
    assert not_ready == [slow[0], slow[1]]
    gate.touch()
    assert repartir.get(slow, timeout=60) == [0, 1]  # leave the workers idle for the next test


def test_wait_timeout_returns_partial(rt, tmp_path):
    gate = tmp_path / "gate"
    refs = [nap.remote(0.0, "a"), gated.remote(str(gate), "b"), nap.remote(0.1, "c")]
    assert repartir.get([refs[0], refs[2]], timeout=60) == ["a", "c"]
    start = time.monotonic()
    ready, not_ready = repartir.wait(refs, num_returns=3, timeout=1.0)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < QUICK_S, elapsed  # the whole timeout, then what is ready
    assert ready == [refs[0], refs[2]]
    assert not_ready == [refs[1]]
    gate.touch()
    assert repartir.get(refs, timeout=60) == ["a", "b", "c"]


def test_wait_until_all_ready(rt):
    refs = [nap.remote(0.05 * i, i) for i in range(6)][::-1]
    ready, not_ready = repartir.wait(refs, num_returns=len(refs), timeout=30)
    assert ready == refs and not_ready == []


# --------------------------------------------------------------------------- returns, options


def test_multiple_returns(rt):
    r1, r2 = split_pair.remote(4)
    assert isinstance(r1, repartir.ObjectRef) and isinstance(r2, repartir.ObjectRef)
    assert r1 != r2
    assert repartir.get([r2, r1]) == [-4, 4]


def test_decorator_with_all_options(rt):
    a, b = with_all_options.remote(21)
    assert repartir.get(a) == 42
    assert repartir.get(b) == "21"


def test_options_num_returns(rt):
    refs = triple.options(num_returns=3).remote(10)
    assert len(refs) == 3
    assert repartir.get(list(refs)) == [10, 11, 12]
    # options() does not change the function itself
    single = triple.remote(1)
    assert isinstance(single, repartir.ObjectRef)
    assert repartir.get(single) == (1, 2, 3)


def test_options_overrides_decorator(rt):
    ref = split_pair.options(num_returns=1).remote(3)
    assert isinstance(ref, repartir.ObjectRef)
    assert repartir.get(ref) == (3, -3)


def test_wrong_number_of_returns_fails_the_task(rt):
    refs = triple.options(num_returns=2).remote(1)
    for ref in refs:  # each return fails with the task's error (a hang is GetTimeoutError)
        with pytest.raises(ValueError,
                           match="num_returns=2 but returned tuple of length 3") as info:
            repartir.get(ref, timeout=30)
        assert isinstance(info.value, repartir.TaskError)


def test_large_multiple_returns(rt):
    a, b = split_pair.remote(np.ones(300_000))
    va, vb = repartir.get([a, b])
    assert float(va.sum()) == 300_000 and float(vb.sum()) == -300_000


# --------------------------------------------------------------------------- refs as arguments


def test_top_level_ref_arguments_are_resolved(rt):
    x = repartir.put(40)
    assert repartir.get(add.remote(x, 2)) == 42
    assert repartir.get(add.remote(2, b=x)) == 42, (
        "top-level keyword ref arguments are resolved too")
    assert repartir.get(inspect_arg.remote(x)) == "int"
    big = repartir.put(np.arange(200_000))
    assert repartir.get(inspect_arg.remote(big)) == "ndarray"


def test_task_result_ref_as_argument(rt):
    first = add.remote(1, 1)
    assert repartir.get(add.remote(first, first)) == 4


def test_nested_refs_stay_refs(rt):
    x = repartir.put(1)
    y = add.remote(2, 3)
    assert repartir.get(y) == 5  # ready before it is passed nested
    assert repartir.get(inspect_arg.remote([x, y, 7])) == ["ObjectRef", "ObjectRef", "int"]
    assert repartir.get(get_nested.remote([x, y])) == [1, 5]


def test_nested_ref_returned_unchanged(rt):
    x = repartir.put("payload")
    (back,) = repartir.get(echo.remote([x]))
    assert isinstance(back, repartir.ObjectRef)
    assert back == x and hash(back) == hash(x) and back.hex() == x.hex()
    assert repartir.get(back) == "payload"


def test_chain_of_tasks_submitted_before_first_finishes(rt, tmp_path):
    gate = tmp_path / "gate"
    start = time.monotonic()
    head = gated.remote(str(gate), 0)  # finishes only when the gate opens
    ref = head
    for _ in range(10):
        ref = inc_after.remote(ref)
    assert time.monotonic() - start < QUICK_S
    assert repartir.wait([head], timeout=0) == ([], [head]), \
        "submitting a chain must not wait for its head"
    gate.touch()
    assert repartir.get(ref, timeout=30) == 10


def test_fan_in_of_pending_results(rt):
    parts = [nap.remote(0.2, i) for i in range(4)]
    total = repartir.remote(lambda *xs: sum(xs)).remote(*parts)
    assert repartir.get(total, timeout=30) == 6


def test_big_array_chain(rt):
    a = repartir.put(np.zeros(250_000))
    ref = a
    for _ in range(3):
        ref = repartir.remote(lambda v: v + 1).remote(ref)
    out = repartir.get(ref)
    assert out.shape == (250_000,) and float(out.min()) == 3.0 == float(out.max())
