"""The node's count of actor handles (``repartir/runtime/handle_table.py``;
``docs/architecture.md``, "Actors"), event by event, without processes: an actor ends once,
when no process holds a handle and no pickled copy is in flight; a dead process's handles
and the copies sent to it count no more; detached actors never end by count."""

from __future__ import annotations

from repartir.runtime.handle_table import EndActor, HandleTable

A = b"a" * 16
DRIVER, W1, W2 = (0, 100), (1, 101), (2, 102)


def new(detached: bool = False, token: int = 7, dest=DRIVER) -> HandleTable:
    t = HandleTable()
    assert t.register(A, 40, "C", detached, token, dest) == []
    return t


def test_the_creators_copy_lands_then_its_last_handle_ends_the_actor():
    t = new()
    assert t.count(A) == 1  # the creator's copy, in flight
    assert t.add(A, DRIVER) == []
    assert t.landed(A, 7) == []
    assert t.count(A) == 1 and t.holders(A) == {DRIVER: 1}
    assert t.remove(A, DRIVER) == [EndActor(A, 40, "C")]
    assert t.ending(A)
    assert t.count(A) == 0


def test_a_copy_in_flight_keeps_the_actor_after_the_sender_dropped_its_handles():
    t = new()
    t.add(A, DRIVER)
    t.landed(A, 7)
    t.in_flight(A, 8)  # pickled into a task's arguments
    assert t.remove(A, DRIVER) == []  # the driver drops its handle before the task runs
    assert t.add(A, W1) == []  # the worker unpickles it
    assert t.landed(A, 8) == []
    assert t.landed(A, 8) == []  # a second unpickling of the same copy counts nothing
    assert t.holders(A) == {W1: 1} and t.count(A) == 1
    assert t.remove(A, W1) == [EndActor(A, 40, "C")]
    assert t.remove(A, W1) == []  # (once)


def test_a_new_handle_before_the_old_ones_remove_is_counted_twice():
    t = new()
    t.add(A, DRIVER)
    t.landed(A, 7)
    t.add(A, W1)
    t.add(A, W1)  # W1's count died and a new one was made before it sent REMOVE
    assert t.remove(A, W1) == []
    assert t.remove(A, DRIVER) == []
    assert t.holders(A) == {W1: 1}
    assert t.remove(A, W1) == [EndActor(A, 40, "C")]


def test_a_dead_process_holds_nothing_and_its_late_events_are_ignored():
    t = new()
    t.add(A, DRIVER)
    t.landed(A, 7)
    t.in_flight(A, 9)
    t.add(A, W1)
    t.landed(A, 9)
    assert t.remove(A, DRIVER) == []
    assert t.process_died(W1) == [EndActor(A, 40, "C")]
    assert t.add(A, W1) == [] and t.holders(A) == {}  # a late ADD of the dead process


def test_copies_sent_by_a_dead_process_still_count_those_sent_to_it_do_not():
    t = new(dest=W1)  # W1 asked the node to create the actor; the node's copy goes to W1
    t.add(A, W2)
    t.in_flight(A, 11)  # W2 pickled one into a result, then died
    assert t.process_died(W2) == []  # copy 11 may still land; W1's copy too
    assert t.count(A) == 2
    assert t.process_died(W1) == []  # W1 died before unpickling the node's copy
    assert t.count(A) == 1
    t.add(A, DRIVER)
    assert t.landed(A, 11) == []
    assert t.remove(A, DRIVER) == [EndActor(A, 40, "C")]


def test_a_copy_sent_to_a_process_already_dead_is_not_counted():
    t = HandleTable()
    t.process_died(W1)
    assert t.register(A, 40, "C", False, 7, W1) == [EndActor(A, 40, "C")]


def test_detached_actors_never_end_by_count():
    t = new(detached=True)
    t.add(A, DRIVER)
    t.landed(A, 7)
    assert t.remove(A, DRIVER) == []
    assert t.process_died(DRIVER) == []
    assert t.count(A) == 0 and not t.ending(A)


def test_events_of_unknown_or_dead_actors_do_nothing():
    t = new()
    t.forget(A)
    assert t.count(A) is None
    assert t.add(A, DRIVER) == [] and t.remove(A, DRIVER) == []
    assert t.in_flight(A, 3) == [] and t.landed(A, 3) == []
    assert t.count(A) is None and not t.ending(A)
