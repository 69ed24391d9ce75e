"""The rules of repartir/cluster/driver_values.py without a cluster: which values go to
which node, and when their copies are released (docs/cluster.md, "Values: copies, as
locally")."""

from __future__ import annotations

import pickle

import numpy as np

from repartir.cluster.borrows import Borrows
from repartir.cluster.driver_values import DRIVER, DriverArg, DriverValues
from repartir.config import WIRE_INBAND_BYTES


class _Task:
    def __init__(self, dvals):
        self.dvals = dvals


def _submit(dv: DriverValues, oid: bytes, value) -> _Task:
    arg = dv.arg(oid, ("value", value))
    assert arg == DriverArg(oid)
    return _Task(dv.frames_of([arg]))


def _send(dv: DriverValues, nid: str, tasks, borrows: Borrows) -> list[bytes]:
    """The ids of the values ``keeps`` would send ``nid`` first, marked as sent."""
    msg = dv.keeps(nid, tasks, borrows)
    if msg is None:
        return []
    dv.sent(nid, None, msg)
    return [oid for oid, _ in msg[1]]


def test_a_small_value_travels_inline():
    dv = DriverValues()
    assert dv.arg(b"s", ("value", np.ones(WIRE_INBAND_BYTES // 16))) is None
    assert dv.arg(b"r", ("stored", "node", 1 << 20)) is None
    assert dv.arg(b"b", ("value", np.ones(WIRE_INBAND_BYTES // 8))) == DriverArg(b"b")


def test_each_node_gets_a_value_once_and_again_after_it_died():
    dv, borrows = DriverValues(), Borrows()
    value = np.arange(1 << 14, dtype=np.float64)
    tasks = [(bytes([i]), _submit(dv, b"v", value)) for i in range(3)]
    msg = dv.keeps("A", tasks, borrows)
    assert [oid for oid, _ in msg[1]] == [b"v"]  # one copy for three tasks
    frames = msg[1][0][1]
    again = pickle.loads(frames[0], buffers=frames[1:])
    assert np.array_equal(again, value)
    dv.sent("A", None, msg)
    assert dv.values_sent == {"A": 1} and dv.sent_bytes["A"] >= value.nbytes
    assert _send(dv, "A", tasks, borrows) == []
    assert _send(dv, "B", tasks[:1], borrows) == [b"v"]
    assert borrows.counts[b"v"] == 3  # each task borrowed it once
    dv.node_died("A")
    assert _send(dv, "A", tasks[1:], borrows) == [b"v"]
    dv.forgot("B", [b"v"])
    assert dv.holders[b"v"] == {"A"}


def test_copies_are_released_once_the_ref_and_its_tasks_are_gone():
    dv, borrows = DriverValues(), Borrows()
    task = _submit(dv, b"v", np.ones(1 << 14))
    _send(dv, "A", [(b"t", task)], borrows)
    _send(dv, "B", [(b"u", task)], borrows)
    releases: dict = {}
    dv.dropped(b"v", borrows, releases)
    dv.expand(releases)
    assert releases == {}  # two tasks still take it
    assert borrows.task_ended(b"t") == []
    due = borrows.task_ended(b"u")
    assert due == [(DRIVER, b"v")]
    releases = {DRIVER: [b"v"]}
    dv.expand(releases)
    assert {n: sorted(o) for n, o in releases.items()} == {"A": [b"v"], "B": [b"v"]}
    assert dv.holders == {}


def test_a_value_sent_after_its_ref_went_is_released_when_its_task_ends():
    """A retry (or a rebuild) sends a value whose ref is gone and already released."""
    dv, borrows = DriverValues(), Borrows()
    task = _submit(dv, b"v", np.ones(1 << 14))
    releases: dict = {}
    dv.dropped(b"v", borrows, releases)  # before any task was sent: released at once
    dv.expand(releases)
    assert releases == {}
    assert _send(dv, "A", [(b"t", task)], borrows) == [b"v"]
    assert borrows.task_ended(b"t") == [(DRIVER, b"v")]
