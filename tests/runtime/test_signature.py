"""The argument check of ``.remote()`` (``docs/architecture.md``, "Actors": arguments are
checked at ``.remote()``), without processes: an
:class:`ArgCheck` refuses exactly the calls that ``inspect.Signature.bind`` -- and so a local
call -- refuses, over random signatures and calls (hypothesis), and survives pickling (it
travels with actor handles)."""

from __future__ import annotations

import functools
import inspect
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repartir.runtime.signature import ArgCheck, arg_check, method_arg_check

P = inspect.Parameter
NAMES = ["a", "b", "c", "d", "e", "f"]


@st.composite
def signatures(draw) -> inspect.Signature:
    """A valid signature: kinds in order, no default before a positional without one."""
    names = iter(draw(st.permutations(NAMES)))
    params: list[P] = []
    defaulted = False
    for kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD):
        for _ in range(draw(st.integers(0, 2))):
            defaulted = defaulted or draw(st.booleans())
            params.append(P(next(names), kind, default=0 if defaulted else P.empty))
    if draw(st.booleans()):
        params.append(P("args", P.VAR_POSITIONAL))
    for _ in range(draw(st.integers(0, 2))):
        params.append(P(next(names), P.KEYWORD_ONLY,
                        default=0 if draw(st.booleans()) else P.empty))
    if draw(st.booleans()):
        params.append(P("kwargs", P.VAR_KEYWORD))
    return inspect.Signature(params)


calls = st.tuples(st.integers(0, 5),
                  st.lists(st.sampled_from(NAMES + ["args", "zz"]), max_size=4, unique=True))


def _local_call_ok(sig: inspect.Signature, args: tuple, kwargs: dict) -> bool:
    """The model: a real function with that signature, called locally.  (Not ``bind``: in
    Python 3.11 it refuses ``f(a=1)`` for ``def f(a=0, /, **kw)``, which a call accepts.)"""
    namespace: dict = {}
    exec(f"def fn{sig}: pass", namespace)
    try:
        namespace["fn"](*args, **kwargs)
    except TypeError:
        return False
    return True


@settings(max_examples=400)  # no processes: ~1 ms an example
@given(signatures(), calls)
def test_check_refuses_exactly_what_a_local_call_refuses(sig, call):
    def fn(*args, **kwargs):
        pass

    fn.__signature__ = sig
    check = arg_check(fn, "fn")
    args = tuple(range(call[0]))
    kwargs = {k: 1 for k in call[1]}
    if _local_call_ok(sig, args, kwargs):
        check.check(args, kwargs)
        if not kwargs:  # the inline test of .remote() agrees
            assert check.min_pos <= len(args) <= check.max_pos or check.max_pos == -1
    else:
        with pytest.raises(TypeError, match=r"^fn\.remote\(\): .*; the signature is fn\("):
            check.check(args, kwargs)
    again = pickle.loads(pickle.dumps(check))
    assert (again.min_pos, again.max_pos, again.params) == \
        (check.min_pos, check.max_pos, check.params)


def test_messages_name_the_function_its_signature_and_the_fault():
    def f(x, y=2, *, z):
        pass

    check = arg_check(f, "f")
    for args, kwargs, fault in [
        ((), {"z": 1}, "missing a required argument: 'x'"),
        ((1, 2, 3), {"z": 1}, "too many positional arguments"),
        ((1,), {"x": 1, "z": 1}, "multiple values for argument 'x'"),
        ((1,), {"z": 1, "w": 0}, "got an unexpected keyword argument 'w'"),
        ((1,), {}, "missing a required argument: 'z'"),
    ]:
        with pytest.raises(TypeError) as info:
            check.check(args, kwargs)
        assert str(info.value) == f"f.remote(): {fault}; the signature is f(x, y=..., *, z)"
    check.check((1,), {"z": 1})
    check.check((), {"x": 1, "y": 2, "z": 3})


def test_callables_without_a_readable_signature_are_not_checked():
    check = arg_check(print, "print")  # a builtin with a signature: checked
    check.check(("a", "b"), {"sep": ","})
    opaque = arg_check(min, "min")  # no signature found for builtin min
    opaque.check((1, 2, 3), {"anything": 1})
    assert pickle.loads(pickle.dumps(opaque)) is opaque


def test_wrappers_are_taken_as_they_are():
    def inner(x):
        pass

    @functools.wraps(inner)
    def wrapper(*args, **kwargs):  # a decorator may accept more than it wraps
        return inner(*args, **kwargs)

    arg_check(wrapper, "wrapper").check((1, 2), {"k": 3})
    with pytest.raises(TypeError):
        arg_check(functools.partial(inner, 1), "p").check((2,), {})


class Shapes:
    def __init__(self, a, b=1):
        pass

    def method(self, x, *, flag=False):
        pass

    @staticmethod
    def static(x, y):
        pass

    @classmethod
    def klass(cls, x):
        pass

    def star(*args):  # self arrives in args
        pass


@pytest.mark.parametrize("name, good, bad", [
    ("method", [((1,), {}), ((), {"x": 1, "flag": True})], [((), {}), ((1, 2), {})]),
    ("static", [((1, 2), {})], [((1,), {}), ((1, 2, 3), {})]),
    ("klass", [((1,), {})], [((), {}), ((1, 2), {})]),
    ("star", [((), {}), ((1, 2), {})], [((), {"k": 1})]),
])
def test_methods_are_checked_as_called_on_an_instance(name, good, bad):
    check = method_arg_check(Shapes, name, f"Shapes.{name}")
    for args, kwargs in good:
        check.check(args, kwargs)
    for args, kwargs in bad:
        with pytest.raises(TypeError, match=f"Shapes.{name}"):
            check.check(args, kwargs)


def test_a_class_is_checked_by_its_constructor():
    check = arg_check(Shapes, "Shapes")
    check.check((1,), {})
    check.check((1,), {"b": 2})
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        check.check((), {})

    class NoInit:
        pass

    with pytest.raises(TypeError, match="too many positional arguments"):
        arg_check(NoInit, "NoInit").check((1,), {})
    assert isinstance(check, ArgCheck)
