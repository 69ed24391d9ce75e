"""Generators as Ray has them, for tasks and for the methods of sync, threaded and async
actors (async actors: async generator methods, and a plain generator method too):

- a generator streams by default (``ObjectRefGenerator``), ``async for`` over it in asyncio
  code of the driver and inside an async actor;
- ``num_returns=N``: one ref per item; too few items (the missing refs hold a
  ``ValueError``), too many (every ref holds it), an error mid-generator (the items before
  keep their values, the remaining refs hold the error);
- ``num_returns="dynamic"``: one ref whose value is a ``DynamicObjectRefGenerator``; an
  error mid-generator is one more ref, the last; the ref passed to another task; large items
  leave nothing in the store once dropped;
- option checks (``num_returns`` values, ``@repartir.method``) and ``"dynamic"`` on a
  function that is not a generator.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import repartir
from repartir import DynamicObjectRefGenerator, ObjectRefGenerator
from rtsupport import settled_used_bytes, used_bytes_back_to

LONG = 60.0  # generous timeout for anything that must eventually happen (shared machine)


def _items(n, fail_at=None, size=0):
    for i in range(n):
        if i == fail_at:
            raise KeyError(f"broke at {i}")
        yield np.full(size, i, dtype=np.int64) if size else i


@repartir.remote
def items(n, fail_at=None, size=0):
    yield from _items(n, fail_at, size)


@repartir.remote
class Gen:
    def items(self, n, fail_at=None, size=0):
        yield from _items(n, fail_at, size)

    @repartir.method(num_returns=2)
    def pair(self):
        yield "a"
        yield "b"


@repartir.remote
class AsyncGen:
    async def items(self, n, fail_at=None, size=0):
        for item in _items(n, fail_at, size):
            await asyncio.sleep(0)
            yield item

    def plain(self, n):  # a plain generator method of an async actor
        yield from range(n)

    async def consume(self, n):
        """``async for`` over a streaming task's refs, inside the actor's event loop."""
        out = []
        async for ref in items.remote(n):
            out.append(await ref)
        return out


KINDS = ["task", "actor", "threaded", "async"]


@pytest.fixture(scope="module")
def callers(rt):
    """kind -> what ``.options(...)`` and ``.remote(n, fail_at, size)`` are called on."""
    return {
        "task": items,
        "actor": Gen.remote().items,
        "threaded": Gen.options(max_concurrency=3).remote().items,
        "async": AsyncGen.remote().items,
    }


def values(refs):
    return [int(v) if not isinstance(v, np.ndarray) else int(v[0])
            for v in repartir.get(list(refs), timeout=LONG)]


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("kind", KINDS)
def test_a_generator_streams_by_default(callers, kind):
    gen = callers[kind].remote(4)
    assert isinstance(gen, ObjectRefGenerator)
    assert values(gen) == [0, 1, 2, 3]
    assert gen.completed()


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_error_mid_generator_is_the_last_ref(callers, kind):
    refs = list(callers[kind].remote(5, 2))
    assert len(refs) == 3
    assert values(refs[:2]) == [0, 1]
    with pytest.raises(KeyError, match="broke at 2"):
        repartir.get(refs[2], timeout=LONG)


def test_async_for_in_the_driver(rt):
    async def main():
        out = []
        async for ref in items.remote(5):
            out.append(await ref)
        return out

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_async_for_ends_with_the_error_ref(rt):
    async def main():
        return [ref async for ref in items.remote(3, 1)]

    refs = asyncio.run(main())
    assert len(refs) == 2 and repartir.get(refs[0], timeout=LONG) == 0
    with pytest.raises(KeyError, match="broke at 1"):
        repartir.get(refs[1], timeout=LONG)


def test_async_for_inside_an_async_actor(rt):
    a = AsyncGen.remote()
    assert repartir.get(a.consume.remote(4), timeout=LONG) == [0, 1, 2, 3]


def test_plain_generator_method_of_an_async_actor(rt):
    a = AsyncGen.remote()
    assert values(a.plain.remote(3)) == [0, 1, 2]
    assert values(a.plain.options(num_returns=2).remote(2)) == [0, 1]
    dyn = repartir.get(a.plain.options(num_returns="dynamic").remote(3), timeout=LONG)
    assert values(dyn) == [0, 1, 2]


# --------------------------------------------------------------------------- num_returns=N


@pytest.mark.parametrize("kind", KINDS)
def test_num_returns_n_gives_one_ref_per_item(callers, kind):
    refs = callers[kind].options(num_returns=3).remote(3)
    assert isinstance(refs, list) and len(refs) == 3
    assert values(refs) == [0, 1, 2]
    one = callers[kind].options(num_returns=1).remote(1)  # one ref, not a list
    assert repartir.get(one, timeout=LONG) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_too_few_items(callers, kind):
    refs = callers[kind].options(num_returns=4).remote(2)
    assert values(refs[:2]) == [0, 1]
    for ref in refs[2:]:
        with pytest.raises(ValueError, match="yielded 2 item.* num_returns=4"):
            repartir.get(ref, timeout=LONG)


@pytest.mark.parametrize("kind", KINDS)
def test_too_many_items(callers, kind):
    refs = callers[kind].options(num_returns=2).remote(3)
    for ref in refs:
        with pytest.raises(ValueError, match="more than num_returns=2"):
            repartir.get(ref, timeout=LONG)


@pytest.mark.parametrize("kind", KINDS)
def test_error_mid_generator_with_num_returns(callers, kind):
    refs = callers[kind].options(num_returns=4).remote(4, 2)
    assert values(refs[:2]) == [0, 1]
    for ref in refs[2:]:
        with pytest.raises(KeyError, match="broke at 2"):
            repartir.get(ref, timeout=LONG)
    refs = callers[kind].options(num_returns=2).remote(4, 0)  # before the first item
    for ref in refs:
        with pytest.raises(KeyError, match="broke at 0"):
            repartir.get(ref, timeout=LONG)


def test_method_decorator_num_returns_on_a_generator(rt):
    assert repartir.get(Gen.remote().pair.remote(), timeout=LONG) == ["a", "b"]


def test_large_items_with_num_returns_leave_nothing(rt):
    base = settled_used_bytes()
    refs = items.options(num_returns=3).remote(3, None, 200_000)  # 1.6 MB each, in the arena
    assert values(refs) == [0, 1, 2]
    del refs
    assert used_bytes_back_to(base) < base + (1 << 20)
    refs = items.options(num_returns=2).remote(3, None, 200_000)  # too many: freed too
    with pytest.raises(ValueError, match="more than num_returns=2"):
        repartir.get(refs[0], timeout=LONG)
    del refs
    assert used_bytes_back_to(base) < base + (1 << 20)


# --------------------------------------------------------------------------- dynamic


@pytest.mark.parametrize("kind", KINDS)
def test_dynamic_gives_a_ref_to_the_refs(callers, kind):
    ref = callers[kind].options(num_returns="dynamic").remote(4)
    assert isinstance(ref, repartir.ObjectRef)
    gen = repartir.get(ref, timeout=LONG)
    assert isinstance(gen, DynamicObjectRefGenerator)
    assert len(gen) == 4 and all(isinstance(r, repartir.ObjectRef) for r in gen)
    assert values(gen) == [0, 1, 2, 3]
    empty = repartir.get(callers[kind].options(num_returns="dynamic").remote(0), timeout=LONG)
    assert list(empty) == []


@pytest.mark.parametrize("kind", KINDS)
def test_dynamic_error_is_one_more_ref(callers, kind):
    gen = repartir.get(callers[kind].options(num_returns="dynamic").remote(5, 2), timeout=LONG)
    refs = list(gen)
    assert len(refs) == 3
    assert values(refs[:2]) == [0, 1]
    with pytest.raises(KeyError, match="broke at 2"):
        repartir.get(refs[2], timeout=LONG)


@repartir.remote
def total(gen):
    return sum(repartir.get(list(gen)))


def test_dynamic_ref_passed_to_a_task(rt):
    ref = items.options(num_returns="dynamic").remote(5)
    assert repartir.get(total.remote(ref), timeout=LONG) == 10
    gen = repartir.get(ref, timeout=LONG)
    assert repartir.get(total.remote(gen), timeout=LONG) == 10  # the generator itself too


def test_dynamic_large_items_outlive_the_task_and_leave_nothing(rt):
    base = settled_used_bytes()
    ref = items.options(num_returns="dynamic").remote(3, None, 200_000)
    gen = repartir.get(ref, timeout=LONG)
    del ref  # the item refs hold their objects by themselves
    for _ in range(3):  # the workers' other tasks run meanwhile
        assert repartir.get(items.options(num_returns=1).remote(1), timeout=LONG) == 0
    assert values(gen) == [0, 1, 2]
    del gen
    assert used_bytes_back_to(base) < base + (1 << 20)


@repartir.remote(num_returns="dynamic")
def not_a_generator():
    return [1, 2]


def test_dynamic_on_a_function_that_returns_no_generator(rt):
    with pytest.raises(TypeError, match="num_returns='dynamic'.*not a generator"):
        repartir.get(not_a_generator.remote(), timeout=LONG)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("bad", [-1, -2, 65534, "stream", 1.5, True])
def test_bad_num_returns_is_refused(rt, bad):
    with pytest.raises(ValueError, match="num_returns must be"):
        items.options(num_returns=bad)
    with pytest.raises(ValueError, match="num_returns must be"):
        repartir.method(num_returns=bad)
    with pytest.raises(ValueError, match="num_returns must be"):
        Gen.remote().items.options(num_returns=bad)
