"""Refs inside the arguments of tasks on the loopback cluster of ``test_cluster.py``
(docs/cluster.md, "Refs inside arguments"): as in Ray, they are not resolved; the task gets
``ObjectRef`` s and ``get`` s them on its node, which pulls those kept on other nodes; they
stay alive while the task borrows them, even once the driver dropped its refs, and nothing
of them is left afterwards."""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest

import repartir

from test_cluster import cluster  # noqa: F401  (the module-scoped loopback cluster)
from test_cluster_returns import nothing_kept

pytestmark = pytest.mark.usefixtures("cluster")

N = 1 << 17  # float64s: 1 MiB, kept on its node


@repartir.remote(resources={"on_head": 1})
def on_head(x):
    return np.full(N, x, dtype=np.float64)


@repartir.remote(resources={"big_mem": 1})
def on_node(x):
    return np.full(N, x, dtype=np.float64)


@repartir.remote(resources={"big_mem": 1})
def small(x):
    return x


@repartir.remote(resources={"big_mem": 1})
def look(box, gate=None):
    """What the task got: the type of each nested thing, then their values (got here)."""
    if gate is not None:
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
    refs = box["refs"]
    kinds = [type(r).__name__ for r in refs]
    values = [float(np.asarray(v).ravel()[0]) for v in repartir.get(refs)]
    return repartir.get_runtime_context().get_node_id(), kinds, values


def test_refs_nested_in_an_argument_are_refs_the_task_can_get():
    refs = [repartir.put(1.0), small.remote(2.0), on_node.remote(3.0),
            on_head.remote(4.0)]
    nid, kinds, values = repartir.get(look.remote({"refs": refs}), timeout=60)
    assert kinds == ["ObjectRef"] * 4
    assert values == [1.0, 2.0, 3.0, 4.0]
    assert nid == [n["NodeID"] for n in repartir.nodes() if "big_mem" in n["Resources"]][0]
    assert float(repartir.get(refs[3], timeout=60)[0]) == 4.0  # still the driver's
    del refs
    gc.collect()
    nothing_kept()


def test_nested_refs_stay_alive_while_the_task_borrows_them(tmp_path):
    gate = str(tmp_path / "gate")
    refs = [on_head.remote(5.0), on_node.remote(6.0)]
    repartir.wait(refs, num_returns=2, timeout=60)
    out = look.remote({"refs": refs}, gate)
    del refs  # the task has not read them yet
    gc.collect()
    time.sleep(1.5)  # a registry round: the releases, had they been sent, are done
    open(gate, "w").close()
    _, kinds, values = repartir.get(out, timeout=60)
    assert values == [5.0, 6.0]
    nothing_kept()


@repartir.remote(resources={"big_mem": 1})
def get_or_say(box):
    try:
        return repartir.get(box[0])
    except KeyError as exc:
        return f"caught {exc}"


def test_a_nested_ref_whose_task_failed_raises_at_the_tasks_get():
    @repartir.remote(max_retries=0)
    def boom():
        raise KeyError("nested failure")

    said = repartir.get(get_or_say.remote([boom.remote()]), timeout=60)
    assert said.startswith("caught") and "nested failure" in said  # the task ran, its get raised
    with pytest.raises(KeyError, match="nested failure"):
        repartir.get(look.remote({"refs": [boom.remote()]}), timeout=60)


def test_a_ref_cannot_be_pickled_outside_a_task():
    import pickle

    with pytest.raises(repartir.RepartirError, match="get\\(\\) it first"):
        pickle.dumps(repartir.put(1))


@repartir.remote(resources={"big_mem": 1})
def echo_refs(box):
    return {"back": box["refs"], "node": repartir.get_runtime_context().get_node_id()}


@repartir.remote(resources={"big_mem": 1})
def put_inside(x, n):
    return [repartir.put(np.full(n, x, dtype=np.float64)), repartir.put(x)]


def test_refs_inside_a_result_can_be_got_passed_on_and_dropped():
    sent = [repartir.put(1.0), on_head.remote(2.0)]
    out = repartir.get(echo_refs.remote({"refs": sent}), timeout=60)
    back = out["back"]
    assert [type(r).__name__ for r in back] == ["ClusterRef", "ClusterRef"]
    assert repartir.get(back[0], timeout=60) == 1.0
    assert float(repartir.get(back[1], timeout=60)[0]) == 2.0
    _, kinds, values = repartir.get(look.remote({"refs": back}), timeout=60)  # passed on
    assert values == [1.0, 2.0]
    del sent, out, back
    nothing_kept()


def test_a_task_returns_refs_to_objects_it_put():
    refs = repartir.get(put_inside.remote(3.0, N), timeout=60)
    big, small_ref = refs
    assert repartir.get(small_ref, timeout=60) == 3.0
    arr = repartir.get(big, timeout=60)
    assert arr.shape == (N,) and float(arr[0]) == 3.0
    task = repartir.remote(resources={"on_head": 1})(lambda a: float(a.sum()))
    assert repartir.get(task.remote(big), timeout=60) == 3.0 * N  # pulled node to node
    del refs, big, small_ref, arr
    nothing_kept()


def test_refs_dropped_before_they_are_ready_leave_nothing():
    for _ in range(3):
        repartir.get(put_inside.remote(4.0, N), timeout=60)  # dropped at once
    nothing_kept()


@repartir.remote
class Reader:
    def read(self, box):
        return [type(r).__name__ for r in box], [float(np.asarray(v).ravel()[0])
                                                 for v in repartir.get(box)]


def test_refs_nested_in_an_actor_calls_arguments():
    a = Reader.remote()
    refs = [repartir.put(1.0), on_node.remote(2.0), on_head.remote(3.0)]
    kinds, values = repartir.get(a.read.remote(refs), timeout=60)
    assert kinds == ["ObjectRef"] * 3 and values == [1.0, 2.0, 3.0]
    repartir.kill(a)
    del refs
    nothing_kept()
