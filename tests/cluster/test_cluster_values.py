"""A connected driver's values behave as in local mode and in Ray (docs/cluster.md,
"Values: copies, as locally"), its bad input gets clear errors ("Connect a driver", the
CLI), and one bad message from one node fails only that node's tasks.

A head (1 CPU, ``on_head: 1``) and a node (1 CPU, ``big_mem: 1``) on loopback, started with
the CLI (the fixtures of test_cluster.py: at the end every daemon is stopped and checked
gone, /dev/shm swept).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import repartir
from repartir.cluster import client as cluster_client
from repartir.cluster.wire import _Mac
from repartir.errors import (AlreadyInitializedError, RepartirError, SerializationError,
                             TaskError)
from test_cluster import STORE, cli, cluster_env, recorded, start_head_and_node

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, _leaves_nothing_behind):
    tmp = tmp_path_factory.mktemp("values")
    with cluster_env(tmp, 3.0):
        info = start_head_and_node(STORE)
        yield {"address": info["address"]}


@repartir.remote
def first(a):
    return float(a[0])


@repartir.remote
def make_list():
    return [1, 2, 3]


@repartir.remote
def ident(a):
    return a


@repartir.remote
def nap(s, x):
    time.sleep(s)
    return x


@repartir.remote
class Holder:
    def first(self, a):
        return float(a[0])


@repartir.remote
class Box:
    def __init__(self, x):
        self.x = x


def test_argument_is_captured_at_remote(cluster):
    """Finding: a numpy argument of 64 KiB or more was sent as a view, so a change made
    after .remote() reached the task (Ray and local mode give the value at .remote())."""
    for n in (1 << 14, 1 << 20):  # 128 KiB, 8 MiB
        x = np.zeros(n)
        r = first.remote(x)
        x[0] = 99.0
        assert repartir.get(r, timeout=60) == 0.0
    h = Holder.remote()
    x = np.zeros(1 << 16)
    r = h.first.remote(x)
    x[0] = 7.0
    assert repartir.get(r, timeout=60) == 0.0


def test_put_copies_at_once(cluster):
    """put() kept a reference: a later change showed, and an unpicklable value was taken."""
    value = [1, 2, 3]
    ref = repartir.put(value)
    value.append(4)
    got = repartir.get(ref)
    assert got == [1, 2, 3]
    got.append(5)
    again = repartir.get(ref)
    assert again == [1, 2, 3] and again is not got
    assert repartir.get(ident.remote(ref), timeout=60) == [1, 2, 3]
    arr = np.arange(100_000.0)
    ref = repartir.put(arr)
    arr[0] = -1.0
    assert repartir.get(ref)[0] == 0.0
    with pytest.raises(SerializationError, match=r"the value passed to put\(\) cannot be "
                                                 r"serialized"):
        repartir.put(threading.Lock())
    inner, holder = ident.remote(5), Holder.remote()  # handles inside stay themselves
    got = repartir.get(repartir.put([inner, {"h": holder}]))
    assert got[0] is inner and got[1]["h"] is holder
    assert repartir.get(got[0], timeout=60) == 5
    assert repartir.get(got[1]["h"].first.remote([3.0]), timeout=60) == 3.0


def test_each_get_gives_a_fresh_copy(cluster):
    """A small result was one shared object: a change to what get returned showed in the
    next get and in a task taking the ref."""
    r = make_list.remote()
    x = repartir.get(r, timeout=60)
    x.append(4)
    assert repartir.get(r) == [1, 2, 3]
    assert repartir.get(ident.remote(r), timeout=60) == [1, 2, 3]
    arr = repartir.get(ident.remote(np.ones(10)), timeout=60)
    assert not arr.flags.writeable  # read-only, as a local get gives
    with pytest.raises(ValueError):
        arr[0] = 2.0
    assert repartir.get(ident.remote(12345678901), timeout=60) == 12345678901


def test_unpicklable_names_function_and_argument(cluster):
    lock = threading.Lock()
    with pytest.raises(SerializationError, match=r"remote function .*lambda.* cannot be "
                                                 r"serialized"):
        repartir.remote(lambda: lock.locked()).remote()
    with pytest.raises(SerializationError, match=r"argument 1 of nap\(\) \(lock\) cannot be "
                                                 r"serialized"):
        nap.remote(0, threading.Lock())
    with pytest.raises(SerializationError, match=r"keyword argument 'x' of nap\(\)"):
        nap.remote(0, x=(i for i in range(3)))
    with pytest.raises(SerializationError, match=r"argument 0 of Holder.first\(\) \(lock\)"):
        Holder.remote().first.remote(threading.Lock())
    with pytest.raises(SerializationError, match=r"argument 0 of Box.__init__\(\)"):
        Box.remote(threading.Lock())


def _bomb():
    class Bomb:  # defined in a function: pickled by value, so the node has the class
        """Pickles, but raises when unpickled (where the task's node reads its arguments)."""

        def __init__(self):
            self.x = 1  # a state, so that unpickling calls __setstate__

        def __setstate__(self, state):
            raise RuntimeError("cannot unpickle a Bomb")

    return Bomb()


@pytest.mark.parametrize("how", ["argument", "nested", "keyword"])
def test_an_argument_that_does_not_unpickle_on_the_node_is_a_task_error(cluster, how):
    """As on a local node, the task fails with a TaskError naming it and the unpickling's
    traceback, which is also the original type (a bare RuntimeError before)."""
    ref = {"argument": lambda: nap.remote(0, _bomb()),
           "nested": lambda: nap.remote(0, [1, _bomb()]),
           "keyword": lambda: nap.remote(0, x=_bomb())}[how]()
    with pytest.raises(TaskError, match=r"task nap raised builtins.RuntimeError: cannot "
                                        r"unpickle a Bomb") as err:
        repartir.get(ref, timeout=60)
    assert isinstance(err.value, RuntimeError) and "__setstate__" in err.value.traceback_str
    assert repartir.get(nap.remote(0, 7), timeout=60) == 7  # the node goes on


def test_second_init_while_connected_raises(cluster):
    """A second init() without an address started a local node instead of raising."""
    with pytest.raises(AlreadyInitializedError):
        repartir.init()
    with pytest.raises(AlreadyInitializedError):
        repartir.init(address=cluster["address"])
    assert cluster_client.active() is not None
    assert repartir.get(ident.remote(3), timeout=60) == 3


def test_a_refused_message_fails_only_that_nodes_tasks(cluster):
    """One message a node refused (its MAC did not verify) failed every task of the
    driver, on every node, as 'the cluster client failed'."""
    client = cluster_client.active()
    far = nap.options(resources={"on_head": 1}).remote(1.5, "far")
    time.sleep(0.3)  # sent
    with client._lock:
        node = next(n for n, r in client.nodes_seen.items()
                    if r["Alive"] and "big_mem" in r["Resources"])
        ep = client._eps[node]
        good = ep._signer._mac
        ep._signer._mac = _Mac(b"not the cluster token at all")
    try:
        near = nap.options(resources={"big_mem": 1}).remote(0, "near")
        with pytest.raises(RepartirError, match="could not take a message of this driver"):
            repartir.get(near, timeout=30)
    finally:
        ep._signer._mac = good
    assert repartir.get(far, timeout=30) == "far"
    again = nap.options(resources={"big_mem": 1}).remote(0, "again")
    assert repartir.get(again, timeout=30) == "again"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_address_checks(tmp_path, _leaves_nothing_behind):
    with cluster_env(tmp_path, 3.0):
        for bad in ("http://127.0.0.1:7400", "ray://127.0.0.1:10001"):
            with pytest.raises(ValueError, match=r"speaks no (http|ray)://"):
                repartir.init(address=bad)
        port = _free_port()
        t0 = time.monotonic()
        with pytest.raises(RepartirError, match="nothing listens .* refused"):
            repartir.init(address=f"127.0.0.1:{port}")
        assert time.monotonic() - t0 < 10
        t0 = time.monotonic()
        out = cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", timeout=60)
        assert out.returncode == 1 and "nothing listens" in out.stderr, out.stderr
        assert time.monotonic() - t0 < 20
        out = cli("status", "--address", f"127.0.0.1:{port}", timeout=60)
        assert out.returncode == 1 and "nothing listens" in out.stderr, out.stderr
        # a service that accepts and closes: not blamed on encryption alone
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        stop = threading.Event()

        def serve():
            srv.settimeout(0.1)
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except OSError:
                    continue
                conn.close()

        th = threading.Thread(target=serve, daemon=True)
        th.start()
        try:
            with pytest.raises(RepartirError, match="may not be a repartir head"):
                repartir.init(address=f"127.0.0.1:{srv.getsockname()[1]}")
        finally:
            stop.set()
            th.join(5)
            srv.close()
        assert not repartir.is_initialized()


def test_cli_checks(tmp_path, _leaves_nothing_behind):
    with cluster_env(tmp_path, 3.0):
        out = cli("start", "--head", "--port", "70000")
        assert out.returncode == 2 and "0 (take a free one) to 65535" in out.stderr
        out = cli("start", "--head", "--port", "-1")
        assert out.returncode == 2 and "65535" in out.stderr
        out = cli("start", "--head", "--resources", "{bad")
        assert out.returncode == 1 and "--resources is not valid JSON" in out.stderr
        out = cli("start", "--head", "--resources", '{"x": "lots"}')
        assert out.returncode == 1 and "--resources: the amount of 'x'" in out.stderr
        assert not recorded_or_empty()
        out = cli("--help")
        assert out.returncode == 0
        for command in ("start", "stop", "status", "token", "keygen", "version"):
            assert command in out.stdout
        out = cli("status", "--help")
        assert out.returncode == 0 and "--address" in out.stdout


def test_a_reader_that_goes_away_gets_no_traceback(tmp_path, _leaves_nothing_behind):
    """``repartir start --head | head -1``: the reader of the command's output is gone before
    it prints. The head starts and is recorded, and the command exits 1 without a
    traceback (it raised BrokenPipeError before)."""
    with cluster_env(tmp_path, 3.0):
        p = subprocess.Popen([sys.executable, "-m", "repartir", "start", "--head", "--port",
                              "0", "--num-cpus", "1"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        p.stdout.close()
        err = p.stderr.read()
        p.wait(90)
        p.stderr.close()
        assert p.returncode == 1 and "Traceback" not in err, err
        assert [r["role"] for r in recorded()] == ["head"]
        assert cli("status").returncode == 0


def recorded_or_empty() -> list:
    try:
        return recorded()
    except OSError:
        return []
