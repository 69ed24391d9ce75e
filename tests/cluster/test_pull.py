"""The pulling half of a node (``repartir/cluster/pull.py``) without a cluster: a
:class:`Puller` on a local node is fed the answers a peer would send (its size, then chunks,
in any order) and must land the blob as an object of the local node, run the waiting tasks
with it, share one pull among them, cache the copy while they run and drop it after, and
fail the tasks with ``ObjectLostError`` when the peer no longer keeps the object, sends what
was not asked for, or stops answering."""

from __future__ import annotations

import numpy as np
import pytest

import repartir
from repartir.cluster import pull as pull_mod
from repartir.cluster.borrows import RemoteArg
from repartir.cluster.pull import Puller
from repartir.config import CLUSTER_CHUNK_BYTES
from repartir.errors import ObjectLostError
from repartir.serialization import serialize

PEER = "peer-node"
OID = b"\x07" * 16


class Recorder:
    def __init__(self):
        self.started, self.failed, self.endpoints = [], [], []

    def start(self, peer, tid, rf, args, kwargs):
        self.started.append((tid, repartir.get(args[0]) if args else None))

    def fail(self, peer, tid, exc):
        self.failed.append((tid, exc))


@pytest.fixture
def puller(rt):
    rec = Recorder()
    p = Puller("this-node", {}, None, rec.endpoints.append, rec.start, rec.fail)
    yield p, rec
    p.close()


def blob_of(value) -> bytes:
    return serialize(value).to_bytes()


def arg(size: int) -> RemoteArg:
    return RemoteArg(OID, PEER, "127.0.0.1:9", size)  # port 9: nothing answers there


def test_a_blob_in_chunks_in_any_order_lands_once_for_the_tasks_waiting(puller):
    p, rec = puller
    value = np.arange(9 * CLUSTER_CHUNK_BYTES // 8 // 4, dtype=np.float64)  # ~2.25 chunks
    blob = blob_of(value)
    p.submit(b"driver", b"t1", None, [arg(len(blob))], {})
    p.submit(b"driver", b"t2", None, [arg(len(blob))], {})
    assert len(p.pulls) == 1 and len(rec.endpoints) == 1  # one pull, one peer endpoint
    p.on_message(PEER, ("bmeta", OID, len(blob)))
    while p.pulls:  # answer every chunk asked so far, last asked first
        pull = p.pulls[OID]
        for offset, length in sorted(pull.asked.items(), reverse=True):
            p.on_message(PEER, ("bchunk", OID, offset, memoryview(blob)[offset:offset + length]))
    assert [t for t, _ in rec.started] == [b"t1", b"t2"] and not rec.failed
    for _, got in rec.started:
        np.testing.assert_array_equal(got, value)
    assert p.pulled_bytes == len(blob)
    assert p.cache[OID][1] == 2  # two tasks use the copy
    p.submit(b"driver", b"t3", None, [arg(len(blob))], {})  # cached: no new pull
    assert not p.pulls and p.pulled_bytes == len(blob) and p.cache[OID][1] == 3
    for t in (b"t1", b"t2", b"t3"):
        p.task_done(t)
    assert p.cache == {} and p.uses == {}


@pytest.mark.parametrize("answer", [
    ("bmeta", OID, None),  # the peer no longer keeps it
    ("bchunk", OID, 12345, b"x" * 10),  # a chunk nobody asked for
])
def test_a_bad_answer_fails_the_waiting_tasks(puller, answer):
    p, rec = puller
    blob = blob_of(np.ones(1 << 18))
    p.submit(b"driver", b"t1", None, [arg(len(blob))], {})
    if answer[0] == "bchunk":
        p.on_message(PEER, ("bmeta", OID, len(blob)))
    p.on_message(PEER, answer)
    assert not rec.started and [t for t, _ in rec.failed] == [b"t1"]
    assert isinstance(rec.failed[0][1], ObjectLostError)
    assert "could not be pulled from node" in str(rec.failed[0][1])
    assert p.pulls == {} and p.cache == {}


def test_a_silent_peer_fails_the_pull_after_the_timeout(puller, monkeypatch):
    p, rec = puller
    p.submit(b"driver", b"t1", None, [arg(1 << 20)], {})
    p.check()
    assert not rec.failed  # not yet
    monkeypatch.setattr(pull_mod, "CLUSTER_PULL_TIMEOUT_S", 0.0)
    p.check()
    assert [t for t, _ in rec.failed] == [b"t1"]
    assert "CLUSTER_PULL_TIMEOUT_S" in str(rec.failed[0][1])


def test_a_pull_from_a_node_declared_dead_fails_at_once(puller):
    """The head declared the peer dead: its pulls fail now, not after
    CLUSTER_PULL_TIMEOUT_S; pulls from other nodes go on."""
    p, rec = puller
    p.submit(b"driver", b"t1", None, [arg(1 << 20)], {})
    p.nodes_dead({"another-node"})
    assert not rec.failed and p.pulls
    p.nodes_dead({PEER})
    assert [t for t, _ in rec.failed] == [b"t1"] and p.pulls == {}
    assert isinstance(rec.failed[0][1], ObjectLostError)
    assert "declared it dead" in str(rec.failed[0][1])
