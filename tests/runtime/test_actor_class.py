"""Actor classes that behave like classes, and named actors created concurrently
(``docs/architecture.md``, "Actors").

- Inside an actor class decorated with ``@repartir.remote``, its name is the plain class:
  ``super(Cls, self).__init__()``, ``Cls.CONSTANT``, ``Cls.static()``, ``Cls.klass()`` and
  ``isinstance(self, Cls)`` work -- for plain, threaded and async actors, for classes at
  module level and inside functions -- while ``Cls.remote()`` keeps its meaning.
- In the driver, the decorated name answers for class attributes, static and class
  methods; ``dir()`` of the actor class, a handle and a method lists what they offer;
  subclassing the decorated name says what to do instead.
- One name, many threads at once: exactly one actor; every ``get_if_exists`` caller gets
  it, and without ``get_if_exists`` all callers but one get ``ValueError``.
"""

from __future__ import annotations

import functools
import os
import threading

import pytest

import repartir
from repartir.runtime import driver

pytestmark = pytest.mark.timeout(120)

LONG = 60.0
THREADS = 8


# --------------------------------------------------------------------------- remote code


class Base:
    def __init__(self, start):
        self.start = start

    def describe(self):
        return f"base {self.start}"


@repartir.remote
class Child(Base):
    """A child of a plain class."""

    STEP = 10

    def __init__(self, start):
        super(Child, self).__init__(start)  # the input
        self.total = start + Child.STEP + Child.double(1) + Child.offset()

    @staticmethod
    def double(x):
        return 2 * x

    @classmethod
    def offset(cls):
        return cls.STEP + 1

    @property
    def label(self):
        return f"{Child.__name__}:{self.total}"

    @functools.cached_property
    def cached(self):
        return isinstance(self, Child)

    def describe(self):
        return "child, " + super(Child, self).describe()

    def facts(self):
        return (self.total, Child.STEP, Child.double(3), Child.offset(), self.label,
                isinstance(self, Child) and self.cached, self.describe())

    def create_sibling(self):
        return Child.remote(0)

    def pid(self):
        return os.getpid()


@repartir.remote(max_concurrency=2)
class ThreadedChild(Base):
    LIMIT = 3

    def __init__(self):
        super(ThreadedChild, self).__init__(ThreadedChild.LIMIT)

    def facts(self):
        return self.start, ThreadedChild.LIMIT, type(self) is ThreadedChild


@repartir.remote
class AsyncChild(Base):
    LIMIT = 4

    def __init__(self):
        super(AsyncChild, self).__init__(AsyncChild.LIMIT)

    async def facts(self):
        return self.start, AsyncChild.LIMIT, isinstance(self, AsyncChild)


@repartir.remote
class Tally:
    def __init__(self, start=0):
        self.n = start

    def inc(self):
        self.n += 1
        return self.n

    def pid(self):
        return os.getpid()


def _live_actor_ids() -> set[bytes]:
    node = driver._node
    with node._lock:
        return {r.actor_id for r in node.actors.values() if not r.dead}


@pytest.fixture(autouse=True)
def _kill_actors_of_the_test(rt):
    before = _live_actor_ids()
    yield
    node = driver._node
    with node._lock:
        slots = [s for s, r in node.actors.items() if not r.dead and r.actor_id not in before]
    for slot in slots:
        node.kill_actor(slot, no_restart=True)


# --------------------------------------------------------------------------- item 13


def test_super_class_attributes_static_and_class_methods_inside_the_actor(rt):
    a = Child.remote(5)
    assert repartir.get(a.facts.remote(), timeout=LONG) == (
        5 + 10 + 2 + 11, 10, 6, 11, "Child:28", True, "child, base 5")
    assert repartir.get(ThreadedChild.remote().facts.remote(), timeout=LONG) == (3, 3, True)
    assert repartir.get(AsyncChild.remote().facts.remote(), timeout=LONG) == (4, 4, True)


def test_a_class_defined_inside_a_function(rt):
    class Local(Base):
        pass

    @repartir.remote
    class Inner(Local):
        FACTOR = 3

        def __init__(self):
            super(Inner, self).__init__(Inner.FACTOR)

        def value(self):
            return self.start * Inner.FACTOR, isinstance(self, Inner)

    assert repartir.get(Inner.remote().value.remote(), timeout=LONG) == (9, True)


def test_the_name_still_creates_actors_inside_the_actor(rt):
    """``Cls.remote()`` in the class's own code keeps its meaning: it creates another actor
    of the class (not ``AttributeError``), whose handle comes back to the driver."""
    a = Child.remote(1)
    sibling = repartir.get(a.create_sibling.remote(), timeout=LONG)
    assert sibling != a
    assert repartir.get(sibling.facts.remote(), timeout=LONG)[1] == 10
    assert repartir.get(sibling.pid.remote(), timeout=LONG) != \
        repartir.get(a.pid.remote(), timeout=LONG)
    assert repartir.get(a.facts.remote(), timeout=LONG)[1] == 10


def test_the_decorated_name_answers_for_the_class_in_the_driver():
    assert Child.STEP == 10
    assert Child.double(4) == 8
    assert Child.offset() == 11
    assert Child.describe is Child._cls.describe  # the plain function, as on the class
    assert isinstance(Child.label, property)
    assert Child.__name__ == "Child" and Child.__qualname__ == "Child"
    assert Child.__doc__ == "A child of a plain class."
    assert Child.__module__ == __name__
    with pytest.raises(AttributeError, match="no_such_thing"):
        Child.no_such_thing
    assert isinstance(Child.options(name="x"), repartir.ActorClass)
    assert Child.options(name="x").STEP == 10


def test_dir_lists_methods_of_the_class_the_handle_and_the_method(rt):
    names = {"describe", "facts", "double", "offset", "label", "pid"}
    assert names | {"STEP", "remote", "options"} <= set(dir(Child))
    handle = Child.remote(0)
    assert names - {"label"} <= set(dir(handle))
    assert {"remote", "options"} <= set(dir(handle.facts))


def test_subclassing_the_decorated_name_says_what_to_do():
    with pytest.raises(TypeError, match="cannot subclass the actor class Child.*without "
                                        "@repartir.remote"):
        class Grandchild(Child):
            pass


# --------------------------------------------------------------------------- item 14


def _at_once(n: int, fn) -> list:
    """Run ``fn(i)`` in ``n`` threads released together; returns results or exceptions."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LONG)
    return results


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_get_if_exists_gives_one_actor(rt, round_):
    before = _live_actor_ids()
    handles = _at_once(THREADS, lambda i: Tally.options(
        name=f"shared-{round_}", get_if_exists=True).remote(100 * i))
    assert all(isinstance(h, repartir.ActorHandle) for h in handles), handles
    assert len({h._actor_id for h in handles}) == 1
    assert len(_live_actor_ids() - before) == 1
    assert sorted(repartir.get([h.inc.remote() for h in handles], timeout=LONG))[-1] \
        == repartir.get(handles[0].inc.remote(), timeout=LONG) - 1
    assert len(set(repartir.get([h.pid.remote() for h in handles], timeout=LONG))) == 1


def test_concurrent_creation_without_get_if_exists_fails_for_all_but_one(rt):
    before = _live_actor_ids()
    results = _at_once(THREADS, lambda i: Tally.options(name="only-one").remote(i))
    made = [r for r in results if isinstance(r, repartir.ActorHandle)]
    refused = [r for r in results if isinstance(r, ValueError)]
    assert len(made) == 1 and len(refused) == THREADS - 1, results
    assert all("get_if_exists=True" in str(e) for e in refused)
    assert len(_live_actor_ids() - before) == 1
    assert repartir.get_actor("only-one") == made[0]


def test_concurrent_mixed_callers_names_and_namespaces(rt):
    before = _live_actor_ids()

    def create(i: int):
        if i % 4 == 3:
            return repartir.get_actor("mixed")
        return Tally.options(name="mixed", namespace=None if i % 2 else "other",
                             get_if_exists=bool(i % 4)).remote()

    results = _at_once(THREADS, create)
    for ns in ("default", "other"):
        handles = [r for i, r in enumerate(results)
                   if isinstance(r, repartir.ActorHandle)
                   and (ns == "other") == (i % 2 == 0 and i % 4 != 3)]
        assert len({h._actor_id for h in handles}) <= 1
    for i, r in enumerate(results):
        if i % 4 in (1, 2):  # get_if_exists callers always get the actor
            assert isinstance(r, repartir.ActorHandle), (i, r)
        else:  # plain creators and get_actor: the actor, or ValueError
            assert isinstance(r, (repartir.ActorHandle, ValueError)), (i, r)
    assert len(_live_actor_ids() - before) == 2  # one per namespace
    assert repartir.get_actor("mixed") != repartir.get_actor("mixed", namespace="other")
