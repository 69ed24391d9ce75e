"""The inbox protocol (``repartir/runtime/protocol.py``; ``docs/architecture.md``): every
message kind round-trips through encode/decode as its named type, the wire carries plain
tuples of plain values, and bytes that are no message raise instead of being misread."""

from __future__ import annotations

import pickle

import pytest

from repartir.errors import RepartirSystemError
from repartir.runtime import protocol as p

EXAMPLES = [
    p.Done(p.MSG_DONE, b"t" * 16, int(p.Status.OK), [("i", b"x")], [3, (2, b"o" * 16)]),
    p.Done(p.MSG_DONE, b"t" * 16, int(p.Status.FAILED), b"error payload", None),
    p.Item(p.MSG_ITEM, b"t" * 16, 7, ("a", 4096, 10, 3), None),
    p.Request(p.MSG_REQUEST, b"o" * 16, 5),
    p.Object(p.MSG_OBJECT, b"o" * 16, ("i", b"v")),
    p.Crashed(p.MSG_CRASHED, b"t" * 16, "killed by signal SIGKILL", int(p.StopReason.CRASH)),
    p.Call(p.MSG_CALL, b"t" * 16, 1, b"spec", None, 2),
    p.Call(p.MSG_CALL, b"t" * 16, 1, None, (8192, 100), 2),
    p.ActorEpoch(p.MSG_ACTOR_EPOCH, 9, b"a" * 16, 3, False, "restarted",
                 [(1, b"t" * 16, 0.0, 0.0)]),
    p.Large(p.MSG_LARGE, 4096, 5_000_000, 12),
    p.Release(p.MSG_RELEASE, b"o" * 16),
    p.OwnerDied(p.MSG_OWNER_DIED, 4),
    p.ActorOp(p.MSG_ACTOR_OP, 7, 3, 4242, int(p.ActorOpKind.GET_ACTOR), ("default", "c")),
    p.ActorOpReply(p.MSG_ACTOR_OP_REPLY, 7, True, b"pickled fields"),
    p.HandleEvent(p.MSG_HANDLE, b"a" * 16, int(p.HandleOp.IN_FLIGHT), 3, 4242, 1 << 61),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_kind_round_trips_as_its_named_type(msg):
    raw = p.encode(msg)
    back = p.decode(raw)
    assert type(back) is type(msg) and back == msg
    wire = pickle.loads(raw)
    assert type(wire) is tuple and wire == tuple(msg)
    assert b"protocol" not in raw  # plain values on the wire, no class references


def test_kinds_are_distinct_and_cover_every_type():
    kinds = [getattr(p, n) for n in p.__all__ if n.startswith("MSG_")]
    assert sorted(kinds) == list(range(len(kinds)))
    assert {type(m) for m in EXAMPLES} == {t for t in p._TYPES}


@pytest.mark.parametrize("fields", [(99, 1), (-1, 1, 2), ("x",), (), (p.MSG_DONE, b"t"),
                                    (p.MSG_RELEASE, b"o", b"extra"), 17, [p.MSG_OWNER_DIED, 1]])
def test_what_is_no_message_raises(fields):
    with pytest.raises(RepartirSystemError, match="no known kind"):
        p.decode(pickle.dumps(fields))


def test_result_blocks_of_done_and_item():
    done = EXAMPLES[0]
    assert p.result_blocks(done) == ([("i", b"x")], [3, (2, b"o" * 16)])
    assert p.result_blocks(EXAMPLES[1]) == ([], None)  # a failure holds no blocks
    assert p.result_blocks(EXAMPLES[2]) == ([("a", 4096, 10, 3)], None)


def test_a_stop_request_maps_to_the_reason_its_task_ended():
    assert p.StopReason.of_request(p.StopRequest.TIMEOUT) == p.StopReason.TIMEOUT
    assert p.StopReason.of_request(p.StopRequest.CANCEL) == p.StopReason.CANCEL
    assert p.StopReason.of_request(p.StopRequest.CANCEL_ONE) == p.StopReason.CANCEL
