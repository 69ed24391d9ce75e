"""The cluster's wire layer (``repartir/cluster/``, docs/cluster.md): signed frames, endpoints,
tokens and CurveZMQ keys, over loopback TCP (random ports) and inproc.

- round trips of messages holding numpy arrays, received without a copy;
- nothing unauthenticated is unpickled: a forged message whose pickle would create a file
  never creates it (the same payload signed with the right token does, so the check can
  fail);
- replayed and reflected messages, malformed and truncated frames (hypothesis: random frame
  lists and random damage to valid messages) are dropped and the endpoint keeps working;
- a wrong token is reported on both sides; a non-loopback address without a token is
  refused; token and secret key files are written 0600 and refused when others can read
  them; CURVE round trips, and a client with the wrong server key times out.

Every receive has a timeout; every socket is closed and every context terminated.
"""

from __future__ import annotations

import logging
import os
import stat

import numpy as np
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from repartir.cli import main as cli_main
from repartir.cluster import (CurveKeys, Endpoint, Signer, Verifier, encode, find_token,
                              generate_keys, generate_token, is_local_address, load_key_file,
                              load_token_file, write_key_files, write_token_file)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from repartir.cluster.wire import (FUSE_BYTES, HEADER, MAC_BYTES, REFUSED, VERSION,
                                   _copy_and_tag, ghash_key, large_frame_tag, mac_key)
from repartir.config import WIRE_DIGEST_BYTES
from repartir.errors import TokenError, WireError, WireTimeoutError

pytestmark = pytest.mark.timeout(60)

TOKEN = generate_token()
OTHER_TOKEN = generate_token()


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No REPARTIR_TOKEN and no token file."""
    monkeypatch.delenv("REPARTIR_TOKEN", raising=False)
    monkeypatch.setenv("REPARTIR_TOKEN_FILE", str(tmp_path / "no-such-token"))


@pytest.fixture
def ctx():
    """A context for raw sockets and inproc endpoints; terminated at the end (which would
    hang, and time out, if a socket of it were left open)."""
    context = zmq.Context()
    yield context
    context.term()


@pytest.fixture
def pair():
    """A listening ROUTER and a DEALER connected to it over loopback TCP, with TOKEN."""
    head = Endpoint.listen(token=TOKEN)
    node = Endpoint.connect(head.address, token=TOKEN)
    yield head, node
    node.close()
    head.close()
    assert head.closed and node.closed


class Raw:
    """A plain DEALER socket connected to an endpoint: sends any frames, no signing."""

    def __init__(self, context: zmq.Context, address: str) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)

    def send(self, frames: list) -> None:
        self.socket.send_multipart(frames)

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def raw(ctx, pair):
    r = Raw(ctx, pair[0].address)
    yield r
    r.close()


def _check_alive(head: Endpoint, raw: Raw, signer: Signer, value) -> None:
    """A valid message still gets through ``head``, with its value intact."""
    raw.send(signer.sign(encode(value)))
    msg = head.recv(timeout=10)
    assert msg.value == value and msg.sender == signer.sender


class MakesFile:
    """Unpickling this opens (creates) ``path`` for writing."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("transport", ["tcp", "inproc"])
def test_round_trip_of_numpy_arrays_received_without_a_copy(transport, ctx):
    if transport == "tcp":
        head = Endpoint.listen(token=TOKEN)
        node = Endpoint.connect(head.address, token=TOKEN)
    else:
        head = Endpoint.listen("inproc://wire-test", token=TOKEN, context=ctx)
        node = Endpoint.connect("inproc://wire-test", token=TOKEN, context=ctx)
    try:
        rng = np.random.default_rng(1)
        big = rng.random((512, 300))                              # 1.2 MB: a frame of its own
        fortran = np.asfortranarray(rng.integers(0, 9, (300, 400), dtype=np.int32))
        strided = big[:, ::2]                                     # not contiguous: in-band
        small = np.arange(10, dtype=np.uint8)                     # below 64 KiB: in-band
        value = {"big": big, "f": fortran, "strided": strided, "small": small, "n": 7,
                 "text": "é"}
        node.send(value)
        msg = head.recv(timeout=10)
        got = msg.value
        assert msg.peer and msg.seq == 1 and msg.sender == node.sender
        for key in ("big", "f", "strided", "small"):
            assert got[key].dtype == value[key].dtype and got[key].shape == value[key].shape
            assert np.array_equal(got[key], value[key]), key
        assert got["f"].flags.f_contiguous and (got["n"], got["text"]) == (7, "é")
        for key in ("big", "f"):  # zero-copy: views of the received ZeroMQ frames
            base = got[key]
            while isinstance(base, np.ndarray):
                base = base.base
            assert isinstance(base, memoryview) and isinstance(base.obj, zmq.Frame), key
            assert not got[key].flags.writeable
        # and back, from the ROUTER to that peer; sequence numbers go on per sender
        head.send({"echo": got["big"][:3]}, to=msg.peer)
        reply = node.recv(timeout=10)
        assert reply.peer is None and reply.sender == head.sender
        assert np.array_equal(reply.value["echo"], big[:3])
        node.send("second")
        second = head.recv(timeout=10)
        assert (second.value, second.seq) == ("second", 2)
    finally:
        node.close()
        head.close()


def test_endpoints_in_one_poller(pair):
    head, node = pair
    other = Endpoint.connect(head.address, token=TOKEN)
    try:
        poller = zmq.Poller()
        poller.register(node.socket, zmq.POLLIN)
        poller.register(other.socket, zmq.POLLIN)
        node.send("from node")
        other.send("from other")
        peers = {}
        for _ in range(2):
            msg = head.recv(timeout=10)
            peers[msg.value] = msg.peer
        head.send("to other", to=peers["from other"])
        events = dict(poller.poll(10_000))
        assert list(events) == [other.socket] and other.recv(timeout=10).value == "to other"
        assert not node.poll(0)
    finally:
        other.close()


def test_send_checks_the_peer_argument(pair):
    head, node = pair
    with pytest.raises(ValueError, match="to=message.peer"):
        head.send(1)
    with pytest.raises(ValueError, match="leave out to="):
        node.send(1, to=b"x")


# --------------------------------------------------------------------------- forged messages


def test_a_forged_message_is_never_unpickled(pair, raw, tmp_path):
    head, _ = pair
    target = tmp_path / "pwned"
    payload = encode(MakesFile(str(target)))
    forger = Signer(OTHER_TOKEN)                                   # the wrong token
    raw.send(forger.sign(payload))
    altered = Signer(TOKEN).sign(encode("harmless"))               # right token, then altered
    altered[0] = payload[0]
    raw.send(altered)
    header = HEADER.pack(b"RPW1", VERSION, 0, 0, 1, b"s" * 16, len(payload))
    raw.send(payload + [header, b"\0" * MAC_BYTES])               # a made-up MAC
    with pytest.raises(WireTimeoutError):
        head.recv(timeout=0.5)
    assert not target.exists()
    assert head.dropped["bad_mac"] == 3
    # the same payload signed with the cluster's token does create the file: the check above
    # could have failed
    raw.send(Signer(TOKEN).sign(payload))
    opened = head.recv(timeout=10).value
    opened.close()
    assert target.exists()


# --------------------------------------------------------------------------- replays


def test_replayed_and_reflected_messages_are_dropped(pair, raw):
    head, _ = pair
    signer = Signer(TOKEN)
    first = signer.sign(encode("one"))
    raw.send(first)
    assert head.recv(timeout=10).value == "one"
    raw.send(first)                                         # the same frames again
    raw.send(signer.sign(encode("old"), seq=1))             # a re-signed old number
    with pytest.raises(WireTimeoutError, match="2 message"):
        head.recv(timeout=0.5)
    assert head.dropped["replay"] == 2
    later = signer.sign(encode("three"), seq=3)            # gaps are fine, going back is not
    raw.send(later)
    assert head.recv(timeout=10).seq == 3
    raw.send(signer.sign(encode("two"), seq=2))
    raw.send(Signer(TOKEN, sender=head.sender).sign(encode("mine")))  # reflected
    raw.send(signer.sign(encode("four"), seq=4))
    assert head.recv(timeout=10).value == "four"
    assert head.dropped["replay"] == 3 and head.dropped["reflected"] == 1


def test_the_replay_table_is_bounded():
    verifier = Verifier(TOKEN, max_senders=2)
    signers = [Signer(TOKEN) for _ in range(3)]
    for s in signers:
        verifier.verify(s.sign([b"x"]))
    assert [verifier.last_seq(s.sender) for s in signers] == [0, 1, 1]  # first forgotten
    with pytest.raises(WireError) as err:
        verifier.verify(signers[2].sign([b"y"], seq=1))
    assert err.value.reason == "replay"


@pytest.mark.parametrize("size", [WIRE_DIGEST_BYTES - 1, WIRE_DIGEST_BYTES, 4 * 1024 * 1024])
@pytest.mark.parametrize("where", [0, "middle", -1])
def test_one_byte_changed_in_a_frame_of_any_size_is_refused(size, where):
    """Frames of WIRE_DIGEST_BYTES and more enter the MAC as their GHASH tag, smaller ones
    byte by byte (docs/cluster.md, "Wire format"): a change anywhere in either is caught, and
    so is a byte moved from one frame to the next."""
    data = bytearray(os.urandom(size))
    signed = Signer(TOKEN).sign([b"pickle", data])
    assert Verifier(TOKEN).verify(signed).frames[1] is data
    i = size // 2 if where == "middle" else where
    altered = bytearray(data)
    altered[i] ^= 1
    with pytest.raises(WireError) as err:
        Verifier(TOKEN).verify([signed[0], altered, *signed[2:]])
    assert err.value.reason == "bad_mac"
    moved = [signed[0] + bytes(data[:1]), bytes(data[1:]), *signed[2:]]
    with pytest.raises(WireError) as err:
        Verifier(TOKEN).verify(moved)
    assert err.value.reason == "bad_mac"


def test_the_large_frame_tag_is_gcm_s():
    """The tag of a large frame is AES-GCM's tag of no plaintext with the frame as associated
    data: McGrew and Viega's GCM test case 13 (AES-256, key, nonce, plaintext and data all
    zero or empty) gives it."""
    assert large_frame_tag(AESGCM(bytes(32)), b"").hex() == "530f8afbc74536b9a963b4f1c4cb738b"


@pytest.mark.parametrize("size", [1, 15, 16, 17, FUSE_BYTES - 1, FUSE_BYTES, FUSE_BYTES + 1,
                                  3 * FUSE_BYTES + 17])
def test_copying_while_tagging_gives_the_copy_and_the_tag_of_the_whole(size):
    """A chunk received in place is copied and tagged a piece at a time
    (``_copy_and_tag``): the tag is that of the whole frame, whatever the size's remainder
    in pieces or in 16-byte blocks."""
    data = os.urandom(size)
    dst = bytearray(size)
    key = ghash_key(mac_key(TOKEN))
    assert _copy_and_tag(key, memoryview(data), memoryview(dst)) \
        == large_frame_tag(AESGCM(key), data)
    assert dst == data


def test_the_tag_key_comes_from_the_token():
    """Another token gives another GHASH key and another tag of the same frame; the token's
    bytes themselves are never the AES key."""
    data = os.urandom(WIRE_DIGEST_BYTES)
    keys = {ghash_key(mac_key(t)) for t in (TOKEN, OTHER_TOKEN, None)}
    assert len(keys) == 3 and mac_key(TOKEN)[:32] not in keys
    assert len({large_frame_tag(AESGCM(k), data) for k in keys}) == 3


# --------------------------------------------------------------------------- malformed frames


@given(frames=st.lists(st.binary(max_size=200), min_size=1, max_size=6)
       | st.lists(st.sampled_from([b"", b"RPW1", b"\0" * HEADER.size, b"\1" * MAC_BYTES,
                                   REFUSED, HEADER.pack(b"RPW1", VERSION, 0, 0, 5, b"s" * 16, 1)]),
                  min_size=1, max_size=5))
def test_random_frames_are_dropped_and_the_endpoint_keeps_working(pair, raw, frames):
    head, _ = pair
    before = sum(head.dropped.values())
    raw.send(frames)
    _check_alive(head, raw, Signer(TOKEN), ["alive", len(frames)])
    assert sum(head.dropped.values()) == before + 1
    assert head.dropped["bad_mac"] + head.dropped["malformed"] == before + 1


@given(data=st.data())
def test_damaged_messages_are_dropped(pair, raw, data):
    head, _ = pair
    message = Signer(TOKEN).sign(encode({"a": np.arange(20_000), "b": "x"}))
    frames = [bytearray(f) for f in message]
    i = data.draw(st.integers(0, len(frames) - 1), label="frame")
    damage = data.draw(st.sampled_from(["flip", "truncate", "drop", "duplicate", "split",
                                        "empty"]), label="damage")
    if damage == "flip" and frames[i]:
        j = data.draw(st.integers(0, len(frames[i]) - 1), label="byte")
        frames[i][j] ^= data.draw(st.integers(1, 255), label="mask")
    elif damage == "truncate" or (damage == "flip" and not frames[i]):
        frames[i] = frames[i][:data.draw(st.integers(0, max(len(frames[i]) - 1, 0)))]
    elif damage == "drop":
        del frames[i]
    elif damage == "duplicate":
        frames.insert(i, frames[i])
    elif damage == "split":
        cut = data.draw(st.integers(0, len(frames[i])), label="cut")
        frames[i:i + 1] = [frames[i][:cut], frames[i][cut:]]
    else:
        frames[i] = bytearray()
    before = sum(head.dropped.values())
    raw.send([bytes(f) for f in frames])
    _check_alive(head, raw, Signer(TOKEN), "still here")
    assert sum(head.dropped.values()) == before + 1


def test_a_verified_message_that_cannot_be_unpickled_is_dropped(pair, raw):
    head, _ = pair
    signer = Signer(TOKEN)
    raw.send(signer.sign([b"not a pickle"]))
    _check_alive(head, raw, signer, "after")
    assert head.dropped["undecodable"] == 1


# --------------------------------------------------------------------------- tokens


def test_a_wrong_token_is_reported_on_both_sides(caplog):
    head = Endpoint.listen(token=TOKEN)
    stranger = Endpoint.connect(head.address, token=OTHER_TOKEN)
    try:
        with caplog.at_level(logging.WARNING, logger="repartir.cluster"):
            for i in range(5):
                stranger.send(i)
            with pytest.raises(WireTimeoutError, match="5 message.*same cluster token"):
                head.recv(timeout=1)
        assert head.dropped["bad_mac"] == 5
        records = [r.getMessage() for r in caplog.records if r.name == "repartir.cluster"]
        assert len(records) == 1, records  # rate-limited: one record for five drops
        assert "MAC does not verify" in records[0] and "same cluster token" in records[0]
        with pytest.raises(TokenError, match="refused our message.*same cluster token"):
            stranger.recv(timeout=10)
    finally:
        stranger.close()
        head.close()


def test_a_peer_that_never_answers_times_out_naming_the_token():
    head = Endpoint.listen(token=TOKEN)
    node = Endpoint.connect(head.address, token=OTHER_TOKEN)
    try:
        node.send("hello?")  # the head never receives, so it never refuses either
        with pytest.raises(WireTimeoutError, match="within 0.3 s.*same cluster token"):
            node.recv(timeout=0.3)
    finally:
        node.close()
        head.close()


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:*", "tcp://*:*", "tcp://10.1.2.3:5555"])
def test_a_non_loopback_address_without_a_token_is_refused(no_token, address):
    host = address[len("tcp://"):].rsplit(":", 1)[0]
    with pytest.raises(TokenError, match=f"refusing to listen on {host.replace('*', '[*]')} "
                                         f"without a token: .*repartir token"):
        Endpoint.listen(address)
    with pytest.raises(TokenError, match="refusing to connect to .* without a token"):
        Endpoint.connect(address.replace("*", "5555"))


def test_loopback_without_a_token_works_unauthenticated(no_token):
    with Endpoint.listen() as head, Endpoint.connect(head.address) as node:
        assert head.address.startswith("tcp://127.0.0.1:") and not head.authenticated
        node.send([1, 2])
        assert head.recv(timeout=10).value == [1, 2]


def test_a_token_allows_any_address(no_token):
    with Endpoint.listen("tcp://0.0.0.0:*", token=TOKEN) as head:
        assert head.authenticated and head.address.startswith("tcp://0.0.0.0:")


def test_local_addresses():
    local = ["tcp://127.0.0.1:1", "tcp://127.3.4.5:1", "tcp://localhost:1", "tcp://[::1]:1",
             "inproc://x", "ipc:///tmp/x"]
    remote = ["tcp://0.0.0.0:1", "tcp://*:1", "tcp://eth0:1", "tcp://192.168.1.2:1",
              "tcp://example.org:1", "tcp://[::]:1"]
    assert [is_local_address(a) for a in local] == [True] * len(local)
    assert [is_local_address(a) for a in remote] == [False] * len(remote)
    with pytest.raises(ValueError, match="transport://"):
        is_local_address("127.0.0.1:5")


def test_token_files_are_0600_and_others_readable_ones_are_refused(tmp_path):
    path = tmp_path / "dir" / "token"
    old = os.umask(0)  # even with a permissive umask
    try:
        token = write_token_file(str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(token) == 64 and load_token_file(str(path)) == token
    with pytest.raises(FileExistsError, match="--force"):
        write_token_file(str(path))
    for mode in (0o640, 0o604, 0o620):
        path.chmod(mode)
        with pytest.raises(TokenError, match=f"mode {mode:04o}.*chmod 600"):
            load_token_file(str(path))
    assert write_token_file(str(path), "t" * 40, overwrite=True) == "t" * 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and load_token_file(str(path)) == "t" * 40
    path.write_text("short\n")
    with pytest.raises(TokenError, match="5 characters"):
        load_token_file(str(path))


def test_find_token_reads_the_variable_then_the_file(monkeypatch, tmp_path):
    path = tmp_path / "token"
    monkeypatch.setenv("REPARTIR_TOKEN_FILE", str(path))
    monkeypatch.delenv("REPARTIR_TOKEN", raising=False)
    assert find_token() is None
    in_file = write_token_file()
    assert path.exists() and find_token() == in_file
    monkeypatch.setenv("REPARTIR_TOKEN", TOKEN)
    assert find_token() == TOKEN
    monkeypatch.setenv("REPARTIR_TOKEN", "tooshort")
    with pytest.raises(TokenError, match="REPARTIR_TOKEN is not a usable cluster token"):
        find_token()
    # and an endpoint without token= takes the variable's
    monkeypatch.setenv("REPARTIR_TOKEN", TOKEN)
    with Endpoint.listen() as head, Endpoint.connect(head.address, token=TOKEN) as node:
        node.send("via env")
        assert head.authenticated and head.recv(timeout=10).value == "via env"


def test_the_token_command_writes_a_0600_file(tmp_path, capsys):
    path = tmp_path / "t"
    assert cli_main(["token", "--file", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(load_token_file(str(path))) == 64
    assert load_token_file(str(path)) not in capsys.readouterr().out  # never printed
    assert cli_main(["token", "--file", str(path)]) == 1
    assert "exists already" in capsys.readouterr().err


# --------------------------------------------------------------------------- CurveZMQ


def test_keygen_writes_a_0600_secret_key(tmp_path, capsys):
    assert cli_main(["keygen", str(tmp_path / "keys")]) == 0
    public, secret = tmp_path / "keys" / "repartir.key", tmp_path / "keys" / "repartir.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    pair_ = load_key_file(str(secret))
    assert pair_.secret and load_key_file(str(public)) == CurveKeys(pair_.public, None)
    assert zmq.curve_public(pair_.secret) == pair_.public
    assert pair_.secret.decode() not in capsys.readouterr().out
    assert cli_main(["keygen", str(tmp_path / "keys")]) == 1
    secret.chmod(0o644)
    with pytest.raises(TokenError, match="chmod 600"):
        load_key_file(str(secret))


def test_curve_round_trip_and_a_wrong_server_key(tmp_path):
    public_path, secret_path = write_key_files(str(tmp_path))
    head = Endpoint.listen(token=TOKEN, server_keys=load_key_file(secret_path))
    good = Endpoint.connect(head.address, token=TOKEN, server_key=public_path)
    wrong = Endpoint.connect(head.address, token=TOKEN, server_key=generate_keys().public)
    plain = Endpoint.connect(head.address, token=TOKEN)          # no encryption at all
    # sent at once: once ZeroMQ has seen a handshake fail for the mechanism, the DEALER has
    # no connection left and a send would block for ever (seen once on a loaded machine)
    wrong.send("let me in")
    plain.send("me too")
    try:
        good.send(np.arange(100_000))
        msg = head.recv(timeout=10)
        assert np.array_equal(msg.value, np.arange(100_000))
        head.send("encrypted reply", to=msg.peer)
        assert good.recv(timeout=10).value == "encrypted reply"
        with pytest.raises(WireTimeoutError):
            head.recv(timeout=1)
        with pytest.raises(WireTimeoutError, match="server key"):
            wrong.recv(timeout=0.5)
        assert sum(head.dropped.values()) == 0  # the handshake failed: no message arrived
    finally:
        for ep in (plain, wrong, good, head):
            ep.close()


def test_a_frame_above_max_frame_bytes_never_arrives():
    with Endpoint.listen(token=TOKEN, max_frame_bytes=100_000) as head, \
            Endpoint.connect(head.address, token=TOKEN) as node:
        node.send(np.zeros(200_000, dtype=np.uint8))   # one frame of 200,000 bytes
        with pytest.raises(WireTimeoutError):
            head.recv(timeout=0.5)
        small = Endpoint.connect(head.address, token=TOKEN)
        try:
            small.send(np.ones(50_000, dtype=np.uint8))
            assert head.recv(timeout=10).value.sum() == 50_000
        finally:
            small.close()


def test_server_keys_need_the_secret():
    with pytest.raises(ValueError, match="key_secret"):
        Endpoint.listen(token=TOKEN, server_keys=CurveKeys(generate_keys().public))
