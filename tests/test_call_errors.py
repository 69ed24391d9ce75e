"""Errors where the user made them (``docs/architecture.md``: "Actors" for the argument check
at ``.remote()``, "Object store" for remote tracebacks).

- Wrong call arguments (missing, extra, given twice, unknown keyword) raise ``TypeError`` at
  ``.remote()`` -- for functions, actor constructors and actor methods of plain, threaded
  and async actors, static and class methods, through ``.options()`` and from inside tasks
  -- and nothing is submitted; every call a local call accepts still runs.
- ``@remote`` on an ``async def`` function (or async generator, also behind a
  ``functools.partial`` or as ``__call__``) raises ``ValueError`` at decoration, saying what
  to do; ``@remote()`` with empty parentheses raises ``TypeError`` (as in Ray).
- Remote tracebacks name the user's file and line and show the source line: module-level
  functions, lambdas, closures, actor methods, code of a notebook cell (known only to the
  driver's ``linecache``) and code whose file the worker cannot read (another machine's).
"""

from __future__ import annotations

import functools
import linecache
import os
import textwrap
from pathlib import Path

import pytest

import repartir
from repartir.runtime import driver

pytestmark = pytest.mark.timeout(120)

LONG = 60.0
THIS_FILE = os.path.abspath(__file__)


def line_of(marker: str) -> int:
    """The number of the line of this file that ends with ``# <marker>``."""
    for i, text in enumerate(Path(THIS_FILE).read_text().splitlines(), 1):
        if text.rstrip().endswith(f"# {marker}"):
            return i
    raise AssertionError(f"no line marked {marker}")


# --------------------------------------------------------------------------- remote code


@repartir.remote
def two(x, y=2):
    return x + y


@repartir.remote
def star(*args, **kwargs):
    return args, kwargs


@repartir.remote
def keyword_only(a, *, b, c=3):
    return a + b + c


@repartir.remote
def positional_only(a, /, b=0, **rest):
    return a, b, rest


@repartir.remote
def submit_wrongly():
    return two.remote(1, 2, 3)


@repartir.remote
def count_up(n, step=1):
    if step == 0:
        raise ZeroDivisionError("step 0")  # stream-end
    yield from range(0, n, step)


@repartir.remote
def call_method_wrongly(handle):
    return handle.add.remote()


@repartir.remote
class Account:
    def __init__(self, owner, balance=0, *, currency="EUR"):
        self.owner = owner
        self.balance = balance
        self.currency = currency

    def add(self, amount, note=None):
        self.balance += amount
        return self.balance

    def tags(self, *tags, **labels):
        return tags, labels

    @staticmethod
    def rate(a, b):
        return a / b

    @classmethod
    def kind(cls, loud=False):
        return cls.__name__.upper() if loud else cls.__name__

    def read(self):
        return self.owner, self.balance, self.currency


@repartir.remote
class AsyncAccount:
    def __init__(self, start):
        self.balance = start

    async def add(self, amount):
        self.balance += amount
        return self.balance

    async def overdraw(self):
        raise ArithmeticError(f"balance {self.balance}")  # async-method


@repartir.remote
def fails_here(x):
    y = x * 2
    raise ValueError(f"failed with {y}")  # fails-here


@repartir.remote
class Faulty:
    def __init__(self, fail=False):
        if fail:
            raise OSError("no device")  # faulty-constructor

    def method(self, k):
        return {}[k]  # faulty-method


def _actor_count() -> int:
    node = driver._node
    with node._lock:
        return len(node.actor_procs)


# --------------------------------------------------------------------------- item 8


WRONG_FUNCTION_CALLS = [
    (two, (), {}, "missing a required argument: 'x'"),
    (two, (1, 2, 3), {}, "too many positional arguments"),
    (two, (1,), {"x": 1}, "multiple values for argument 'x'"),
    (two, (1,), {"z": 1}, "got an unexpected keyword argument 'z'"),
    (keyword_only, (1,), {}, "missing a required argument: 'b'"),
    (keyword_only, (1, 2), {}, "too many positional arguments"),
    (positional_only, (), {"a": 1}, "('a' parameter is positional only|missing a required "
                                    "argument: 'a')"),
]


@pytest.mark.parametrize("fn, args, kwargs, fault", WRONG_FUNCTION_CALLS)
def test_wrong_arguments_of_a_function_raise_at_remote(rt, fn, args, kwargs, fault):
    name = fn._name
    with pytest.raises(TypeError, match=rf"^{name}\.remote\(\): {fault}.*; the signature is "
                                        rf"{name}\("):
        fn.remote(*args, **kwargs)
    with pytest.raises(TypeError, match=fault):  # a copy with other options checks too
        fn.options(num_cpus=1).remote(*args, **kwargs)
    with pytest.raises(TypeError):  # and a local call agrees (in its own words)
        fn._function(*args, **kwargs)


def test_calls_a_local_call_accepts_still_run(rt):
    ref = repartir.put(5)
    assert repartir.get([
        two.remote(1), two.remote(1, 5), two.remote(x=1, y=5), two.remote(ref),
        two.remote(x=ref, y=ref),
        keyword_only.remote(1, b=2), keyword_only.remote(a=1, b=2, c=0),
        positional_only.remote(1), positional_only.remote(1, b=2, a=3),
        star.remote(), star.remote(1, 2, k=3),
    ], timeout=LONG) == [
        3, 6, 6, 7, 10, 6, 3, (1, 0, {}), (1, 2, {"a": 3}), ((), {}), ((1, 2), {"k": 3})]


def test_streaming_calls_are_checked_too(rt):
    streaming = count_up.options(num_returns="streaming")
    with pytest.raises(TypeError, match=r"count_up\.remote\(\): missing a required"):
        streaming.remote()
    with pytest.raises(TypeError, match="unexpected keyword argument 'stride'"):
        streaming.remote(3, stride=2)
    assert [repartir.get(r, timeout=LONG) for r in streaming.remote(5, step=2)] == [0, 2, 4]


def test_wrong_arguments_inside_a_task_fail_that_task(rt):
    with pytest.raises(TypeError, match=r"two\.remote\(\): too many positional") as info:
        repartir.get(submit_wrongly.remote(), timeout=LONG)
    assert isinstance(info.value, repartir.TaskError)


@pytest.mark.parametrize("args, kwargs, fault", [
    ((), {}, "missing a required argument: 'owner'"),
    (("ann", 1, 2), {}, "too many positional arguments"),
    (("ann",), {"owner": "bob"}, "multiple values for argument 'owner'"),
    (("ann",), {"colour": "red"}, "got an unexpected keyword argument 'colour'"),
])
def test_wrong_arguments_of_an_actor_constructor_raise_at_remote(rt, args, kwargs, fault):
    before = _actor_count()
    with pytest.raises(TypeError, match=rf"^Account\.remote\(\): {fault}"):
        Account.remote(*args, **kwargs)
    with pytest.raises(TypeError, match=fault):
        Account.options(max_concurrency=2).remote(*args, **kwargs)
    assert _actor_count() == before, "no actor process is started for a wrong call"


def test_wrong_arguments_of_actor_methods_raise_at_remote(rt):
    for options in ({}, {"max_concurrency": 4}):  # a plain and a threaded actor
        a = Account.options(**options).remote("ann", currency="USD")
        for call, fault in [
            (lambda: a.add.remote(), "missing a required argument: 'amount'"),
            (lambda: a.add.remote(1, 2, 3), "too many positional arguments"),
            (lambda: a.add.remote(1, amount=2), "multiple values for argument 'amount'"),
            (lambda: a.add.remote(1, memo="x"), "got an unexpected keyword argument 'memo'"),
            (lambda: a.read.remote(1), "too many positional arguments"),
            (lambda: a.rate.remote(1), "missing a required argument: 'b'"),
            (lambda: a.kind.remote(True, False), "too many positional arguments"),
            (lambda: a.add.options(num_returns=1).remote(), "missing a required"),
        ]:
            with pytest.raises(TypeError, match=fault):
                call()
        # the actor is alive and only the right calls ran (one at a time: a threaded
        # actor runs calls sent together in any order)
        assert [repartir.get(call(), timeout=LONG) for call in [
            lambda: a.add.remote(5), lambda: a.add.remote(amount=1, note="n"),
            lambda: a.tags.remote(), lambda: a.tags.remote(1, x=2),
            lambda: a.rate.remote(1, 4), lambda: a.kind.remote(loud=True),
            lambda: a.read.remote(),
        ]] == [5, 6, ((), {}), ((1,), {"x": 2}), 0.25, "ACCOUNT", ("ann", 6, "USD")]
        repartir.kill(a)


def test_wrong_arguments_of_async_actor_methods_raise_at_remote(rt):
    a = AsyncAccount.remote(10)
    with pytest.raises(TypeError, match=r"AsyncAccount\.add\.remote\(\): missing"):
        a.add.remote()
    with pytest.raises(TypeError, match="too many positional"):
        AsyncAccount.remote(1, 2)
    assert repartir.get(a.add.remote(amount=5), timeout=LONG) == 15
    repartir.kill(a)


def test_a_handle_passed_to_a_task_checks_there_too(rt):
    a = Account.remote("ann")
    with pytest.raises(TypeError, match=r"Account\.add\.remote\(\): missing") as info:
        repartir.get(call_method_wrongly.remote(a), timeout=LONG)
    assert isinstance(info.value, repartir.TaskError)
    assert repartir.get(a.add.remote(1), timeout=LONG) == 1
    repartir.kill(a)


# --------------------------------------------------------------------------- item 9


async def _coroutine_function(x):
    return x


async def _async_generator(n):
    for i in range(n):
        yield i


class _AsyncCallable:
    async def __call__(self, x):
        return x


@pytest.mark.parametrize("fn, what", [
    (_coroutine_function, "'async def' function"),
    (_async_generator, "async generator"),
    (functools.partial(_coroutine_function, 1), "'async def' function"),
    (_AsyncCallable(), "'async def' function"),
])
def test_remote_on_async_functions_is_refused_at_decoration(fn, what):
    for decorate in (repartir.remote, repartir.remote(num_cpus=1)):
        with pytest.raises(ValueError, match=what) as info:
            decorate(fn)
        assert "actor" in str(info.value), "the message says what to do instead"
    with pytest.raises(ValueError, match=r"asyncio\.run"):
        repartir.remote(_coroutine_function)


def test_async_methods_of_actor_classes_are_accepted():
    assert isinstance(AsyncAccount, repartir.ActorClass)
    assert isinstance(repartir.remote(_AsyncCallable), repartir.ActorClass)


def test_empty_parentheses_are_refused_as_in_ray():
    class Plain:
        pass

    def plain():
        pass

    for target in (Plain, plain):
        with pytest.raises(TypeError, match=r"@remote\(\) with empty parentheses"):
            repartir.remote()(target)
    assert isinstance(repartir.remote(Plain), repartir.ActorClass)
    assert isinstance(repartir.remote(max_restarts=1)(Plain), repartir.ActorClass)
    assert isinstance(repartir.remote(num_returns=1)(plain), repartir.RemoteFunction)


# --------------------------------------------------------------------------- item 12


def _remote_traceback(ref) -> str:
    with pytest.raises(Exception) as info:
        repartir.get(ref, timeout=LONG)
    assert isinstance(info.value, repartir.TaskError)
    text = str(info.value)
    assert "<dynamic-code>" not in text
    return text


def test_traceback_of_a_function_names_its_file_line_and_source(rt):
    text = _remote_traceback(fails_here.remote(21))
    # as a local traceback: from the user's frame on, not the runtime's that called it
    assert ("Traceback (most recent call last):\n"
            f'  File "{THIS_FILE}", line {line_of("fails-here")}, in fails_here\n'
            '    raise ValueError(f"failed with {y}")  # fails-here\n') in text


def test_traceback_of_a_lambda_and_a_closure(rt):
    def outer(k):
        def inner(x):
            return x[k]  # closure-line
        return inner

    ref = repartir.remote(outer(3)).remote([1])
    text = _remote_traceback(ref)
    assert f'File "{THIS_FILE}", line {line_of("closure-line")}, in inner' in text
    assert "return x[k]  # closure-line" in text
    lam = repartir.remote(lambda v: 1 / v)  # lambda-line
    text = _remote_traceback(lam.remote(0))
    assert f'File "{THIS_FILE}", line {line_of("lambda-line")}, in <lambda>' in text
    assert "lam = repartir.remote(lambda v: 1 / v)  # lambda-line" in text


def test_traceback_of_an_actor_method(rt):
    a = Faulty.remote()
    text = _remote_traceback(a.method.remote("k"))
    assert f'File "{THIS_FILE}", line {line_of("faulty-method")}, in method' in text
    assert "return {}[k]  # faulty-method" in text
    repartir.kill(a)


def test_traceback_of_an_async_method_and_of_a_stream(rt):
    a = AsyncAccount.remote(3)
    text = _remote_traceback(a.overdraw.remote())
    assert ("Traceback (most recent call last):\n"
            f'  File "{THIS_FILE}", line {line_of("async-method")}, in overdraw\n') in text
    repartir.kill(a)
    items = list(count_up.options(num_returns="streaming").remote(0, step=0))
    text = _remote_traceback(items[-1])
    assert f'File "{THIS_FILE}", line {line_of("stream-end")}, in count_up' in text
    assert 'raise ZeroDivisionError("step 0")  # stream-end' in text


def test_a_failed_constructor_names_its_file_and_line(rt):
    a = Faulty.remote(fail=True)
    with pytest.raises(repartir.ActorDiedError) as info:
        repartir.get(a.method.remote(1), timeout=LONG)
    assert f"({THIS_FILE}, line {line_of('faulty-constructor')}) raised OSError: no device" \
        in str(info.value)


def _define(source: str, filename: str):
    namespace: dict = {}
    exec(compile(textwrap.dedent(source), filename, "exec"), namespace)
    return namespace


CELL = """
    def cell_function(n):
        total = sum(range(n))
        raise RuntimeError(f"cell total {total}")

    class CellActor:
        def go(self):
            return cell_function(3)
"""


def test_traceback_of_code_from_a_notebook_cell(rt):
    """A notebook registers each cell's source in the driver's ``linecache`` under a name
    that is no file: the worker shows those lines too."""
    name = "<ipython-input-7-0a1b2c3d>"
    source = textwrap.dedent(CELL)
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    try:
        ns = _define(CELL, name)
        text = _remote_traceback(repartir.remote(ns["cell_function"]).remote(4))
        assert f'File "{name}", line 4, in cell_function' in text
        assert 'raise RuntimeError(f"cell total {total}")' in text
        actor = repartir.remote(ns["CellActor"]).remote()
        text = _remote_traceback(actor.go.remote())
        assert f'File "{name}", line 8, in go' in text
        assert "return cell_function(3)" in text
        repartir.kill(actor)
    finally:
        linecache.cache.pop(name, None)


def test_traceback_of_code_whose_file_the_worker_cannot_read(rt, tmp_path):
    """As on another machine: the file is gone when the task runs; its lines travelled."""
    path = tmp_path / "gone_module.py"
    path.write_text(textwrap.dedent(CELL))
    fn = repartir.remote(_define(CELL, str(path))["cell_function"])
    fn._code()  # pickled now, while the file exists (as in the driver of another machine)
    linecache.checkcache(str(path))
    path.unlink()
    text = _remote_traceback(fn.remote(5))
    assert f'File "{path}", line 4, in cell_function' in text
    assert 'raise RuntimeError(f"cell total {total}")' in text
