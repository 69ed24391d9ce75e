"""A driver's tasks of several returns and generators end with it (docs/cluster.md,
"Failures"; repartir/cluster/leases.py and node_returns.py): a driver that says goodbye
(``repartir.shutdown()``), or is killed and taken for gone once its lease at the head
lapses, has its running task of two returns and its running generator cancelled on every
node that runs them: they stop writing (and yielding) at once, or within the node timeout
and a heartbeat or two, and their CPUs run the next driver's tasks.

A head (1 CPU, ``on_head: 1``) and a node (1 CPU, ``big_mem: 1``) started with the CLI,
``REPARTIR_NODE_TIMEOUT=4``; the driver under test is a process of its own, whose two tasks
each append a line (the time) to a file every 0.1 s.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import repartir
from repartir.config import CLUSTER_HEARTBEAT_S
from repartir.errors import NodeDiedError
from rtsupport import wait_until
from test_cluster import cluster_env, start_head_and_node

STORE = str(128 << 20)
NODE_TIMEOUT = 4.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, _leaves_nothing_behind):
    tmp = tmp_path_factory.mktemp("goodbye_returns")
    with cluster_env(tmp, NODE_TIMEOUT):
        info = start_head_and_node(STORE)
        yield {"tmp": tmp, "address": info["address"], "head_pid": info["pids"][0],
               "node_pid": info["pids"][1]}


@repartir.remote
def node_id():
    return repartir.get_runtime_context().get_node_id()


@repartir.remote(num_returns=2)
def pair(path):
    for _ in range(600):
        with open(path, "a") as f:
            f.write(f"{time.time()}\n")
        time.sleep(0.1)
    return 1, 2


@repartir.remote
def gen(path):
    for i in range(600):
        with open(path, "a") as f:
            f.write(f"{time.time()}\n")
        yield i
        time.sleep(0.1)


# A driver that runs a task of two returns and a generator, each on the node with the
# resource named, each appending the time to its file every 0.1 s for up to 60 s, and one more
# of each queued behind them (those nodes have one CPU); prints READY and its driver id once
# the first two have started, then waits for a line on stdin and shuts down (or is killed
# meanwhile).
DRIVER = """
    import os, sys, time
    import repartir
    from repartir.cluster import client as cluster_client
    repartir.init(address={address!r})

    @repartir.remote(num_returns=2, resources={{{pair_on!r}: 1}})
    def pair(path):
        for _ in range(600):
            with open(path, "a") as f:
                f.write(f"{{time.time()}}\\n")
            time.sleep(0.1)
        return 1, 2

    @repartir.remote(resources={{{gen_on!r}: 1}})
    def gen(path):
        for i in range(600):
            with open(path, "a") as f:
                f.write(f"{{time.time()}}\\n")
            yield i
            time.sleep(0.1)

    a, b = pair.remote({pair_file!r})
    items = gen.remote({gen_file!r})
    queued = [pair.remote({pair_file!r} + ".queued"), gen.remote({gen_file!r} + ".queued")]
    deadline = time.monotonic() + 60
    while not (os.path.exists({pair_file!r}) and os.path.exists({gen_file!r})):
        assert time.monotonic() < deadline, "the tasks did not start"
        time.sleep(0.05)
    print("READY", cluster_client.active()._driver_id.hex(), flush=True)
    sys.stdin.readline()
    repartir.shutdown()
    print("DOWN", flush=True)
    time.sleep(60)
"""


def _last_write(path) -> float:
    """The time (``time.time()``) of the last line the task wrote to ``path``."""
    lines = path.read_text().split()
    return float(lines[-1]) if lines else 0.0


def _stopped(path, quiet: float = 1.0) -> bool:
    """Whether the task writing ``path`` has written nothing for ``quiet`` seconds (it
    writes every 0.1 s while it runs)."""
    return time.time() - _last_write(path) > quiet


def _driver(cluster, tmp, pair_on: str, gen_on: str) -> tuple[subprocess.Popen, list, str]:
    """The driver process, the files of its two running tasks, its driver id (hex)."""
    files = [tmp / "pair.log", tmp / "gen.log"]
    code = textwrap.dedent(DRIVER.format(address=cluster["address"], pair_on=pair_on,
                                         gen_on=gen_on, pair_file=str(files[0]),
                                         gen_file=str(files[1])))
    d = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    ready, driver_id = d.stdout.readline().split()
    assert ready == "READY"
    # both run: each has written twice at least
    assert wait_until(lambda: all(len(p.read_text().split()) >= 2 for p in files), 30)
    return d, files, driver_id


def _cpus_free(files: list) -> None:
    """The next driver's tasks (this process's) run on both nodes, whose one CPU each the
    stopped tasks held; the tasks that were queued behind those never ran."""
    refs = [node_id.options(resources={r: 1}).remote() for r in ("big_mem", "on_head")]
    assert len(set(repartir.get(refs, timeout=20))) == 2
    assert not [p for p in files if p.with_name(p.name + ".queued").exists()]


def test_a_driver_that_says_goodbye_stops_its_returns_and_generators(cluster, tmp_path):
    """repartir.shutdown(): the running task of two returns (on the node) and the generator
    (on the head) are cancelled at once, not after the node timeout."""
    d, files, _ = _driver(cluster, tmp_path, pair_on="big_mem", gen_on="on_head")
    try:
        t0 = time.time()
        d.stdin.write("\n")
        d.stdin.flush()
        assert d.stdout.readline().strip() == "DOWN"
        assert wait_until(lambda: all(_stopped(p) for p in files), 4 * NODE_TIMEOUT), \
            [time.time() - _last_write(p) for p in files]
        took = [_last_write(p) - t0 for p in files]
        assert max(took) < NODE_TIMEOUT - 1, took  # the goodbye, not the lease
        _cpus_free(files)
    finally:
        d.kill()
        d.wait(30)


def test_a_killed_driver_returns_and_generators_stop_when_it_is_taken_for_gone(
        cluster, tmp_path):
    """SIGKILL: once the head's lists leave the driver out (about the node timeout after its
    last registry request), the nodes cancel its running task of two returns (on the head)
    and its generator (on the node)."""
    d, files, driver_id = _driver(cluster, tmp_path, pair_on="on_head", gen_on="big_mem")
    try:
        d.kill()
        d.wait(30)
        t_kill = time.time()
        assert wait_until(lambda: all(_stopped(p) for p in files), 4 * NODE_TIMEOUT + 10), \
            [time.time() - _last_write(p) for p in files]
        took = [_last_write(p) - t_kill for p in files]
        assert max(took) < NODE_TIMEOUT + 3 * CLUSTER_HEARTBEAT_S + 1, took
        _cpus_free(files)
    finally:
        d.kill()
        d.wait(30)
    # each node cancelled its running task and the one queued behind it in its runtime
    logs = [p.read_text() for p in (cluster["tmp"] / "state").glob("node-*.log")]
    lines = [ln for t in logs for ln in t.splitlines() if f"driver {driver_id[:12]}" in ln]
    counts = [re.search(r"(\d+) queued task\(s\), cancelled (\d+) running", ln) for ln in lines]
    assert len(lines) == 2 and all(c and int(c[1]) + int(c[2]) == 2 for c in counts), lines


# A driver whose task of two returns and generator take, on the node (``big_mem``), an
# 8 MiB result kept on the head's node: it keeps that result, prints KEPT, waits for a
# line (the head is frozen then), submits both and shuts down at once, then prints DOWN.
PULLING = """
    import sys, time
    import numpy as np
    import repartir
    repartir.init(address={address!r})

    @repartir.remote(num_returns=2)
    def pair(x, path):
        for _ in range(600):
            with open(path, "a") as f:
                f.write(f"{{time.time()}}\\n")
            time.sleep(0.1)
        return 1, 2

    @repartir.remote
    def gen(x, path):
        for i in range(600):
            with open(path, "a") as f:
                f.write(f"{{time.time()}}\\n")
            yield i
            time.sleep(0.1)

    make = repartir.remote(lambda: np.ones(1 << 20))
    big = make.options(resources={{"on_head": 1}}).remote()
    assert repartir.wait([big], timeout=60)[0]
    print("KEPT", flush=True)
    sys.stdin.readline()
    opts = {{"resources": {{"big_mem": 0.4}}, "num_cpus": 0.5}}
    a, b = pair.options(**opts).remote(big, {pair_file!r})
    items = gen.options(**opts).remote(big, {gen_file!r})
    repartir.shutdown()  # sends both tasks first, then the goodbye
    print("DOWN", flush=True)
    time.sleep(60)
"""


@repartir.remote
class Pinger:
    def ping(self):
        return repartir.get_runtime_context().get_node_id()


def test_tasks_still_pulling_their_arguments_never_start_after_a_goodbye(cluster, tmp_path):
    """A task of two returns and a generator that reach the node while the argument they
    take from another node (the head's, frozen) is still being pulled, and whose driver
    says goodbye then, never start once the pull ends; the node's CPU is free."""
    files = [tmp_path / "pair.log", tmp_path / "gen.log"]
    pinger = Pinger.options(resources={"big_mem": 0.01}, num_cpus=0).remote()
    node = repartir.get(pinger.ping.remote(), timeout=30)
    code = textwrap.dedent(PULLING.format(address=cluster["address"],
                                          pair_file=str(files[0]), gen_file=str(files[1])))
    d = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert d.stdout.readline().strip() == "KEPT"
        os.kill(cluster["head_pid"], signal.SIGSTOP)
        try:
            d.stdin.write("\n")
            d.stdin.flush()
            assert d.stdout.readline().strip() == "DOWN"
            # the node's loop took a message sent after the goodbye left: the goodbye too
            assert repartir.get(pinger.ping.remote(), timeout=30) == node
            # the next driver's task, sent while the two still wait for their pull (behind
            # them, when the node's capacity is two tasks)
            ref = node_id.options(resources={"big_mem": 0.5}).remote()
        finally:
            os.kill(cluster["head_pid"], signal.SIGCONT)
        # the pull ends now, and the next driver's task runs on the node's one CPU ...
        assert repartir.get(ref, timeout=20) == node
        assert not [p for p in files if p.exists()]  # ... and the two tasks never started
    finally:
        d.kill()
        d.wait(30)
        repartir.kill(pinger)


def test_a_node_declared_dead_stops_its_returns_and_generators_when_it_comes_back(
        cluster, tmp_path):
    """A node frozen (SIGSTOP) past the node timeout, while it runs a task of two returns
    and a generator of this driver (its workers run on), is declared dead: their refs fail
    (no retry left).  Thawed, it hears from the head that it was declared dead and cancels
    them, as it cancels its single-return tasks.  (The last test: the node is a new
    incarnation afterwards.)"""
    files = [tmp_path / "pair.log", tmp_path / "gen.log"]
    opts = {"resources": {"big_mem": 0.5}, "num_cpus": 0.5, "max_retries": 0}
    a, _ = pair.options(**opts).remote(str(files[0]))
    items = gen.options(**opts).remote(str(files[1]))
    assert wait_until(lambda: all(p.exists() and len(p.read_text().split()) >= 2
                                  for p in files), 30)
    os.kill(cluster["node_pid"], signal.SIGSTOP)
    try:
        with pytest.raises(NodeDiedError):
            repartir.get(a, timeout=4 * NODE_TIMEOUT)
        assert not _stopped(files[0]) and not _stopped(files[1])  # its workers run on
    finally:
        os.kill(cluster["node_pid"], signal.SIGCONT)
    t_thawed = time.time()
    assert wait_until(lambda: all(_stopped(p) for p in files), 4 * NODE_TIMEOUT), \
        [time.time() - _last_write(p) for p in files]
    took = [_last_write(p) - t_thawed for p in files]
    assert max(took) < 3 * CLUSTER_HEARTBEAT_S + 1, took
    refs = list(items)  # it ended, with the error of its node's death last
    with pytest.raises(NodeDiedError):
        repartir.get(refs[-1], timeout=30)
    assert wait_until(lambda: any(n["Alive"] and "big_mem" in n["Resources"]
                                  for n in repartir.nodes()), 20)
    _cpus_free([])
