import random

from hypothesis import given, strategies as st

from repartir.scheduler import policy


@given(st.lists(st.integers(0, 50), max_size=20), st.integers(0, 19), st.integers(0, 99))
def test_victims_are_nonempty_others_each_once(sizes, me, seed):
    order = policy.victim_order(sizes, me, random.Random(seed))
    assert len(order) == len(set(order))
    assert set(order) == {j for j, s in enumerate(sizes) if s > 0 and j != me}


def test_victim_choice_is_spread():
    rng = random.Random(1)
    firsts = {policy.victim_order([5, 5, 5, 5], 0, rng)[0] for _ in range(100)}
    assert firsts == {1, 2, 3}


@given(st.integers(1, 100_000), st.integers(1, 64))
def test_steal_batch_bounds(size, workers):
    n = policy.steal_batch(size, workers)
    assert 1 <= n <= max(1, size // 2)
    assert n <= 64


def test_spinners_leave_a_core():
    assert policy.max_spinners(1) == 1
    assert policy.max_spinners(2) == 1
    assert policy.max_spinners(8) == 7
