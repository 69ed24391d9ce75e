"""Cluster chaos: a node cut off and a node killed while a driver streams tasks; every result
must arrive, or fail with a clear error, and nothing may hang or be left behind.

::

    python stress/cluster_chaos.py --netns      # three network-namespace hosts (root, iproute2)
    python stress/cluster_chaos.py --loopback   # three daemons on 127.0.0.1
    python stress/cluster_chaos.py --netns --duration 60 --node-timeout 3

::

    host A                      host B                   host C
    ┌───────────────────────┐   ┌──────────────────┐    ┌──────────────────┐
    │ head (1 CPU)          │   │ node (1 CPU)     │    │ node (1 CPU)     │
    │ driver: --inflight    │   │                  │    │                  │
    │ tasks outstanding     │   │ at 25 %: link    │    │ at 60 %: SIGKILL │
    │ (small, kept, chained,│   │ down for         │    │ of its daemon    │
    │ fragile), each result │   │ node timeout + 2 │    │                  │
    │ checked               │   │ s, then up       │    │                  │
    └───────────────────────┘   └──────────────────┘    └──────────────────┘

The driver keeps ``--inflight`` tasks outstanding for ``--duration`` seconds, of four kinds,
each result known in advance (a function of the task's number): ``small`` (a value that comes
back with its completion), ``kept`` (a 512 KiB array kept on the node that made it; the
latest ones are held and read again at the end, after the chaos, so some must be rebuilt from
lineage), ``chained`` (a task on a ``kept`` result whose ref is dropped at once: a lost
argument is rebuilt before the task runs again) -- all three with ``max_retries=5`` -- and
``fragile`` (a ``kept`` task with ``max_retries=0``).

In the middle of the run, host B's link goes down for ``--node-timeout`` + 2 s (with
``--loopback``, B's daemon is frozen with SIGSTOP instead, then thawed with SIGCONT: no
heartbeat, no answer, its connections open, as when a cable is pulled); the head declares it
dead, the driver resubmits its tasks and rebuilds what it kept; when it is back it joins
again as a new incarnation and gets tasks again.  Later node C's daemon is SIGKILLed.

The run fails (exit status 1) on any of:

* a wrong value; a ``small``, ``kept`` or ``chained`` task that does not come back right
  (they have retries to spare); a ``fragile`` one that fails with anything but
  ``NodeDiedError`` or ``ObjectLostError``;
* a result not back by the deadline (``--duration`` + 60 s), a driver that does not exit, a
  driver ``shutdown()`` that takes over 5 s (the streaming driver's at the end, and that of
  a second driver started while B is cut off, which sends tasks, some to B, and shuts
  down);
* B not back in the registry as alive after its link came back; C not declared dead;
* afterwards: a daemon or one of its worker processes still running, shared memory
  (``/dev/shm``) of their sessions left, a network namespace left.

``main()`` returns the exit status; the last line printed is a JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import shutil
import tempfile
import time

import numpy as np
import psutil

import repartir

if __package__ in (None, ""):  # run as a script: the project root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stress import netns  # noqa: E402

BIG = 1 << 16  # float64 elements: 512 KiB, more than CLUSTER_INLINE_RESULT_BYTES
KINDS = ("small", "kept", "chained", "fragile")
CLEAR_ERRORS = ("NodeDiedError", "ObjectLostError")
STORE = str(128 << 20)
SHUTDOWN_LIMIT_S = 5.0


# --------------------------------------------------------------------------- the driver


@repartir.remote
def small(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i * i


@repartir.remote
def kept(i: int, seconds: float) -> np.ndarray:
    time.sleep(seconds)
    return np.full(BIG, float(i))


@repartir.remote
def add_one(a: np.ndarray, seconds: float) -> np.ndarray:
    time.sleep(seconds)
    return a + 1.0


def wrong(kind: str, i: int, value) -> str | None:
    """``None`` when ``value`` is task ``i``'s right result, else what is wrong."""
    if kind == "small":
        return None if value == i * i else f"small {i}: {value!r}"
    want = float(i) + (1.0 if kind == "chained" else 0.0)
    if not isinstance(value, np.ndarray) or value.shape != (BIG,) or not np.all(value == want):
        return f"{kind} {i}: not an array of {BIG} x {want}"
    return None


def drive(address: str, duration: float, inflight: int, seed: int) -> dict:
    """The driver's run (``--driver``): prints ``ready`` when it sees three live nodes, then
    streams tasks; returns the report."""
    rng = random.Random(seed)
    repartir.init(address=address)
    deadline = time.monotonic() + 60
    while sum(n["Alive"] for n in repartir.nodes()) < 3:
        if time.monotonic() > deadline:
            raise SystemExit(f"three nodes never showed up: {repartir.nodes()}")
    print("ready", flush=True)
    counts = {k: {"ok": 0, "clear_error": 0} for k in KINDS}
    problems: list[str] = []
    outstanding: dict = {}
    held: list = []  # (ref, i) of recent kept results, read again at the end
    i = 0
    t0 = time.monotonic()
    end, hard_end = t0 + duration, t0 + duration + 60

    def take(kind: str, n: int, get) -> None:
        try:
            value = get()
        except Exception as exc:  # noqa: BLE001 -- every kind of failure is judged here
            name = type(exc).__name__
            if kind == "fragile" and name in CLEAR_ERRORS:
                counts[kind]["clear_error"] += 1
            else:
                problems.append(f"{kind} {n}: {name}: {exc}")
            return
        bad = wrong(kind, n, value)
        if bad:
            problems.append(bad)
        else:
            counts[kind]["ok"] += 1

    while (time.monotonic() < end or outstanding) and time.monotonic() < hard_end:
        while time.monotonic() < end and len(outstanding) < inflight:
            kind = rng.choice(KINDS)
            seconds = rng.uniform(0.02, 0.2)
            if kind == "small":
                ref = small.options(max_retries=5).remote(i, seconds)
            elif kind == "kept":
                ref = kept.options(max_retries=5).remote(i, seconds)
                held = (held + [(ref, i)])[-20:]
            elif kind == "chained":
                ref = add_one.options(max_retries=5).remote(
                    kept.options(max_retries=5).remote(i, seconds), seconds)
            else:
                ref = kept.options(max_retries=0).remote(i, seconds)
            outstanding[ref] = (kind, i)
            i += 1
        ready, _ = repartir.wait(list(outstanding), num_returns=1, timeout=1.0)
        for ref in ready:
            kind, n = outstanding.pop(ref)
            take(kind, n, lambda ref=ref: repartir.get(ref, timeout=60))
    if outstanding:
        problems.append(f"{len(outstanding)} task(s) not back {duration + 60:g} s after the "
                        f"start: {sorted(set(k for k, _ in outstanding.values()))}")
    for ref, n in held:  # some were kept on the killed node: rebuilt from lineage
        take("kept", n, lambda ref=ref: repartir.get(ref, timeout=10))
    client = repartir.cluster.client.active()
    rebuilt = client._lineage.rebuilt if client is not None else 0
    nodes = repartir.nodes()
    del held, outstanding
    t1 = time.monotonic()
    repartir.shutdown()
    return {"tasks": i, "counts": counts, "problems": problems[:20],
            "n_problems": len(problems), "rebuilt": rebuilt, "nodes": nodes,
            "shutdown_s": time.monotonic() - t1, "elapsed_s": t1 - t0}


#: A second driver, started just after the cut: it sends tasks (some go to the node cut
#: off: the driver does not know yet) and shuts down; prints how long ``shutdown()`` took.
PROBE = """
import sys, time, repartir
repartir.init(address=sys.argv[1])
refs = [repartir.remote(lambda i: i).remote(i) for i in range(6)]
t0 = time.monotonic()
repartir.shutdown()
print(time.monotonic() - t0)
"""


# --------------------------------------------------------------------------- the hosts


class LoopbackHosts:
    """Three "hosts" that are this machine's loopback (``--loopback``): a cut is SIGSTOP."""

    def __init__(self) -> None:
        self.addrs = ["127.0.0.1"] * 3
        self.procs: list[subprocess.Popen] = []

    def run_in(self, which: int, argv: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(argv, **kwargs)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)


class NetnsHosts:
    """Three network-namespace hosts (``--netns``): a cut is the link going down."""

    def __init__(self) -> None:
        self.cluster = netns.Cluster(3)
        self.addrs = [h.addr for h in self.cluster.hosts]

    def run_in(self, which: int, argv: list[str], **kwargs) -> subprocess.Popen:
        return self.cluster.run_in(which, argv, **kwargs)

    def close(self) -> None:
        self.cluster.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_daemon(hosts, which: int, args: list[str], tmp: str, env: dict) -> dict:
    """A node daemon on host ``which``; returns its ready record (address, node_id, pid)."""
    ready = os.path.join(tmp, f"ready-{which}.json")
    log = open(os.path.join(tmp, f"daemon-{which}.log"), "w")
    proc = hosts.run_in(which, [sys.executable, "-m", "repartir.cluster.node",
                                "--bind", hosts.addrs[which], "--num-cpus", "1",
                                "--object-store-memory", STORE, "--ready-file", ready, *args],
                        env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while not os.path.exists(ready):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"daemon {which} did not start: "
                               + open(os.path.join(tmp, f"daemon-{which}.log")).read()[-2000:])
        time.sleep(0.05)
    with open(ready) as f:
        info = json.load(f)
    if "error" in info:
        raise RuntimeError(f"daemon {which} did not start: {info['error']}")
    info["proc"] = proc
    return info


def _descendants(pid: int) -> set[int]:
    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _sessions_of(pids: set[int]) -> set[str]:
    """The runtime sessions (their ids) whose driver is one of ``pids`` (the daemons)."""
    from repartir.config import resolve
    temp = resolve(num_cpus=1, object_store_memory=64 << 20, num_gpus=0).temp_dir
    out = set()
    for name in os.listdir(temp) if os.path.isdir(temp) else []:
        try:
            with open(os.path.join(temp, name, "session.json")) as f:
                if json.load(f)["pid"] in pids:
                    out.add(name[len("session_"):])
        except (OSError, ValueError, KeyError):
            continue
    return out


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def run(mode: str, duration: float, node_timeout: float, inflight: int, seed: int) -> dict:
    """One chaos run (see the module's docstring); returns the report, ``failures`` listing
    what went wrong."""
    from repartir.config import resolve
    from repartir.runtime.session import SHM_PREFIX, sweep_dead_sessions
    failures: list[str] = []
    token = secrets.token_hex(32)
    tmp = tempfile.mkdtemp(prefix="repartir-cluster-chaos-")
    env = dict(os.environ, REPARTIR_TOKEN=token, REPARTIR_NODE_TIMEOUT=str(node_timeout),
               REPARTIR_CLUSTER_DIR=os.path.join(tmp, "state"), PYTHONUNBUFFERED="1")
    env.pop("REPARTIR_ADDRESS", None)
    hosts = NetnsHosts() if mode == "netns" else LoopbackHosts()
    daemons: list[dict] = []
    report: dict = {"mode": mode, "duration_s": duration, "node_timeout_s": node_timeout}
    workers: set[int] = set()
    sessions: set[str] = set()
    try:
        port = 6380 if mode == "netns" else _free_port()
        daemons.append(_start_daemon(hosts, 0, ["--head", "--port", str(port)], tmp, env))
        head = daemons[0]["address"]
        for which in (1, 2):
            daemons.append(_start_daemon(hosts, which, ["--address", head], tmp, env))
        pids = {d["pid"] for d in daemons}
        driver = hosts.run_in(0, [sys.executable, os.path.abspath(__file__), "--driver", head,
                                  "--duration", str(duration), "--inflight", str(inflight),
                                  "--seed", str(seed)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
        line = driver.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the driver did not start: {line}{driver.stderr.read()}")
        t0 = time.monotonic()
        for d in daemons:
            workers |= _descendants(d["pid"])
        sessions = _sessions_of(pids)
        cut, killed = daemons[1], daemons[2]
        time.sleep(max(0.0, t0 + 0.25 * duration - time.monotonic()))
        if mode == "netns":
            hosts.cluster.link_down(1)
        else:
            os.kill(cut["pid"], signal.SIGSTOP)
        probe = hosts.run_in(0, [sys.executable, "-c", PROBE, head], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(node_timeout + 2.0)
        try:
            pout, perr = probe.communicate(timeout=30)
            report["probe_shutdown_s"] = float(pout.split()[-1])
            if report["probe_shutdown_s"] > SHUTDOWN_LIMIT_S:
                failures.append(f"a driver's shutdown during the cut took "
                                f"{report['probe_shutdown_s']:.1f} s")
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            probe.kill()
            pout, perr = probe.communicate()
            failures.append(f"the driver started during the cut did not exit: {perr[-2000:]}")
        if mode == "netns":
            hosts.cluster.link_up(1)
        else:
            os.kill(cut["pid"], signal.SIGCONT)
        report["cut_s"] = round(time.monotonic() - t0, 1)
        time.sleep(max(0.0, t0 + 0.6 * duration - time.monotonic()))
        for d in daemons:
            workers |= _descendants(d["pid"])
        os.kill(killed["pid"], signal.SIGKILL)
        report["killed_s"] = round(time.monotonic() - t0, 1)
        try:
            out, err = driver.communicate(timeout=duration + 150)
        except subprocess.TimeoutExpired:
            driver.kill()
            out, err = driver.communicate()
            failures.append("the driver did not exit in time (a hang)")
        lines = [x for x in out.splitlines() if x.startswith("{")]
        if driver.returncode != 0 or not lines:
            failures.append(f"the driver failed (status {driver.returncode}): {err[-3000:]}")
        else:
            report.update(json.loads(lines[-1]))
            if report["n_problems"]:
                failures.extend(report["problems"])
            if report["shutdown_s"] > SHUTDOWN_LIMIT_S:
                failures.append(f"driver shutdown took {report['shutdown_s']:.1f} s")
            by_id = {n["NodeID"]: n["Alive"] for n in report["nodes"]}
            if not by_id.get(cut["node_id"]):
                failures.append("the cut-off node did not come back as alive")
            if by_id.get(killed["node_id"]):
                failures.append("the killed node was not declared dead")
            if sum(c["ok"] for c in report["counts"].values()) == 0:
                failures.append("no task came back at all")
        cut_log = open(os.path.join(tmp, "daemon-1.log")).read()
        report["cut_node_rejoined"] = "registering again as incarnation 1" in cut_log
        if not report["cut_node_rejoined"]:
            failures.append("the cut-off node never learned it had been declared dead")
    except Exception as exc:  # noqa: BLE001 -- reported as a failure of the run
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        for d in daemons:
            workers |= _descendants(d["pid"])
            if _alive(d["pid"]):
                os.kill(d["pid"], signal.SIGCONT)
                os.kill(d["pid"], signal.SIGTERM)
        for d in daemons:
            try:
                d["proc"].wait(30)
            except subprocess.TimeoutExpired:
                failures.append(f"daemon {d['pid']} did not stop within 30 s of SIGTERM")
        hosts.close()
        sweep_dead_sessions(resolve(num_cpus=1, object_store_memory=64 << 20,
                                    num_gpus=0).temp_dir, "/dev/shm")
    pids = {d["pid"] for d in daemons} | workers
    if not _wait(lambda: not [p for p in pids if _alive(p)], 15):
        failures.append(f"processes left: {sorted(p for p in pids if _alive(p))}")
    shm = [f for f in os.listdir("/dev/shm")
           if any(f.startswith(f"{SHM_PREFIX}{s}-") for s in sessions)]
    if shm:
        failures.append(f"/dev/shm entries left: {shm[:5]}")
    if mode == "netns" and netns.owned_namespaces():
        failures.append(f"namespaces left: {netns.owned_namespaces()}")
    report["workers_checked"] = len(workers)
    report["sessions_checked"] = len(sessions)
    report["failures"] = failures
    if failures:  # the daemons' logs tell why: keep them
        report["logs"] = tmp
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    report.pop("nodes", None)
    return report


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--netns", action="store_true", help="three namespace hosts (root)")
    where.add_argument("--loopback", action="store_true", help="three daemons on 127.0.0.1")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of tasks (20)")
    p.add_argument("--node-timeout", type=float, default=2.0,
                   help="REPARTIR_NODE_TIMEOUT of every process, seconds (2)")
    p.add_argument("--inflight", type=int, default=12, help="tasks outstanding (12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--driver", metavar="HEAD", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.duration < 4 * args.node_timeout + 4:
        p.error(f"--duration must leave room for the cut and the kill: at least "
                f"{4 * args.node_timeout + 4:g} s with --node-timeout {args.node_timeout:g}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.driver:
        print(json.dumps(drive(args.driver, args.duration, args.inflight, args.seed)),
              flush=True)
        return 0
    mode = "netns" if args.netns else "loopback"
    if mode == "netns" and netns.unavailable_reason():
        print(f"cannot run with --netns here: {netns.unavailable_reason()}", file=sys.stderr)
        return 2
    report = run(mode, args.duration, args.node_timeout, args.inflight, args.seed)
    for f in report["failures"]:
        print(f"FAILED: {f}", file=sys.stderr)
    print(json.dumps(report), flush=True)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
