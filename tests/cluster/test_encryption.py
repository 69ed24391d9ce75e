"""``--encrypt``: a cluster whose every connection is CurveZMQ-encrypted (docs/cluster.md,
"Encryption").

First the endpoints alone (a plain-text peer refused on both sides, in words; the bytes on
the wire recorded by a TCP proxy placed between two endpoints hold a known marker without
encryption and not with it), then a head and a node started with the CLI on 127.0.0.1, the
head's key pair made by ``repartir keygen``, and a driver connected to them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import repartir
from repartir.cluster import Endpoint, generate_keys
from repartir.errors import EncryptionError, TokenError
from test_cluster import cli, cluster_env, recorded

TOKEN = "e" * 64
MARKER = "plaintext_marker_5f3a"  # a custom resource name: it travels in the registry
STORE = str(256 << 20)


class RecordingProxy:
    """A TCP proxy on 127.0.0.1 that forwards every connection to ``target`` (host, port)
    and records every byte that crosses it, both ways, in :attr:`seen`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.seen = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self._listener.accept()
            except OSError:
                return
            b = socket.create_connection(self.target)
            self._conns += [a, b]
            for src, dst in ((a, b), (b, a)):
                t = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                self._threads.append(t)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    self.seen += data
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        try:  # wakes the accepting thread (closing alone does not)
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for c in self._conns:
            c.close()
        for t in self._threads:
            t.join(5)


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# --------------------------------------------------------------------------- endpoints


def test_a_send_after_a_failed_handshake_raises_instead_of_blocking():
    """A DEALER whose handshake failed may have no connection left, and a plain send on it
    can then block for ever (seen once, intermittently, in the test below). Sends after a
    failed handshake end with the handshake's EncryptionError (from send, which waits at
    most WIRE_SEND_TIMEOUT_S and watches the handshake, or from recv)."""
    keys = generate_keys()
    with Endpoint.listen(token=TOKEN, server_keys=keys, watch_handshakes=True) as server, \
            Endpoint.connect(server.address, token=TOKEN, watch_handshakes=True) as plain:
        deadline = time.monotonic() + 10
        while not server.check_handshakes() and time.monotonic() < deadline:
            time.sleep(0.05)  # until the server saw the handshake fail
        t0 = time.monotonic()
        with pytest.raises(EncryptionError, match="requires CurveZMQ encryption"):
            for _ in range(3):
                plain.send("let me in")
                plain.recv(timeout=5)
        assert time.monotonic() - t0 < 10


def test_a_plaintext_client_of_an_encrypting_server_is_refused_on_both_sides():
    keys = generate_keys()
    with Endpoint.listen(token=TOKEN, server_keys=keys, watch_handshakes=True) as server, \
            Endpoint.connect(server.address, token=TOKEN, watch_handshakes=True) as plain:
        t0 = time.monotonic()
        with pytest.raises(EncryptionError, match="requires CurveZMQ encryption") as err:
            plain.send("let me in")  # raises already if the handshake failed before it
            plain.recv(timeout=30)
        assert time.monotonic() - t0 < 10  # told by the handshake, not by a timeout
        assert "--server-key" in str(err.value) and isinstance(err.value, TokenError)
        deadline = time.monotonic() + 10
        while not (server.refused_handshakes["plaintext_peer"]
                   or server.refused_handshakes["unclear"]):
            assert time.monotonic() < deadline, dict(server.refused_handshakes)
            server.check_handshakes()
            time.sleep(0.05)
        assert sum(server.dropped.values()) == 0  # nothing reached the message layer


def test_an_encrypting_client_of_a_plaintext_server_is_refused_on_both_sides():
    with Endpoint.listen(token=TOKEN, watch_handshakes=True) as server, \
            Endpoint.connect(server.address, token=TOKEN, server_key=generate_keys().public,
                             watch_handshakes=True) as client:
        client.send("hello")
        with pytest.raises(EncryptionError, match="does not use (CurveZMQ )?encryption"):
            client.recv(timeout=30)
        deadline = time.monotonic() + 10
        while not (server.refused_handshakes["encrypted_peer"]
                   or server.refused_handshakes["unclear"]):
            assert time.monotonic() < deadline, dict(server.refused_handshakes)
            server.check_handshakes()
            time.sleep(0.05)


@pytest.mark.parametrize("encrypted", [False, True])
def test_the_bytes_on_the_wire_hold_the_plaintext_only_without_encryption(encrypted):
    """The same messages through a recording proxy: the marker is on the wire in plain
    text, and nowhere on it with encryption (the check can fail: it does without)."""
    keys = generate_keys()
    server = Endpoint.listen(token=TOKEN, server_keys=keys if encrypted else None)
    proxy = RecordingProxy(("127.0.0.1", _port(server.address)))
    client = Endpoint.connect(f"tcp://127.0.0.1:{proxy.port}", token=TOKEN,
                              server_key=keys.public if encrypted else None,
                              watch_handshakes=True)
    try:
        client.send({"secret": MARKER, "array": np.frombuffer(MARKER.encode() * 8192,
                                                              dtype=np.uint8)})
        msg = server.recv(timeout=30)
        assert msg.value["secret"] == MARKER
        server.send(f"reply {MARKER}", to=msg.peer)
        assert client.recv(timeout=30).value == f"reply {MARKER}"
    finally:
        client.close()
        proxy.close()
        server.close()
    assert len(proxy.seen) > 8192 * len(MARKER)  # everything went through the proxy
    assert (MARKER.encode() in proxy.seen) is not encrypted


# --------------------------------------------------------------------------- a cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, _leaves_nothing_behind):
    """An encrypted head (1 CPU, the marker resource) and an encrypted node (1 CPU), the
    driver of this process connected to them with ``address="auto"``."""
    tmp = tmp_path_factory.mktemp("encrypted")
    info = {"tmp": tmp}
    with cluster_env(tmp, 5):
        keygen = cli("keygen", str(tmp / "keys"))
        assert keygen.returncode == 0, keygen.stderr
        with open(tmp / "keys" / "repartir.key") as f:
            info["key"] = [ln.split('"')[1] for ln in f if "public-key" in ln][0]
        head = cli("start", "--head", "--port", "0", "--num-cpus", "1", "--encrypt",
                   "--key-file", str(tmp / "keys" / "repartir.key_secret"),
                   "--resources", json.dumps({MARKER: 1}), "--object-store-memory", STORE)
        assert head.returncode == 0, head.stderr
        info["head_out"] = head.stdout
        info["address"] = address = recorded()[0]["address"]
        node = cli("start", "--address", address, "--num-cpus", "1", "--server-key",
                   info["key"], "--object-store-memory", STORE,
                   "--resources", json.dumps({"joined": 1}))
        assert node.returncode == 0, node.stderr
        info["pids"] = [r["pid"] for r in recorded()]
        repartir.init(address="auto")
        yield info


@pytest.mark.parametrize("args, words", [
    (["--address", "127.0.0.1:1", "--encrypt"], "needs the head's public key: --server-key"),
    (["--head", "--server-key", "x" * 40], "--server-key is for a node joining"),
    (["--head", "--key-file", "k.key_secret"], "add --encrypt"),
    (["--head", "--encrypt", "--key-file", "missing.key_secret"], "repartir keygen"),
    (["--address", "127.0.0.1:1", "--server-key", "nonsense"], "40-character Z85"),
    (["--address", "127.0.0.1:1", "--key-file", "k"], "--key-file is for the head"),
])
def test_encryption_options_misused_are_refused_before_anything_starts(tmp_path, args, words):
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPARTIR_")}
    env.update(REPARTIR_CLUSTER_DIR=str(tmp_path / "state"),
               REPARTIR_TOKEN_FILE=str(tmp_path / "token"))
    r = subprocess.run([sys.executable, "-m", "repartir", "start", *args], capture_output=True,
                       text=True, timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 1 and words in r.stderr, r.stderr
    assert not (tmp_path / "state" / "processes.json").exists()


def head_log(cluster) -> str:
    logs = [p.read_text() for p in (cluster["tmp"] / "state").iterdir()
            if p.name.endswith(".log")]
    return "".join(t for t in logs if "(head)" in t)


@repartir.remote
def where(x):
    return repartir.get_runtime_context().get_node_id(), x


@repartir.remote
def ones(n):
    return np.ones(n, dtype=np.float64)


@repartir.remote
def total(a):
    return repartir.get_runtime_context().get_node_id(), float(a.sum())


def test_a_node_pulls_from_another_over_an_encrypted_connection(cluster):
    """An 8 MiB result kept on the head, taken by a task on the joined node: the joined node
    pulls it straight from the head with the head's CurveZMQ key from the registry."""
    made = ones.options(resources={MARKER: 1}).remote(1 << 20)
    node, value = repartir.get(total.options(resources={"joined": 1}).remote(made), timeout=60)
    joined = [n["NodeID"] for n in repartir.nodes() if n["Alive"] and "joined" in n["Resources"]]
    assert [node] == joined and value == float(1 << 20)


def test_start_prints_what_to_copy(cluster):
    out = cluster["head_out"]
    assert f"repartir start --address {cluster['address']} --server-key '{cluster['key']}'" \
        in out
    assert f"REPARTIR_SERVER_KEY='{cluster['key']}'" in out
    assert os.environ["REPARTIR_TOKEN_FILE"] in out
    assert "repartir.key_secret" in out and "Encryption (CurveZMQ) is on" in out


def test_an_encrypted_cluster_runs_tasks_on_both_nodes(cluster):
    live = [n for n in repartir.nodes() if n["Alive"]]
    assert len(live) == 2
    out = repartir.get([where.remote(i) for i in range(8)], timeout=60)
    assert [x for _, x in out] == list(range(8))
    assert {nid for nid, _ in out} == {n["NodeID"] for n in live}
    a = np.arange(1 << 20, dtype=np.float64)  # 8 MiB: kept on its node, pulled in chunks
    assert np.array_equal(repartir.get(repartir.remote(lambda x: x).remote(a), timeout=60), a)


def test_a_plaintext_node_is_refused_on_both_sides(cluster):
    r = cli("start", "--address", cluster["address"], "--num-cpus", "1")
    assert r.returncode == 1
    assert "requires CurveZMQ encryption" in r.stderr and "--server-key" in r.stderr
    deadline = time.monotonic() + 15
    while "does not use CurveZMQ encryption, which this cluster requires" \
            not in head_log(cluster):
        assert time.monotonic() < deadline, head_log(cluster)
        time.sleep(0.1)
    assert len([n for n in repartir.nodes() if n["Alive"]]) == 2


def test_a_plaintext_driver_is_refused_and_a_driver_with_the_key_connects(cluster):
    """Drivers on another machine: no key recorded there (another state directory)."""
    env = dict(os.environ, REPARTIR_CLUSTER_DIR=str(cluster["tmp"] / "elsewhere"))
    code = ("import repartir, sys\n"
            "try:\n"
            f"    repartir.init(address={cluster['address']!r})\n"
            "except repartir.errors.EncryptionError as e:\n"
            "    print('EncryptionError:', e); sys.exit(3)\n"
            "print(repartir.get(repartir.remote(lambda: 42).remote(), timeout=60))\n")
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=90)
    assert plain.returncode == 3, plain.stdout + plain.stderr
    assert "requires CurveZMQ encryption" in plain.stdout
    keyed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=90, env=dict(env, REPARTIR_SERVER_KEY=cluster["key"]))
    assert keyed.returncode == 0 and keyed.stdout.strip() == "42", keyed.stderr


def test_the_registry_crosses_the_wire_encrypted(cluster):
    """``repartir status`` through a recording proxy: the marker resource is in its output
    (decrypted) and not in the bytes that crossed the proxy."""
    proxy = RecordingProxy(("127.0.0.1", _port(cluster["address"])))
    try:
        env = dict(os.environ, REPARTIR_SERVER_KEY=cluster["key"])
        r = cli("status", "--address", f"127.0.0.1:{proxy.port}", env=env)
    finally:
        proxy.close()
    assert r.returncode == 0, r.stderr
    assert f"{MARKER}=1" in r.stdout and "2 node(s) alive" in r.stdout
    assert len(proxy.seen) > 1000 and MARKER.encode() not in proxy.seen


@repartir.remote
def gated(i, gate):
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return repartir.get_runtime_context().get_node_id(), i


def test_a_node_steals_over_an_encrypted_connection(cluster, tmp_path):
    """A third node joins while the two others have queues: it connects to them with the
    keys of the registry and steals (node-to-node, encrypted).  The tasks wait for a gate
    file the test makes once the driver knows a steal happened, so that a slow start of
    the third node cannot let the others finish them all first."""
    gate = str(tmp_path / "gate")
    refs = [gated.remote(i, gate) for i in range(24)]
    try:
        r = cli("start", "--address", cluster["address"], "--num-cpus", "1", "--server-key",
                cluster["key"], "--object-store-memory", STORE)
        assert r.returncode == 0, r.stderr
        third = recorded()[-1]
        deadline = time.monotonic() + 60
        while not (third_id := [n["NodeID"] for n in repartir.nodes()
                                if n["NodeManagerPort"] == _port(third["address"])]):
            assert time.monotonic() < deadline, "the third node never showed in the registry"
            time.sleep(0.05)
        third_id = third_id[0]
        client = repartir.cluster.client.active()
        deadline = time.monotonic() + 60
        while True:
            with client._lock:
                if any(t.node == third_id for t in client.inflight.values()):
                    break
            assert time.monotonic() < deadline, "the third node stole nothing"
            time.sleep(0.05)
    finally:  # whatever happened, the gated tasks end: the next tests need the CPUs
        open(gate, "w").close()
    out = repartir.get(refs, timeout=120)
    assert [i for _, i in out] == list(range(24))
    assert third_id in {nid for nid, _ in out}


@repartir.remote(resources={MARKER: 1})
def _from_the_head_to_the_other_node():
    far = repartir.remote(lambda: repartir.get_runtime_context().get_node_id())
    return repartir.get(far.options(resources={"joined": 1}).remote(), timeout=60)


def test_a_task_reaches_another_node_over_encrypted_connections(cluster):
    """A worker's own connection to the cluster (docs/cluster.md, "Tasks and actors that
    submit work") takes the head's key from its daemon."""
    joined = [n["NodeID"] for n in repartir.nodes() if n["Alive"] and "joined" in n["Resources"]]
    assert repartir.get(_from_the_head_to_the_other_node.remote(), timeout=90) == joined[0]
