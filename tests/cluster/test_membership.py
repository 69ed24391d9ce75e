"""The driver's rule for nodes the head's registry stops listing (``membership.py``): dead
once missing for longer than the node timeout, not before; listed again, forgiven."""

from __future__ import annotations

from repartir.cluster.membership import unlisted_nodes


def _rec(nid: str, alive: bool = True) -> dict:
    return {"NodeID": nid, "Alive": alive}


def test_a_node_missing_from_the_registry_is_dead_after_the_timeout_only():
    seen = {"a": _rec("a"), "b": _rec("b"), "c": _rec("c", alive=False)}
    since: dict[str, float] = {}
    assert unlisted_nodes(seen, [_rec("a")], since, 5.0, now=100.0) == []
    assert set(since) == {"b"}  # c is dead already: not tracked
    assert unlisted_nodes(seen, [_rec("a")], since, 5.0, now=104.9) == []
    assert unlisted_nodes(seen, [_rec("a")], since, 5.0, now=105.1) == ["b"]
    assert seen["b"]["Alive"] is False and since == {}
    assert unlisted_nodes(seen, [_rec("a")], since, 5.0, now=200.0) == []


def test_a_node_listed_again_in_time_is_not_dead():
    seen = {"a": _rec("a")}
    since: dict[str, float] = {}
    assert unlisted_nodes(seen, [], since, 5.0, now=0.0) == []
    assert unlisted_nodes(seen, [_rec("a")], since, 5.0, now=4.0) == []
    assert since == {}
    assert unlisted_nodes(seen, [], since, 5.0, now=8.0) == []  # the clock starts again
    assert unlisted_nodes(seen, [], since, 5.0, now=13.5) == ["a"]
