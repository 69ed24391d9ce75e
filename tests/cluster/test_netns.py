"""The network-namespace harness of the cluster tests (``stress/netns.py``).

- Two hosts reach each other by TCP over their private addresses (a plain socket echo), and
  see each other's private address as the peer's.
- A host has only its own addresses, no default route, and reaches none of the machine's
  addresses; the machine's own namespace gains no link.
- Closing leaves no namespace and no process behind: at the end of a ``with`` block, after an
  exception inside it, on Ctrl-C, when the owner dies without closing (the reaper), when the cluster
  outlives its lifetime, and for runs whose owner is dead (the sweep).
- ``link_down`` makes a new connection fail and stalls an established one within a bounded
  time, ``link_up`` restores both.
- Where namespaces cannot be made, the reason says what to do; bad arguments are refused.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import subprocess
import sys
import textwrap

import pytest

from rtsupport import REPO_ROOT, wait_until
from stress import netns

PY = sys.executable

#: An echo server: listens on ADDR:PORT, prints "ready", then for each connection echoes
#: every chunk back and reports the peer's address on stderr.
ECHO_SERVER = textwrap.dedent("""
    import socket, sys, threading
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
    print("ready", flush=True)
    def serve(c, peer):
        print("peer", peer[0], file=sys.stderr, flush=True)
        while True:
            data = c.recv(1 << 16)
            if not data:
                return
            c.sendall(data)
    while True:
        c, peer = s.accept()
        threading.Thread(target=serve, args=(c, peer), daemon=True).start()
""")

#: A client: sends N random bytes to ADDR:PORT, reads them back, prints a JSON report.
ECHO_CLIENT = textwrap.dedent("""
    import json, os, socket, sys
    addr, port, n, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    payload = os.urandom(n)
    try:
        s = socket.create_connection((addr, port), timeout=timeout)
        s.sendall(payload)
        got = bytearray()
        while len(got) < n:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            got += chunk
        print(json.dumps({"ok": bytes(got) == payload, "local": s.getsockname()[0],
                          "received": len(got)}))
    except OSError as e:
        print(json.dumps({"ok": False, "error": type(e).__name__, "errno": e.errno}))
""")

#: Tries to connect to every address in argv[2:] at port argv[1]; prints {addr: outcome}.
PROBE = textwrap.dedent("""
    import json, socket, sys
    out = {}
    for a in sys.argv[2:]:
        try:
            socket.create_connection((a, int(sys.argv[1])), timeout=3).close()
            out[a] = "connected"
        except OSError as e:
            out[a] = type(e).__name__
    print(json.dumps(out))
""")

#: One connection, driven by lines on stdin: "echo T" sends a line and waits up to T seconds
#: for every byte sent so far to come back, printing "echoed" (all back, in order) or
#: "stalled" (not yet: what is still missing is awaited by the next "echo").
PERSISTENT_CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    print("connected", flush=True)
    missing = b""
    for n, line in enumerate(sys.stdin):
        msg = b"ping %d\\n" % n
        s.sendall(msg)
        missing += msg
        s.settimeout(float(line.split()[1]))
        try:
            while missing:
                got = s.recv(1 << 16)
                if not got or not missing.startswith(got):
                    print("wrong", flush=True)
                    sys.exit(1)
                missing = missing[len(got):]
            print("echoed", flush=True)
        except socket.timeout:
            print("stalled", flush=True)
""")


def _line(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """The next line of ``proc``'s stdout, waiting at most ``timeout`` seconds."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no line from {proc.args} within {timeout} s"
    return proc.stdout.readline().strip()


def _start_echo(cluster: netns.Cluster, host: netns.Host, port: int = 5000) -> subprocess.Popen:
    server = cluster.run_in(host, [PY, "-c", ECHO_SERVER, host.addr, str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _line(server) == "ready"
    return server


def _echo(cluster, host, addr, n=1 << 20, port=5000, timeout=5.0) -> dict:
    proc = cluster.run_in(host, [PY, "-c", ECHO_CLIENT, addr, str(port), str(n), str(timeout)],
                          stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    return json.loads(out)


def _machine_links() -> list[str]:
    return sorted(link["ifname"] for link in json.loads(netns.ip("-j", "link")))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# reaching and not reaching
# ---------------------------------------------------------------------------------------------


@pytest.mark.netns
def test_two_hosts_reach_each_other_by_tcp_over_their_private_addresses(hosts):
    a, b = hosts.hosts
    assert ipaddress.ip_address(a.addr) in hosts.subnet and a.addr != b.addr
    server = _start_echo(hosts, b)
    report = _echo(hosts, a, b.addr)
    assert report == {"ok": True, "local": a.addr, "received": 1 << 20}, report
    hosts.stop(server)
    assert f"peer {a.addr}" in server.stderr.read()
    rx, tx = hosts.link_bytes(a)
    assert rx >= 1 << 20 and tx >= 1 << 20, (rx, tx)  # the bytes went over a's eth0


@pytest.mark.netns
def test_every_host_reaches_every_other_host():
    with netns.Cluster(3) as cluster:
        servers = [_start_echo(cluster, h) for h in cluster.hosts]
        for src in cluster.hosts:
            for dst in cluster.hosts:
                if src is not dst:
                    report = _echo(cluster, src, dst.addr, n=4096)
                    assert report["ok"] and report["local"] == src.addr, (src, dst, report)
        for s in servers:
            assert s.poll() is None  # still serving until close() kills them


@pytest.mark.netns
def test_a_host_has_only_its_own_addresses_and_no_default_route(hosts):
    for h in hosts.hosts:
        addrs = {a["local"] for link in json.loads(netns.ip("-n", h.ns, "-j", "addr"))
                 for a in link.get("addr_info", [])}
        assert addrs == {"127.0.0.1", "::1", h.addr}, addrs
        routes = json.loads(netns.ip("-n", h.ns, "-j", "route", "show", "table", "all"))
        assert not [r for r in routes if r.get("dst") == "default"], routes
    machine = [ipaddress.ip_network(r["dst"], strict=False)
               for r in json.loads(netns.ip("-4", "-j", "route", "show", "table", "all"))
               if r.get("dst", "default") != "default"]
    assert not any(hosts.subnet.overlaps(m) for m in machine), (hosts.subnet, machine)


@pytest.mark.netns
def test_hosts_do_not_reach_the_machines_addresses(hosts):
    import socket

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 0))  # in the machine's own namespace, on every address
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        mine = sorted({a["local"] for link in json.loads(netns.ip("-4", "-j", "addr"))
                       for a in link.get("addr_info", [])})
        assert "127.0.0.1" in mine
        for h in hosts.hosts:
            proc = hosts.run_in(h, [PY, "-c", PROBE, str(port), *mine],
                                stdout=subprocess.PIPE, text=True)
            out, _ = proc.communicate(timeout=60)
            result = json.loads(out)
            assert set(result) == set(mine)
            assert "connected" not in result.values(), result
            # 127.0.0.1 is the host's own loopback (nobody listens); the others are unreachable
            assert result["127.0.0.1"] == "ConnectionRefusedError", result
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection ever arrived at the machine's listener
    finally:
        listener.close()


# ---------------------------------------------------------------------------------------------
# clean-up
# ---------------------------------------------------------------------------------------------


@pytest.mark.netns
def test_close_leaves_no_namespace_link_or_process():
    links = _machine_links()
    with netns.Cluster(2) as cluster:
        names = cluster.namespaces
        assert set(names) <= set(netns.list_namespaces())
        assert _machine_links() == links  # nothing is made in the machine's namespace
        sleeper = cluster.run_in(0, ["sleep", "300"])
        # a grandchild, not started by run_in: the sweep of the namespace's pids kills it
        shell = cluster.run_in(1, ["sh", "-c", "sleep 300 & echo $!; wait"],
                               stdout=subprocess.PIPE, text=True)
        grandchild = int(_line(shell))
        assert _alive(grandchild)
    assert not set(names) & set(netns.list_namespaces())
    assert _machine_links() == links
    assert sleeper.poll() is not None and shell.poll() is not None
    assert wait_until(lambda: not _alive(grandchild), 10)
    cluster.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        cluster.run_in(0, ["true"])


@pytest.mark.netns
def test_close_after_an_exception_in_the_block():
    links = _machine_links()
    with pytest.raises(ZeroDivisionError):
        with netns.Cluster(2) as cluster:
            names = cluster.namespaces
            sleeper = cluster.run_in(1, ["sleep", "300"])
            1 / 0
    assert not set(names) & set(netns.list_namespaces())
    assert sleeper.poll() is not None
    assert _machine_links() == links
    assert netns.owned_namespaces() == []


OWNER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, sys.argv[1])
    from stress import netns
    c = netns.Cluster(2, lifetime_s=float(sys.argv[3]))
    p = c.run_in(0, ["sleep", "300"])
    ready = json.dumps({"names": c.namespaces, "pid": p.pid})
    if sys.argv[2] == "exit":
        print(ready, flush=True)
        os._exit(1)  # no atexit, no close(): what pytest-timeout's thread method does
    try:
        with c:
            print(ready, flush=True)  # inside the block: the test's Ctrl-C comes after this
            time.sleep(300)
    except KeyboardInterrupt:  # Ctrl-C: the with block closed the cluster, not the reaper
        left = set(c.namespaces) & set(netns.list_namespaces())
        print(json.dumps({"left": sorted(left), "sleeper": p.poll()}), flush=True)
""")


@pytest.mark.netns
@pytest.mark.parametrize("death", ["exit", "sigkill", "lifetime", "ctrl-c"])
def test_clean_up_when_the_owner_is_killed_interrupted_or_too_old(death):
    """os._exit and SIGKILL: the reaper; Ctrl-C: the with block; lifetime: the reaper."""
    lifetime = "1" if death == "lifetime" else "300"
    owner = subprocess.Popen([PY, "-c", OWNER, str(REPO_ROOT), death, lifetime],
                             stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(_line(owner, 30))
        if death == "sigkill":
            owner.send_signal(signal.SIGKILL)
        if death == "ctrl-c":
            owner.send_signal(signal.SIGINT)
            assert json.loads(_line(owner, 30)) == {"left": [], "sleeper": -signal.SIGTERM}
        if death != "lifetime":
            owner.wait(10)
        assert wait_until(lambda: not set(info["names"]) & set(netns.list_namespaces()), 15)
        assert wait_until(lambda: not _alive(info["pid"]), 10)
        if death == "lifetime":
            assert owner.poll() is None  # the owner still runs: the reaper acted on its own
    finally:
        owner.kill()
        owner.wait(10)


@pytest.mark.netns
def test_the_sweep_removes_namespaces_of_dead_runs_only():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{netns.PREFIX}-{dead.pid}-1-abcdef-h0"  # start time 1 tick: never a live owner
    ticks = netns._start_ticks(os.getpid())
    live = f"{netns.PREFIX}-{os.getpid()}-{ticks}-abcdef-h0"
    netns.ip("netns", "add", stale)
    netns.ip("netns", "add", live)
    try:
        swept = netns.sweep_stale()
        left = netns.list_namespaces()
        assert stale in swept and stale not in left
        assert live not in swept and live in left
    finally:
        netns.ip("netns", "del", stale, check=False)
        netns.ip("netns", "del", live, check=False)


# ---------------------------------------------------------------------------------------------
# chaos
# ---------------------------------------------------------------------------------------------


@pytest.mark.netns
def test_link_down_fails_new_and_stalls_open_connections_link_up_restores(hosts):
    a, b = hosts.hosts
    _start_echo(hosts, b)
    client = hosts.run_in(a, [PY, "-c", PERSISTENT_CLIENT, b.addr, "5000"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    assert _line(client) == "connected"

    def echo(timeout: float) -> str:
        client.stdin.write(f"echo {timeout}\n")
        return _line(client, timeout + 10)

    assert echo(5) == "echoed"
    assert _echo(hosts, a, b.addr, n=1000)["ok"]

    hosts.link_down(b)
    assert echo(1) == "stalled"  # an established connection: no reply, no reset
    # a new one fails, within its timeout (TimeoutError), or "no route to host" (OSError 113)
    # once the ARP entry of b is gone
    report = _echo(hosts, a, b.addr, n=1000, timeout=2)
    assert report["ok"] is False and report["error"] in ("TimeoutError", "OSError"), report

    hosts.link_up(b)
    assert echo(15) == "echoed"  # the same connection carries on (retransmission)
    assert _echo(hosts, a, b.addr, n=1000, timeout=10)["ok"]


# ---------------------------------------------------------------------------------------------
# where namespaces cannot be made, and bad input
# ---------------------------------------------------------------------------------------------


def test_unavailable_reason_says_what_to_do(monkeypatch):
    monkeypatch.setattr(netns, "_UNAVAILABLE", [])
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert "root" in netns.unavailable_reason()
    with pytest.raises(netns.NetnsUnavailable, match="root"):
        netns.Cluster(2)

    monkeypatch.setattr(netns, "_UNAVAILABLE", [])
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda name: None)
    assert "install iproute2" in netns.unavailable_reason()


def test_free_subnet_avoids_the_machines_routes_and_addresses(monkeypatch):
    # every /24 of 10.250.0.0/16 but 10.250.77.0/24 is taken by a route or an address
    routes = [{"dst": "default"}, {"dst": "10.250.0.0/18"}, {"dst": "10.250.64.0/21"},
              {"dst": "10.250.72.0/22"}, {"dst": "10.250.78.0/23"}, {"dst": "10.250.80.0/20"},
              {"dst": "10.250.96.0/19"}, {"dst": "10.250.128.0/17"}, {"dst": "10.250.77.5"}]
    addrs = [{"addr_info": [{"local": "10.250.76.9", "prefixlen": 24}]}]

    def fake_ip(*args, check=True):
        return json.dumps(routes if "route" in args else addrs)

    monkeypatch.setattr(netns, "ip", fake_ip)
    with pytest.raises(RuntimeError, match="overlaps"):
        netns.free_subnet()  # 10.250.77.5 (a local route) takes 10.250.77.0/24 too
    routes.pop()
    for seed in range(5):
        import random

        assert str(netns.free_subnet(rng=random.Random(seed))) == "10.250.77.0/24"


@pytest.mark.netns
def test_bad_arguments_are_refused_with_what_to_do(hosts):
    for n in (0, -1, netns.MAX_HOSTS + 1, 2.0):
        with pytest.raises(ValueError, match="n must be an int"):
            netns.Cluster(n)
    with pytest.raises(ValueError, match="lifetime_s"):
        netns.Cluster(1, lifetime_s=0)
    with pytest.raises(ValueError, match="not a shell string"):
        hosts.run_in(0, "sleep 1")
    with pytest.raises(ValueError, match="is not a host"):
        hosts.link_down(7)
    assert hosts.host(hosts.hosts[1].ns) is hosts.hosts[1] and hosts.host(0) is hosts.hosts[0]
