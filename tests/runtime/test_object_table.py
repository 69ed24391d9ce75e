"""The object table (``repartir/runtime/object_table.py``; ``docs/architecture.md``, "Runtime
state machines" and "Object lifetime"): owned objects, borrowed refs, requests, loans and the
death of an owner, checked table by table without processes or shared memory."""

from __future__ import annotations

import pickle

from hypothesis import given
from hypothesis import strategies as st

from repartir.errors import ObjectLostError
from repartir.runtime.object_table import (HOLDS_REFS, FreeBlock, LetGo, ObjectTable,
                                           ReleaseLoan, Reply, Resolved, Unpin)

ARENA = ("a", 4096, 100, 7)  # offset 4096, 100 bytes, generation 7
INLINE = ("i", b"blob")


def lost(instr) -> str:
    assert instr.loc[0] == "x"
    err = pickle.loads(instr.loc[1])
    assert isinstance(err, ObjectLostError)
    return str(err)


# -- owned objects -----------------------------------------------------------------------------

def test_the_last_ref_frees_an_arena_object_once():
    t = ObjectTable(slot=0)
    t.own(b"o", ARENA, count=2)
    assert t.decref(b"o") == []
    assert t.decref(b"o") == [FreeBlock(4096)]
    assert t.decref(b"o") == []  # a late duplicate changes nothing
    assert t.location(b"o") is None and not t.owns(b"o")


def test_an_inline_object_frees_nothing_in_the_arena():
    t = ObjectTable(slot=0)
    t.own(b"o", INLINE, count=1)
    assert t.decref(b"o") == []
    assert not t.owns(b"o")


def test_a_loan_keeps_the_object_until_released():
    t = ObjectTable(slot=0)
    t.own(b"o", None, count=1)
    assert t.incref(b"o")  # lent in a result
    assert t.decref(b"o") == []  # the task's own ref dies
    assert t.resolve(b"o", ARENA) == []
    assert t.decref(b"o") == [FreeBlock(4096)]  # the borrower's release
    assert not t.incref(b"o")  # no longer owned: cannot be lent


@given(st.lists(st.booleans(), max_size=40), st.integers(1, 5))
def test_free_comes_exactly_when_the_count_reaches_zero(ops, start):
    t = ObjectTable(slot=0)
    t.own(b"o", ARENA, count=start)
    count, freed = start, 0
    for inc in ops:
        if inc:
            if t.incref(b"o"):
                count += 1
        else:
            out = t.decref(b"o")
            if count > 0:
                count -= 1
            freed += out.count(FreeBlock(4096))
            assert (FreeBlock(4096) in out) == (count == 0 and freed == 1 and out != [])
    assert freed == (1 if count == 0 else 0)
    assert t.owns(b"o") == (count > 0)


#: what a requester hears, depending on the object's state when it asks
def test_requests_answered_now_later_or_with_a_loss():
    t = ObjectTable(slot=3)
    t.own(b"ready", INLINE, count=1)
    t.own(b"pending", None, count=1)
    assert t.request(b"ready", 9) == Reply(9, b"ready", INLINE)
    assert t.request(b"pending", 9) is None
    assert t.request(b"pending", 10) is None
    assert t.resolve(b"pending", ARENA) == [Reply(9, b"pending", ARENA),
                                          Reply(10, b"pending", ARENA)]
    gone = t.request(b"never", 11)
    assert gone.slot == 11 and "freed by its owner (slot 3)" in lost(gone)


def test_a_pending_object_freed_tells_its_waiting_borrowers():
    t = ObjectTable(slot=3)
    t.own(b"p", None, count=1)
    t.request(b"p", 5)
    [reply] = t.decref(b"p")
    assert reply.slot == 5 and "still pending" in lost(reply)


def test_a_result_nobody_holds_is_freed_on_arrival():
    t = ObjectTable(slot=0)
    assert t.resolve(b"dropped", ARENA) == [FreeBlock(4096)]
    assert t.resolve(b"dropped", INLINE) == []


# -- refs inside values: pins and loans --------------------------------------------------------

def test_pins_stay_with_the_first_return_and_go_with_it():
    t = ObjectTable(slot=0)
    t.own(b"r0", None, 1)
    t.own(b"r1", None, 1)
    assert t.keep_pins([b"r0", b"r1"], [8192, (6, b"lent")]) == []
    assert t.holds_refs(b"r0") and t.holds_refs(b"r1")
    assert t.borrow_counts[b"lent"] == 2 and t.lent_from[b"lent"] == 6
    t.resolve(b"r0", INLINE)
    t.resolve(b"r1", INLINE)
    assert t.decref(b"r0") == [Unpin(8192)]  # the pin is given back once, by r0
    assert t.decref(b"r1") == [ReleaseLoan(6, b"lent")]  # the loan with its last holder


def test_pins_of_a_result_nobody_keeps_are_given_back():
    t = ObjectTable(slot=0)
    assert t.keep_pins([b"gone"], [8192, (6, b"lent")]) == [Unpin(8192),
                                                            ReleaseLoan(6, b"lent")]
    assert t.keep_pins([b"gone"], None) == []


def test_holds_refs_marks_values_with_refs_and_unknown_objects():
    t = ObjectTable(slot=0)
    t.own(b"plain", INLINE, 1)
    t.own(b"nested", INLINE, 1, held=[HOLDS_REFS])
    assert not t.holds_refs(b"plain")
    assert t.holds_refs(b"nested") and t.holds_refs(b"borrowed-elsewhere")


# -- borrowed objects --------------------------------------------------------------------------

def test_borrowed_refs_are_counted_and_the_last_one_lets_go():
    t = ObjectTable(slot=2)
    t.borrow(b"b", None)
    t.borrow(b"b", None)
    assert t.should_request(b"b") and not t.should_request(b"b")  # asked once
    assert t.arrived(b"b", ARENA, hold=4096) == [Resolved(b"b", ARENA)]
    assert t.location(b"b") == ARENA
    assert t.unborrow(b"b") == []
    assert t.unborrow(b"b") == [LetGo(4096)]
    assert not t.wants(b"b") and t.requested == set() and t.location(b"b") is None


def test_an_answer_after_the_last_ref_died_is_let_go():
    t = ObjectTable(slot=2)
    assert not t.wants(b"b")
    assert t.arrived(b"b", ARENA, hold=4096) == [LetGo(4096)]
    assert t.arrived(b"b", INLINE, hold=None) == []


def test_a_known_location_is_never_requested():
    t = ObjectTable(slot=2)
    t.borrow(b"b", INLINE)
    assert not t.should_request(b"b")


def test_owner_death_loses_only_its_pending_loans():
    t = ObjectTable(slot=2)
    t.adopt([(6, b"pending"), (6, b"known"), (7, b"other")], True)
    t.arrived(b"known", INLINE, None)
    out = t.owner_died(6)
    assert [i.object_id for i in out] == [b"pending"]
    assert "slot 6" in lost(out[0]) and "died before it was ready" in lost(out[0])
    assert t.location(b"known") == INLINE and t.location(b"other") is None
    assert t.owner_died(6) == []  # told once
