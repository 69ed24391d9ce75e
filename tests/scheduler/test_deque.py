"""The shared-memory deque against a list model, in one process and under real stealing."""

import mmap
import multiprocessing as mp
import os

from hypothesis import given, settings, strategies as st

from repartir.scheduler.deque import TaskDeque, deque_bytes
from repartir.scheduler.mailbox import Inbox, inbox_bytes


def make(capacity=16, record_size=64):
    mm = mmap.mmap(-1, deque_bytes(capacity, record_size))
    return TaskDeque(mm, 0, capacity, record_size, create=True)


op = st.one_of(
    st.tuples(st.just("push"), st.binary(min_size=0, max_size=60)),
    st.tuples(st.just("pop"), st.none()),
    st.tuples(st.just("steal"), st.integers(1, 8)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=100))
def test_deque_matches_list_model(ops):
    d, model = make(), []
    for name, arg in ops:
        if name == "push":
            ok = d.push(arg)
            assert ok == (len(model) < 16)
            if ok:
                model.append(arg)
        elif name == "pop":
            got = d.pop()
            assert got == (model.pop() if model else None)
        else:
            got = d.steal(arg)
            want = min(arg, max(1, len(model) // 2)) if model else 0
            assert got == model[:want]
            del model[:want]
        assert len(d) == len(model)



def _steal_loop(d, out, stop):
    got = []
    while not stop.is_set() or len(d):
        got.extend(d.steal(4))
    out.put(got)


def test_no_record_lost_or_duplicated_under_concurrent_steals():
    capacity = 256
    mm = mmap.mmap(-1, deque_bytes(capacity, 32))
    d = TaskDeque(mm, 0, capacity, 32, create=True)
    ctx = mp.get_context("fork")
    out, stop = ctx.Queue(), ctx.Event()
    thieves = [ctx.Process(target=_steal_loop, args=(d, out, stop)) for _ in range(2)]
    for t in thieves:
        t.start()
    popped, n = [], 5000
    i = 0
    while i < n:
        if d.push(i.to_bytes(4, "little")):
            i += 1
        if i % 3 == 0:
            r = d.pop()
            if r is not None:
                popped.append(r)
    stop.set()
    stolen = [out.get(timeout=30) for _ in thieves]
    for t in thieves:
        t.join(10)
    items = [int.from_bytes(r, "little") for r in popped + stolen[0] + stolen[1]]
    while len(d):
        items.append(int.from_bytes(d.pop(), "little"))
    assert sorted(items) == list(range(n))


def test_inbox_round_trip_and_wrap():
    size = 4096
    mm = mmap.mmap(-1, inbox_bytes(size))
    box = Inbox(mm, 0, size, create=True)
    sent, got = [], []
    for i in range(2000):
        msg = os.urandom(1 + (i * 37) % 700)
        while not box.put(msg):
            got.extend(box.drain())
        sent.append(msg)
    got.extend(box.drain())
    assert got == sent
