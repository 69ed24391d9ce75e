"""Returns of tasks of several returns and items of generators that had ended, lost with
their node, rebuilt from lineage (docs/cluster.md, "Failures";
``repartir/cluster/lineage_returns.py``), on the loopback cluster of
``test_cluster_failures.py`` (``REPARTIR_NODE_TIMEOUT=2``).

Each test joins a node with a custom resource that only it has, runs its tasks there, then
joins a second node with that resource and kills the first: the tasks can only run again on
the second.  Every task counts its runs in a file (inline: a helper function of this module
would not import on the nodes).  Each test ends with nothing kept on the
nodes for this driver and no lineage left in it.
"""

from __future__ import annotations

import gc
import os
import signal
import time

import numpy as np
import pytest

import repartir
from repartir.cluster import client as cluster_client
from repartir.errors import ObjectLostError
from rtsupport import wait_until
from test_cluster import alive
from test_cluster_failures import BIG, _join, _node_id, _sweep, cluster, env  # noqa: F401


@repartir.remote(max_retries=2)
def items(path, n):
    with open(path, "a") as f:
        f.write("ran\n")
    for i in range(n):
        yield i if i == 2 else np.full(BIG, i + 0.0)  # item 2 inline


@repartir.remote(max_retries=2)
def fewer(path, n):
    """``n`` items at its first run, one at the next ones."""
    with open(path, "a") as f:
        f.write("ran\n")
    with open(path) as f:
        first = len(f.read().split()) == 1
    for i in range(n if first else 1):
        yield np.full(BIG, i + 0.0)


def _runs(path) -> int:
    try:
        with open(path) as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


@repartir.remote(num_returns=2, max_retries=2)
def pair(path, x):
    with open(path, "a") as f:
        f.write("ran\n")
    return np.full(BIG, x + 0.0), np.full(BIG, x + 0.5)


@repartir.remote(num_returns=3, max_retries=2)
def three(path, x):
    with open(path, "a") as f:
        f.write("ran\n")
    return np.full(BIG, x + 0.0), x + 1, np.full(BIG, x + 2.0)  # the middle one inline


@repartir.remote(max_retries=2)
def make(path, x):
    with open(path, "a") as f:
        f.write("ran\n")
    return np.full(BIG, x + 0.0)


@repartir.remote(num_returns=2, max_retries=2)
def halves(path, a):
    with open(path, "a") as f:
        f.write("ran\n")
    return a + 1.0, a * 2.0


@repartir.remote(max_retries=2)
def add_one(path, a):
    with open(path, "a") as f:
        f.write("ran\n")
    return a + 1.0


def _stored() -> dict[str, int]:
    """Objects each live node keeps for drivers, by node id, from a fresh registry."""
    repartir.nodes()  # waits for a fresh registry
    client = cluster_client.active()
    with client._lock:
        return {nid: r["Stored"] for nid, r in client.nodes_seen.items() if r["Alive"]}


def _wait_stored(check, what: str, timeout: float = 20.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        now = _stored()
        if check(now):
            return now
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s: {now}"


def _kept_on(refs) -> set[str]:
    """The nodes that keep these refs' objects (not pulled into the driver)."""
    client = cluster_client.active()
    with client._lock:
        return {client.results[r.binary()][1] for r in refs
                if client.results[r.binary()][0] == "stored"}


def _end(*recs: dict) -> None:
    """Stop the test's surviving nodes; nothing kept, no lineage left in the driver."""
    gc.collect()
    client = cluster_client.active()
    assert wait_until(lambda: not client.inflight, 30)
    assert wait_until(lambda: (gc.collect(), not client._lineage.specs)[1], 10), \
        [(s.ref, s.users) for s in client._lineage.specs.values()]
    assert not client._lineage.groups and not client._lineage.deps
    _wait_stored(lambda s: not any(s.values()), "nothing kept on the nodes")
    for rec in recs:
        os.kill(rec["pid"], signal.SIGTERM)
        assert wait_until(lambda: not alive(rec["pid"]), 30)
    _sweep()


def test_returns_of_several_lost_with_their_node_are_rebuilt_by_one_run(cluster, tmp_path):  # noqa: F811
    """A task of 2 and one of 3 returns: every return lost comes back with its value, each
    task having run again exactly once; a return the driver had pulled before the death,
    and an inline one, keep their values and are not made again; a task whose returns the
    driver had all pulled does not run again."""
    victim = _join(cluster["address"], '{"lr": 1}')
    vid = _node_id(victim)
    lr = {"resources": {"lr": 1}}
    p2, p3, pg = (str(tmp_path / n) for n in ("two", "three", "got"))
    a, b = pair.options(**lr).remote(p2, 1)
    c, d, e = three.options(**lr).remote(p3, 10)
    f, g = pair.options(**lr).remote(pg, 20)
    every = [a, b, c, d, e, f, g]
    assert len(repartir.wait(every, num_returns=7, timeout=60)[0]) == 7
    assert _kept_on([a, b, c, e, f, g]) == {vid}
    assert repartir.get(d, timeout=30) == 11  # inline: in the driver already
    got_a = repartir.get(a, timeout=30)  # pulled into the driver: not lost with the node
    got_fg = repartir.get([f, g], timeout=30)
    heir = _join(cluster["address"], '{"lr": 1}')
    hid = _node_id(heir)
    os.kill(victim["pid"], signal.SIGKILL)
    out = repartir.get([a, b, c, d, e, f, g], timeout=60)
    assert np.all(out[0] == 1.0) and np.all(out[1] == 1.5)
    assert np.all(out[2] == 10.0) and out[3] == 11 and np.all(out[4] == 12.0)
    assert np.all(out[5] == 20.0) and np.all(out[6] == 20.5)
    assert np.all(got_a == 1.0) and np.all(got_fg[1] == 20.5)
    assert (_runs(p2), _runs(p3), _runs(pg)) == (2, 2, 1)
    # kept on the heir: b, c and e (their new copies); the second copies of a and d dropped
    assert _wait_stored(lambda s: s.get(hid) == 3, "b, c, e kept on the heir")[hid] == 3
    client = cluster_client.active()
    assert client._lineage.rebuilt >= 2
    del a, b, c, d, e, f, g, every, out, got_a, got_fg
    _end(heir)


def test_a_task_of_several_returns_runs_again_after_its_lost_argument(cluster, tmp_path):  # noqa: F811
    """``x`` and the task of two returns that takes it run on one node, ``y`` takes one of
    those returns; the refs of ``x`` and ``a`` are dropped.  The node dies: ``x`` is made
    again, then the task (once, for both its returns), then ``y``."""
    victim = _join(cluster["address"], '{"lc": 1}')
    vid = _node_id(victim)
    lc = {"resources": {"lc": 1}}
    px, ph, py = (str(tmp_path / n) for n in ("x", "halves", "y"))
    x = make.options(**lc).remote(px, 3)
    a, b = halves.options(**lc).remote(ph, x)
    y = add_one.options(**lc).remote(py, a)
    assert len(repartir.wait([x, a, b, y], num_returns=4, timeout=60)[0]) == 4
    assert _kept_on([x, a, b, y]) == {vid}
    del x, a
    heir = _join(cluster["address"], '{"lc": 1}')
    _node_id(heir)  # known to the driver before the victim dies
    os.kill(victim["pid"], signal.SIGKILL)
    out_y, out_b = repartir.get([y, b], timeout=60)
    assert np.all(out_y == 5.0) and np.all(out_b == 6.0)
    assert (_runs(px), _runs(ph), _runs(py)) == (2, 2, 2)
    del y, b, out_y, out_b
    _end(heir)


def test_returns_of_a_task_without_retries_say_why_they_are_lost(cluster, tmp_path):  # noqa: F811
    victim = _join(cluster["address"], '{"l0": 1}')
    vid = _node_id(victim)
    path = str(tmp_path / "runs")
    a, b, c = three.options(resources={"l0": 1}, max_retries=0).remote(path, 4)
    assert len(repartir.wait([a, b, c], num_returns=3, timeout=60)[0]) == 3
    assert _kept_on([a, c]) == {vid}
    heir = _join(cluster["address"], '{"l0": 1}')
    _node_id(heir)  # known to the driver before the victim dies
    os.kill(victim["pid"], signal.SIGKILL)
    for r in (a, c):
        with pytest.raises(ObjectLostError,
                           match=f"kept on node {vid[:12]}.*max_retries are used up"):
            repartir.get(r, timeout=30)
    assert repartir.get(b, timeout=30) == 5  # inline: in the driver
    assert _runs(path) == 1
    del a, b, c, r
    _end(heir)


def test_items_of_an_ended_generator_lost_with_their_node_are_rebuilt_by_one_run(cluster, tmp_path):  # noqa: F811
    """Two generators that had ended: one whose refs were all handed out (one of them got
    by the driver, one dropped), one that had handed out its first item only.  The node
    dies: each runs again once; the lost items come back, the others keep their values
    and their new copies are released."""
    victim = _join(cluster["address"], '{"lg": 1}')
    vid = _node_id(victim)
    lg = {"resources": {"lg": 1}}
    p1, p2 = str(tmp_path / "one"), str(tmp_path / "two")
    gen = items.options(**lg).remote(p1, 6)
    refs = list(gen)
    gen2 = items.options(**lg).remote(p2, 4)
    first = next(gen2)
    assert wait_until(gen2.completed, 60)
    assert len(repartir.wait([*refs, first], num_returns=7, timeout=60)[0]) == 7
    assert _kept_on([*refs[:2], *refs[3:], first]) == {vid}
    got0 = repartir.get(refs[0], timeout=30)  # pulled into the driver: not lost
    del refs[4]  # dropped: not made again
    heir = _join(cluster["address"], '{"lg": 1}')
    hid = _node_id(heir)
    os.kill(victim["pid"], signal.SIGKILL)
    out = repartir.get(refs, timeout=60)
    assert [o if isinstance(o, int) else float(o[0]) for o in out] == [0.0, 1.0, 2, 3.0, 5.0]
    assert all(isinstance(o, int) or np.all(o == o[0]) for o in out)
    assert np.all(got0 == 0.0)
    refs2 = [first, *gen2]
    rest = repartir.get(refs2, timeout=60)
    assert [r if isinstance(r, int) else float(r[0]) for r in rest] == [0.0, 1.0, 2, 3.0]
    assert (_runs(p1), _runs(p2)) == (2, 2)
    # kept on the heir: items 1, 3, 5 of the first, 0, 1, 3 of the second
    assert _wait_stored(lambda s: s.get(hid) == 6, "six items kept on the heir")[hid] == 6
    del gen, refs, gen2, first, refs2, out, rest, got0
    _end(heir)


def test_items_of_a_generator_without_retries_say_why_they_are_lost(cluster, tmp_path):  # noqa: F811
    victim = _join(cluster["address"], '{"lg0": 1}')
    vid = _node_id(victim)
    path = str(tmp_path / "runs")
    refs = list(items.options(resources={"lg0": 1}, max_retries=0).remote(path, 2))
    assert len(repartir.wait(refs, num_returns=2, timeout=60)[0]) == 2
    heir = _join(cluster["address"], '{"lg0": 1}')
    _node_id(heir)  # known to the driver before the victim dies
    os.kill(victim["pid"], signal.SIGKILL)
    for r in refs:
        with pytest.raises(ObjectLostError,
                           match=f"kept on node {vid[:12]}.*max_retries are used up"):
            repartir.get(r, timeout=30)
    assert _runs(path) == 1
    del refs, r
    _end(heir)


def test_lost_items_a_generator_run_again_does_not_yield_again_say_so(cluster, tmp_path):  # noqa: F811
    victim = _join(cluster["address"], '{"lf": 1}')
    _node_id(victim)  # known to the driver
    path = str(tmp_path / "runs")
    refs = list(fewer.options(resources={"lf": 1}).remote(path, 3))
    assert len(repartir.wait(refs, num_returns=3, timeout=60)[0]) == 3
    heir = _join(cluster["address"], '{"lf": 1}')
    _node_id(heir)  # known to the driver before the victim dies
    os.kill(victim["pid"], signal.SIGKILL)
    assert np.all(repartir.get(refs[0], timeout=60) == 0.0)
    for r in refs[1:]:
        with pytest.raises(ObjectLostError, match="ended before it yielded it again"):
            repartir.get(r, timeout=30)
    assert _runs(path) == 2
    del refs, r
    _end(heir)


def test_returns_whose_lineage_was_evicted_say_so(cluster, tmp_path):  # noqa: F811
    """Past ``CLUSTER_LINEAGE_BYTES`` (made tiny here) the lineage of a task of several
    returns is dropped as a single result's is: its lost returns say so."""
    victim = _join(cluster["address"], '{"le": 1}')
    _node_id(victim)  # known to the driver
    client = cluster_client.active()
    with client._lock:
        bound, client._lineage.max_bytes = client._lineage.max_bytes, 1
        evicted = client._lineage.evicted
    try:
        a, b = pair.options(resources={"le": 1}).remote(str(tmp_path / "runs"), 1)
        assert len(repartir.wait([a, b], num_returns=2, timeout=60)[0]) == 2
        with client._lock:
            assert client._lineage.evicted >= evicted + 2 and not client._lineage.groups
    finally:
        with client._lock:
            client._lineage.max_bytes = bound
    heir = _join(cluster["address"], '{"le": 1}')
    _node_id(heir)  # known to the driver before the victim dies
    os.kill(victim["pid"], signal.SIGKILL)
    for r in (a, b):
        with pytest.raises(ObjectLostError, match="no lineage was kept"):
            repartir.get(r, timeout=30)
    assert _runs(str(tmp_path / "runs")) == 1
    del a, b, r
    _end(heir)
