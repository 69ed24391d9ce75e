"""Actor method calls whose ref arguments are not ready yet, on a connected driver
(docs/cluster.md, "Dependent tasks"): ``.remote()`` returns at once, the call waits in the
driver and is sent once its arguments are ready, in the order of the calls to its actor; an
argument that failed makes the call's ref raise its error.

The cluster fixture is test_cluster.py's (its own instance for this module): a head (1 CPU,
``on_head``) and a node (1 CPU, ``big_mem``).  The tasks the calls wait for wait for a gate
file, so each test sees the calls' refs while their arguments are not ready; each test
checks, before it opens a gate, that the gated task is still running.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import repartir
from repartir.cluster import client as cluster_client
from rtsupport import wait_until
from test_cluster import alive, cluster  # noqa: F401 (the fixture)
from test_cluster_deps import gated
from test_cluster_failures import _join, _node_id, _sweep

pytestmark = pytest.mark.usefixtures("cluster")

BIG = 1 << 17  # float64 elements: 1 MiB, kept on the node that made it


@repartir.remote(max_retries=0)
def gated_boom(path, max_wait=30.0):
    """Raises ``KeyError`` once the file ``path`` exists (at most ``max_wait`` seconds)."""
    deadline = time.monotonic() + max_wait
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    raise KeyError("upstream broke")


@repartir.remote(resources={"big_mem": 1})
def big(value):
    return np.full(BIG, float(value))


@repartir.remote(resources={"on_head": 0.01})  # on the head
class Recorder:
    """Records its calls in the order they run."""

    def __init__(self, start=None):
        self.seen = []
        self.start = self._first(start)

    def started(self):
        return self.start

    def add(self, i, value=None):
        self.seen.append(i)
        if isinstance(value, list):  # nested refs: the actor gets refs
            return i, [self._first(v) for v in repartir.get(value)]
        return i, self._first(value)

    @staticmethod
    def _first(value):
        return float(value[0]) if isinstance(value, np.ndarray) else value

    def inc(self, x):
        self.seen.append(x)
        return x + 1

    def first(self, refs):
        try:
            return repartir.get(refs[0])
        except KeyError as exc:
            return f"raised {exc}"

    def log(self):
        return list(self.seen)


def _client() -> cluster_client.ClusterClient:
    c = cluster_client.active()
    assert c is not None
    return c


def _not_ready(ref) -> bool:
    return repartir.wait([ref], num_returns=1, timeout=0)[0] == []


def _settled() -> bool:
    c = _client()
    with c._lock:
        return not (c._actor_deps.queues or c._actor_deps.calls or c._actor_deps.creating
                    or c.inflight)


def test_a_call_returns_at_once_while_its_argument_runs(tmp_path):
    gate = str(tmp_path / "gate")
    a = Recorder.remote()
    x = gated.remote(gate, 5, 30.0)
    top = a.add.remote(0, x)
    nested = a.add.remote(1, [x])
    kw = a.add.remote(2, value=x)
    # every .remote() returned while the argument's task still waits for its gate
    assert _not_ready(x)
    assert all(_not_ready(r) for r in (top, nested, kw))
    with _client()._lock:
        assert len(_client()._actor_deps.calls) == 3
    open(gate, "w").close()
    assert repartir.get([top, nested, kw], timeout=60) == [(0, 5), (1, [5]), (2, 5)]
    assert repartir.get(a.log.remote(), timeout=60) == [0, 1, 2]
    assert wait_until(_settled, 10)


def test_calls_keep_their_order_with_waiting_and_ready_arguments(tmp_path):
    gate_a, gate_b = str(tmp_path / "a"), str(tmp_path / "b")
    a = Recorder.remote()
    repartir.get(a.log.remote(), timeout=60)  # created
    kept = big.remote(7)  # kept on the other node than the actor's: pulled first
    assert len(repartir.wait([kept], timeout=60)[0]) == 1
    slow = gated.options(resources={"on_head": 0.5}).remote(gate_a, 100, 30.0)
    fast = gated.options(resources={"big_mem": 1}).remote(gate_b, 200, 30.0)
    plan = []  # (index, argument, expected value)
    for i in range(42):
        kind = i % 6
        arg, want = {0: (slow, 100), 1: (i, i), 2: ([fast], [200]), 3: (kept, 7.0),
                     4: (fast, 200), 5: ([kept], [7.0])}[kind]
        plan.append((a.add.remote(i, arg), (i, want)))
    assert _not_ready(slow) and _not_ready(fast)
    open(gate_b, "w").close()  # the later calls' arguments first
    assert repartir.get(fast, timeout=60) == 200
    assert _not_ready(slow)
    open(gate_a, "w").close()
    assert repartir.get([r for r, _ in plan], timeout=60) == [w for _, w in plan]
    assert repartir.get(a.log.remote(), timeout=60) == list(range(42))
    assert wait_until(_settled, 10)


def test_a_nested_ref_kept_on_another_node_lets_no_later_call_overtake():
    a = Recorder.remote()
    repartir.get(a.log.remote(), timeout=60)  # created
    kept = [big.remote(i) for i in range(10)]  # on the other node than the actor's
    assert len(repartir.wait(kept, num_returns=10, timeout=60)[0]) == 10
    refs = [a.add.remote(i, [kept[i // 2]] if i % 2 == 0 else i) for i in range(20)]
    assert repartir.get(refs, timeout=60) == [
        (i, [float(i // 2)] if i % 2 == 0 else i) for i in range(20)]
    assert repartir.get(a.log.remote(), timeout=60) == list(range(20))
    assert wait_until(_settled, 10)


def test_a_failed_argument_makes_the_call_raise_its_error(tmp_path):
    gate = str(tmp_path / "gate")
    a = Recorder.remote()
    bad = gated_boom.remote(gate)
    top = a.add.remote(0, bad)
    after = a.add.remote(1, 1)  # behind it, not hurt by it
    nested = a.first.remote([bad])  # the actor gets a ref that raises
    several = a.add.options(num_returns=2).remote(2, bad)
    assert _not_ready(bad)
    open(gate, "w").close()
    with pytest.raises(KeyError, match="upstream broke"):
        repartir.get(top, timeout=60)
    for r in several:
        with pytest.raises(KeyError, match="upstream broke"):
            repartir.get(r, timeout=60)
    assert repartir.get(after, timeout=60) == (1, 1)
    said = repartir.get(nested, timeout=60)
    assert said.startswith("raised") and "upstream broke" in said
    assert repartir.get(a.log.remote(), timeout=60) == [1]  # the failed calls never ran
    assert wait_until(_settled, 10)


def test_a_chain_of_calls_is_submitted_before_its_first_argument_is_ready(tmp_path):
    gate = str(tmp_path / "gate")
    a = Recorder.remote()
    first = gated.remote(gate, 0, 30.0)
    x = first
    for _ in range(200):
        x = a.inc.remote(x)
    assert _not_ready(first)
    with _client()._lock:
        assert len(_client()._actor_deps.calls) == 200
    open(gate, "w").close()
    assert repartir.get(x, timeout=120) == 200
    assert repartir.get(a.log.remote(), timeout=60) == list(range(200))
    assert wait_until(_settled, 10)


def test_a_waiting_call_keeps_its_actor_alive(tmp_path):
    gate = str(tmp_path / "gate")
    x = gated.remote(gate, 4, 30.0)
    r = Recorder.remote().add.remote(0, x)  # its only handle is dropped at once
    gc.collect()
    assert _not_ready(x)
    open(gate, "w").close()
    assert repartir.get(r, timeout=60) == (0, 4)
    assert wait_until(_settled, 10)


def test_a_creation_returns_at_once_and_the_calls_wait_behind_it(tmp_path):
    gate = str(tmp_path / "gate")
    x = gated.remote(gate, 9, 30.0)
    a = Recorder.remote(x)
    first = a.add.remote(0)  # ready arguments: it waits behind the creation all the same
    second = a.add.remote(1, x)
    far = Recorder.remote(big.remote(3))  # kept on the other node: pulled, then sent
    assert _not_ready(x)
    assert _not_ready(first) and _not_ready(second)
    open(gate, "w").close()
    assert repartir.get([a.started.remote(), far.started.remote()], timeout=60) == [9, 3.0]
    assert repartir.get([first, second], timeout=60) == [(0, None), (1, 9)]
    assert repartir.get(a.log.remote(), timeout=60) == [0, 1]
    assert wait_until(_settled, 10)


def test_a_failed_constructor_argument_leaves_the_actor_dead(tmp_path):
    gate = str(tmp_path / "gate")
    bad = gated_boom.remote(gate)
    a = Recorder.remote(bad)
    call = a.add.remote(0)
    assert _not_ready(bad)
    open(gate, "w").close()
    with pytest.raises(repartir.ActorDiedError, match="an argument of its constructor failed"):
        repartir.get(call, timeout=60)
    late = Recorder.remote(bad)  # failed before .remote(): the same
    with pytest.raises(repartir.ActorDiedError, match="an argument of its constructor failed"):
        repartir.get(late.add.remote(0), timeout=60)
    assert wait_until(_settled, 10)


def test_a_cancelled_waiting_call_is_never_sent(tmp_path):
    gate = str(tmp_path / "gate")
    a = Recorder.remote()
    x = gated.remote(gate, 3, 30.0)
    gone = a.add.remote(0, x)
    kept = a.add.remote(1, x)
    assert _not_ready(x)
    repartir.cancel(gone)
    with pytest.raises(repartir.TaskCancelledError):
        repartir.get(gone, timeout=10)
    open(gate, "w").close()
    assert repartir.get(kept, timeout=60) == (1, 3)
    assert repartir.get(a.log.remote(), timeout=60) == [1]
    assert wait_until(_settled, 10)


def test_a_driver_that_shuts_down_with_waiting_calls_does_not_hang(cluster, tmp_path):  # noqa: F811
    gate = str(tmp_path / "gate")
    code = textwrap.dedent(f"""
        import os, time
        import repartir

        @repartir.remote
        def gated(path, value):
            deadline = time.monotonic() + 60
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.02)
            return value

        @repartir.remote
        class Actor:
            def inc(self, x):
                return x + 1

        repartir.init(address={cluster["address"]!r})
        a = Actor.remote()
        x = gated.remote({gate!r}, 1)
        refs = [a.inc.remote(x) for i in range(20)]
        chain = x
        for _ in range(20):
            chain = a.inc.remote(chain)
        assert repartir.wait([x], timeout=0)[0] == [], "the gated task ended"
        print("submitted", flush=True)
        repartir.shutdown()
        print("shut down", flush=True)
    """)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=30)
    finally:
        open(gate, "w").close()  # the gated task ends
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["submitted", "shut", "down"]


def test_a_waiting_creation_moves_with_its_actor_when_its_node_dies(cluster, tmp_path):  # noqa: F811
    gate = str(tmp_path / "gate")
    joined = [_join(cluster["address"], '{"mover": 1}') for _ in range(2)]
    by_id = {_node_id(rec): rec for rec in joined}
    try:
        x = gated.options(resources={"big_mem": 1}).remote(gate, 5, 60.0)
        a = Recorder.options(resources={"mover": 0.5}, max_restarts=1).remote(x)
        call = a.add.remote(0)
        assert _not_ready(x)
        first = a._actor.node
        assert first in by_id
        os.kill(by_id[first]["pid"], signal.SIGKILL)
        assert wait_until(lambda: a._actor.node != first, 30), "not moved"
        assert _not_ready(x)
        open(gate, "w").close()
        assert repartir.get(call, timeout=60) == (0, None)
        assert repartir.get(a.started.remote(), timeout=60) == 5
        assert a._actor.node in by_id and a._actor.node != first
        assert wait_until(_settled, 10)
    finally:
        open(gate, "w").close()
        for rec in joined:
            if alive(rec["pid"]):
                os.kill(rec["pid"], signal.SIGTERM)
                assert wait_until(lambda: not alive(rec["pid"]), 30)
        _sweep()
