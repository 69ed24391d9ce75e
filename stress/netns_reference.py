"""Reference figures for the cluster benchmarks, on hosts made by :mod:`stress.netns`.

Definitions, and the figures measured: ``docs/benchmarks.md``, "Cluster reference figures".
Each scenario is a function over a :class:`stress.netns.Cluster` that returns the figures as
``{workload: (value, extra)}``, the shape a workload of :mod:`stress.workloads` returns, so that
the harness can call them next to repartir's own ``remote_tiny`` and ``transfer`` once the
cluster is built:

- :func:`tcp_stream`: the physical reference of ``transfer``: one plain TCP stream from one
  host to another (Python sockets: ``sendall`` of the payload, ``recv_into`` a preallocated
  buffer), GB/s (1e9 B/s).
- :func:`dask_reference`: Dask distributed on the same hosts, a scheduler on one host and one
  worker (``--no-nanny``, one thread) on each of two others, driven by a client on the
  scheduler's host: ``remote_tiny`` (tiny tasks per second through ``client.map``, gathered)
  and ``transfer`` (GB/s of a task on worker C whose argument was scattered to worker B:
  the bytes move worker to worker, which the hosts' link counters confirm).

``python stress/netns_reference.py [--quick] [--json FILE]`` makes three hosts, runs both and
prints the figures (needs root, iproute2, and ``dask[distributed]`` from the ``bench`` extra
for the Dask part). The processes inside the hosts run this file too: ``_tcp-recv``,
``_tcp-send`` and ``_dask-client`` are its subcommands there.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:                # ``python stress/netns_reference.py`` puts only stress/
    sys.path.insert(0, ROOT)

from stress import netns  # noqa: E402

MIB = 1 << 20
PY = sys.executable
#: Full sizes, and ``--quick`` ones.
FULL = {"mib": 256, "tiny_tasks": 10_000, "reps": 3}
QUICK = {"mib": 32, "tiny_tasks": 2_000, "reps": 3}
#: Ports on the hosts (each host has its own port space).
TCP_PORT = 5100
DASK_PORT = 8786
#: Seconds a whole scenario may take before it is abandoned (its processes are killed).
SCENARIO_TIMEOUT_S = 300.0


def _env() -> dict[str, str]:
    """The processes in the hosts import ``stress.*`` (Dask's workers unpickle its functions)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def _what(proc: subprocess.Popen) -> str:
    return " ".join(proc.args[5:7])  # ip netns exec NS python FILE SUBCOMMAND ...


def _json_line(proc: subprocess.Popen, timeout: float) -> dict:
    """The last line of ``proc``'s stdout as JSON, once it exits (stderr in the error)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"{_what(proc)} ran past {timeout} s: {err[-2000:]}") from None
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{_what(proc)} failed ({proc.returncode}): {err[-2000:]}")
    return json.loads(lines[-1])


def _wait_ready(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if ready else ""
    if line != "ready":
        raise RuntimeError(f"{_what(proc)} did not start: {line!r}")


# ---------------------------------------------------------------------------------------------
# one plain TCP stream
# ---------------------------------------------------------------------------------------------


def tcp_stream(cluster: netns.Cluster, src: Any = 0, dst: Any = 1, *, mib: int = 256,
               reps: int = 3) -> dict[str, tuple[float, dict]]:
    """GB/s of one TCP stream from host ``src`` to host ``dst`` (a host, index or name).

    The receiver on ``dst`` accepts one connection; each of ``1 + reps`` rounds (the first a
    warm-up) the sender ``sendall``\\ s ``mib`` MiB and waits for a one-byte acknowledgement
    that the receiver sends once it has ``recv_into`` its preallocated buffer every byte; a
    round is timed on the sender from the first byte sent to the acknowledgement. Value: the
    median of the timed rounds; ``extra``: every round, and the CRC-32 of what was received
    (compared with what was sent, outside the clock). Returns ``{"transfer": (GBps, extra)}``.
    Raises ``RuntimeError`` if a side fails or the bytes differ."""
    s, d = cluster.host(src), cluster.host(dst)
    n = mib * MIB
    recv = cluster.run_in(d, [PY, __file__, "_tcp-recv", d.addr, str(TCP_PORT), str(n),
                              str(reps + 1)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=_env(), cwd=ROOT)
    try:
        _wait_ready(recv)
        send = cluster.run_in(s, [PY, __file__, "_tcp-send", d.addr, str(TCP_PORT), str(n),
                                  str(reps + 1)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env(), cwd=ROOT)
        sent = _json_line(send, SCENARIO_TIMEOUT_S)
        got = _json_line(recv, 30)
    finally:
        cluster.stop(recv)
    if sent["crc32"] != got["crc32"] or got["bytes"] != n:
        raise RuntimeError(f"the stream was corrupted: sent {sent}, received {got}")
    timed = sent["seconds"][1:]
    gbps = [n / t / 1e9 for t in timed]
    extra = {"bytes": n, "rounds_GBps": [round(g, 3) for g in gbps], "warmup_s": sent["seconds"][0],
             "checked": "crc32 of every byte received", "from": s.addr, "to": d.addr}
    return {"transfer": (statistics.median(gbps), extra)}


def _tcp_recv(addr: str, port: int, n: int, rounds: int) -> None:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((addr, port))
    lsock.listen(1)
    print("ready", flush=True)
    conn, _ = lsock.accept()
    buf = bytearray(n)
    view = memoryview(buf)
    for _ in range(rounds):
        got = 0
        while got < n:
            k = conn.recv_into(view[got:], n - got)
            if not k:
                raise SystemExit(f"the sender closed after {got} of {n} bytes")
            got += k
        conn.sendall(b"k")
    print(json.dumps({"bytes": got, "crc32": zlib.crc32(view)}))


def _tcp_send(addr: str, port: int, n: int, rounds: int) -> None:
    payload = os.urandom(n)
    conn = socket.create_connection((addr, port), timeout=60)
    seconds = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        conn.sendall(payload)
        if conn.recv(1) != b"k":
            raise SystemExit("no acknowledgement from the receiver")
        seconds.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": seconds, "crc32": zlib.crc32(payload)}))


# ---------------------------------------------------------------------------------------------
# Dask distributed on the same hosts
# ---------------------------------------------------------------------------------------------


def identity(x: Any) -> Any:
    """The tiny task (``lambda x: x``, importable by the workers)."""
    return x


def nbytes_on(a: Any) -> tuple[int, str]:
    """The timed transfer task: the argument's size and the worker that ran it."""
    from distributed import get_worker

    return int(a.nbytes), get_worker().address


def crc_of(a: Any) -> int:
    return zlib.crc32(memoryview(a).cast("B"))


def dask_reference(cluster: netns.Cluster, *, scheduler: Any = 0,
                   workers: Sequence[Any] = (1, 2), tiny_tasks: int = 10_000, mib: int = 256,
                   reps: int = 3) -> dict[str, tuple[float, dict]]:
    """Dask distributed across hosts: a scheduler on host ``scheduler``, one worker process
    (``--no-nanny --nthreads 1 --memory-limit 0``) on each of the two hosts ``workers`` (B, C),
    and a client on the scheduler's host. Needs ``distributed`` (the ``bench`` extra).

    - ``remote_tiny``: after a warm-up of 200, ``client.map(identity, range(tiny_tasks),
      pure=False)`` then ``client.gather``; tasks per second, results checked.
    - ``transfer``: ``1 + reps`` rounds (the first a warm-up): a float64 array of ``mib`` MiB
      is scattered to B (``hash=False``, untimed), then a task pinned to C
      (``workers=[C], allow_other_workers=False``) that takes it and returns its size is timed
      from submit to result; GB/s of the median round. Untimed, each round checks that the
      task ran on C and a second task on C returns the CRC-32 of every byte it received.
      Around the whole run the hosts' link counters are read: B must have sent at least
      every round's bytes and the scheduler's host must have received less than one round's,
      so the array went from B to C directly (``RuntimeError`` otherwise).

    Returns ``{"remote_tiny": (tasks_per_s, extra), "transfer": (GBps, extra)}``."""
    sh = cluster.host(scheduler)
    b, c = (cluster.host(w) for w in workers)
    address = f"tcp://{sh.addr}:{DASK_PORT}"
    procs = []
    with tempfile.TemporaryDirectory(prefix="rpnet-dask-") as logdir:
        def start(host: netns.Host, name: str, argv: list[str]) -> subprocess.Popen:
            log = open(os.path.join(logdir, f"{name}.log"), "w")
            p = cluster.run_in(host, argv, stdout=log, stderr=subprocess.STDOUT, env=_env(),
                               cwd=logdir)
            log.close()
            procs.append(p)
            return p

        def logs() -> str:
            return "\n".join(f"--- {f}\n" + Path(logdir, f).read_text()[-1500:]
                             for f in sorted(os.listdir(logdir)))

        try:
            start(sh, "scheduler", [PY, "-m", "distributed.cli.dask_scheduler", "--host",
                                    sh.addr, "--port", str(DASK_PORT), "--no-dashboard"])
            for w, name in ((b, "B"), (c, "C")):
                start(w, f"worker-{name}",
                      [PY, "-m", "distributed.cli.dask_worker", address, "--host", w.addr,
                       "--name", name, "--nthreads", "1", "--no-nanny", "--memory-limit", "0",
                       "--no-dashboard"])
            before = {h.addr: cluster.link_bytes(h) for h in (sh, b, c)}
            client = cluster.run_in(
                sh, [PY, __file__, "_dask-client", address, b.addr, c.addr, str(tiny_tasks),
                     str(mib), str(reps)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                cwd=ROOT)
            try:
                res = _json_line(client, SCENARIO_TIMEOUT_S)
            except RuntimeError as e:
                raise RuntimeError(f"{e}\n{logs()}") from None
            after = {h.addr: cluster.link_bytes(h) for h in (sh, b, c)}
        finally:
            for p in procs:
                cluster.stop(p, grace_s=3.0)
    n = mib * MIB
    rounds = reps + 1
    b_sent = after[b.addr][1] - before[b.addr][1]
    c_received = after[c.addr][0] - before[c.addr][0]
    sched_received = after[sh.addr][0] - before[sh.addr][0]
    if b_sent < rounds * n or c_received < rounds * n or sched_received >= n:
        raise RuntimeError(
            f"the array did not go from worker B to worker C: B sent {b_sent} B, C received "
            f"{c_received} B, the scheduler's host received {sched_received} B over "
            f"{rounds} rounds of {n} B")
    tiny = (res["tiny_tasks"] / res["tiny_s"],
            {"tasks": res["tiny_tasks"], "seconds": res["tiny_s"], "checked": "every result",
             "scheduler": sh.addr, "workers": [b.addr, c.addr]})
    gbps = [n / t / 1e9 for t in res["transfer_s"][1:]]
    transfer = (statistics.median(gbps),
                {"bytes": n, "rounds_GBps": [round(g, 3) for g in gbps],
                 "warmup_s": res["transfer_s"][0], "ran_on": res["ran_on"],
                 "checked": "crc32 of every byte received on C",
                 "B_sent_bytes": b_sent, "C_received_bytes": c_received,
                 "scheduler_host_received_bytes": sched_received})
    return {"remote_tiny": tiny, "transfer": transfer}


def _dask_client(address: str, b_addr: str, c_addr: str, tiny_tasks: int, mib: int,
                 reps: int) -> None:
    import numpy as np
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
        by_host = {w.split("://")[1].rsplit(":", 1)[0]: w
                   for w in client.scheduler_info()["workers"]}
        wb, wc = by_host[b_addr], by_host[c_addr]

        assert client.gather(client.map(identity, range(200), pure=False)) == list(range(200))
        t0 = time.perf_counter()
        futures = client.map(identity, range(tiny_tasks), pure=False)
        results = client.gather(futures)
        tiny_s = time.perf_counter() - t0
        if results != list(range(tiny_tasks)):
            raise SystemExit("remote_tiny: wrong results")
        del futures, results

        a = np.random.default_rng(0).random(mib * MIB // 8)
        crc = crc_of(a)
        seconds, ran_on = [], set()
        for _ in range(reps + 1):
            data = client.scatter(a, workers=[wb], hash=False)
            if set(client.who_has(data)[data.key]) != {wb}:
                raise SystemExit(f"scatter did not place the array on B only: "
                                 f"{client.who_has(data)}")
            t0 = time.perf_counter()
            size, where = client.submit(nbytes_on, data, workers=[wc],
                                        allow_other_workers=False, pure=False).result()
            seconds.append(time.perf_counter() - t0)
            check = client.submit(crc_of, data, workers=[wc], allow_other_workers=False,
                                  pure=False).result()
            if size != a.nbytes or where != wc or check != crc:
                raise SystemExit(f"transfer: size {size}, ran on {where} (C is {wc}), crc32 "
                                 f"{check} (want {crc})")
            ran_on.add(where)
            client.cancel(data)
            del data
    print(json.dumps({"tiny_tasks": tiny_tasks, "tiny_s": tiny_s, "transfer_s": seconds,
                      "ran_on": sorted(ran_on)}))


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------


def run(quick: bool = False) -> list[dict]:
    """Three hosts; :func:`tcp_stream` from host 0 to host 1 and :func:`dask_reference`
    (scheduler on host 0, workers on hosts 1 and 2, when ``distributed`` is importable).
    Returns records ``{"system", "workload", "value", "unit", "extra"}`` as stress/bench.py
    writes them (``system`` ``tcp``: the physical reference)."""
    import importlib.util

    sizes = QUICK if quick else FULL
    records = []
    with netns.Cluster(3) as cluster:
        for w, (v, extra) in tcp_stream(cluster, 0, 1, mib=sizes["mib"],
                                        reps=sizes["reps"]).items():
            records.append({"system": "tcp", "workload": w, "value": v, "unit": "GB/s",
                            "extra": extra})
        if importlib.util.find_spec("distributed") is None:
            print("dask: not installed (pip install '.[bench]')", file=sys.stderr)
        else:
            units = {"remote_tiny": "tasks/s", "transfer": "GB/s"}
            for w, (v, extra) in dask_reference(cluster, **sizes).items():
                records.append({"system": "dask", "workload": w, "value": v, "unit": units[w],
                                "extra": extra})
    return records


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_tcp-recv":
        _tcp_recv(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
        return 0
    if argv and argv[0] == "_tcp-send":
        _tcp_send(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
        return 0
    if argv and argv[0] == "_dask-client":
        _dask_client(argv[1], argv[2], argv[3], int(argv[4]), int(argv[5]), int(argv[6]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB, 2,000 tiny tasks")
    parser.add_argument("--json", metavar="FILE", help="also write the records as JSON")
    args = parser.parse_args(argv)
    reason = netns.unavailable_reason()
    if reason:
        print(f"netns_reference: {reason}", file=sys.stderr)
        return 2
    records = run(args.quick)
    for r in records:
        print(f"{r['system']:>5} {r['workload']:<12} {r['value']:>10.2f} {r['unit']:<8} "
              f"{json.dumps(r['extra'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
