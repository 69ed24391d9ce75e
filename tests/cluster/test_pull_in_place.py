"""Chunks received straight into their place (``Verifier.verify(..., into=)``,
``Endpoint.recv(place=)``, ``Puller._place``): a large frame is copied into the caller's memory
as it is hashed and its MAC checked over the copy, so what is accepted is what lies there; a
damaged, forged or replayed message is still refused, and a pull fed such messages between
the good ones lands exactly the bytes sent."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import repartir
from repartir.cluster import Endpoint
from repartir.cluster.borrows import RemoteArg
from repartir.cluster.pull import Puller
from repartir.cluster.wire import FUSE_BYTES, Signer, Verifier, decode, encode
from repartir.config import CLUSTER_CHUNK_BYTES, WIRE_DIGEST_BYTES
from repartir.errors import WireError
from repartir.serialization import serialize

TOKEN = "in-place-test-token-" + "x" * 40
OID = b"\x09" * 16


def chunk_message(data: bytes, offset: int = 0, signer: Signer | None = None) -> list:
    value = ("bchunk", OID, offset, pickle.PickleBuffer(memoryview(data)))
    return (signer or Signer(TOKEN)).sign(encode(value, inband_bytes=1))  # a frame of its own


@pytest.mark.parametrize("size", [1000, WIRE_DIGEST_BYTES, 3 * FUSE_BYTES + 17])
def test_a_frame_verified_into_memory_is_that_memory(size):
    data = np.random.default_rng(size).bytes(size)
    frames = chunk_message(data)
    dst = bytearray(size)
    v = Verifier(TOKEN).verify(frames, into={1: memoryview(dst)})
    assert bytes(dst) == data
    kind, oid, offset, buf = decode(v.frames)
    got = np.frombuffer(buf, dtype=np.uint8)
    assert got.tobytes() == data and np.shares_memory(got, np.frombuffer(dst, dtype=np.uint8))


@pytest.mark.parametrize("size", [1000, WIRE_DIGEST_BYTES, 3 * FUSE_BYTES + 17])
@pytest.mark.parametrize("where", [0, 0.5, -1])
def test_a_damaged_frame_verified_into_memory_is_refused(size, where):
    data = np.random.default_rng(size).bytes(size)
    frames = chunk_message(data)
    damaged = bytearray(frames[1])
    damaged[int(where * size) if where != -1 else -1] ^= 0x01
    frames[1] = bytes(damaged)
    with pytest.raises(WireError) as err:
        Verifier(TOKEN).verify(frames, into={1: memoryview(bytearray(size))})
    assert err.value.reason == "bad_mac"


def test_memory_of_another_size_is_not_used():
    data = b"y" * (2 * FUSE_BYTES)
    dst = bytearray(len(data) - 1)
    v = Verifier(TOKEN).verify(chunk_message(data), into={1: memoryview(dst), 7: memoryview(dst)})
    assert bytes(decode(v.frames)[3]) == data and not any(dst)


def test_recv_places_a_frame_and_drops_a_damaged_one_placed_too():
    with Endpoint.listen(token=TOKEN) as head, Endpoint.connect(head.address,
                                                                 token=TOKEN) as node:
        data = np.arange(1 << 17, dtype=np.float64)  # 1 MiB
        node.send(("hello",))
        peer = head.recv(timeout=10).peer
        signer = Signer(TOKEN)
        good = chunk_message(data.tobytes(), signer=signer)
        bad = list(good)
        bad[1] = bytearray(good[1])
        bad[1][12345] ^= 0x80
        for frames in (bad, good):
            head.socket.send_multipart([peer, *frames])
        dst = np.zeros_like(data)
        sizes_seen = []

        def place(sizes):
            sizes_seen.append(sizes)
            return {1: memoryview(dst).cast("B")}

        msg = node.recv(timeout=10, place=place)
        assert node.dropped["bad_mac"] == 1 and len(sizes_seen) == 2
        assert sizes_seen[1][1] == data.nbytes
        got = np.frombuffer(msg.value[3], dtype=np.float64)
        np.testing.assert_array_equal(got, data)
        assert np.shares_memory(got, dst)


def test_a_pull_fed_damaged_and_replayed_chunks_lands_the_bytes_sent(rt):
    """A peer that answers each chunk asked with a damaged copy, then the chunk, then the
    chunk again (a replay): the damaged and replayed copies land in the place of a chunk not
    yet received and are refused; the blob that lands is the one sent."""
    value = np.random.default_rng(1).random(5 * CLUSTER_CHUNK_BYTES // 8 // 2)  # 2.5 chunks
    blob = serialize(value).to_bytes()
    started, failed, endpoints = [], [], []
    with Endpoint.listen(token=TOKEN) as peer:
        p = Puller("this-node", {}, TOKEN, endpoints.append,
                   lambda peer_, tid, rf, args, kw: started.append(repartir.get(args[0])),
                   lambda peer_, tid, exc: failed.append(exc))
        placed = []
        place = p._place

        def spy(node, sizes):
            where = place(node, sizes)
            placed.append(where is not None)
            return where

        p._place = spy
        in_place = []  # for each chunk accepted: whether it was received in its place
        on_message = p.on_message

        def seen(node, value):
            if value[0] == "bchunk":
                in_place.append(p._placed == (value[1], value[2]))
            on_message(node, value)

        p.on_message = seen
        try:
            host, port = peer.address.rsplit("/", 1)[1].rsplit(":", 1)
            p.submit(b"driver", b"t1", None,
                     [RemoteArg(OID, "peer-node", f"{host}:{port}", len(blob))], {})
            (ep,) = endpoints
            signer = Signer(TOKEN)
            chunks = 0
            while not started and not failed:
                msg = peer.recv(timeout=10)
                if msg.value[0] == "bmeta":
                    peer.send(("bmeta", OID, len(blob)), to=msg.peer)
                else:
                    _, _, offset, length = msg.value
                    good = chunk_message(blob[offset:offset + length], offset, signer)
                    bad = list(good)
                    bad[1] = bytearray(good[1])
                    bad[1][length // 2] ^= 0x01
                    for frames in (bad, good, good):
                        peer.socket.send_multipart([msg.peer, *frames])
                    chunks += 1
                while ep.poll(0.2):
                    p.drain(ep.socket)
            assert not failed and chunks == 3
            np.testing.assert_array_equal(started[0], value)
            assert ep.dropped["bad_mac"] == 3 and ep.dropped["replay"] == 3
            assert p.pulled_bytes == len(blob)
            assert in_place == [True, True, True]  # no chunk copied after it was verified
            assert placed.count(True) >= 6  # the damaged and replayed copies went there too
        finally:
            p.task_done(b"t1")
            started.clear()
            p.close()
