"""Several hosts on one machine: network namespaces joined by a bridge, for cluster tests and
benchmarks.

The cluster tests (``tests/cluster/``) and the cluster benchmarks (``stress/``) both import this
module, as ``stress.netns`` (the tests put the project root on ``sys.path``, as
``tests/test_bench_docs.py`` does for the harness). It uses the standard library and the ``ip``
command of iproute2 only, and needs root.

Topology of :class:`Cluster` ``(n)``::

      host h0 (netns)           host h1 (netns)    ...    host h<n-1> (netns)
      lo up, eth0 10.250.X.1    lo up, eth0 10.250.X.2    lo up, eth0 10.250.X.n
            │ veth                    │ veth                      │ veth
      ┌─────┴─────────────────────────┴───────────────────────────┴─────┐
      │ hub (netns): bridge br0 with ports p0, p1, ..., p<n-1>; no address │
      └────────────────────────────────────────────────────────────────────┘

- Every host reaches every other host through the hub's bridge, at its address on one private
  ``/24`` (:data:`SUPERNET`, ``10.250.X.0/24`` with ``X`` picked at random among the subnets
  that overlap no route and no address of the machine's own namespace).
- A host has no other address (IPv6 link-local addresses are not generated) and no default
  route: it cannot reach the machine's addresses nor anything beyond (``connect`` fails at
  once with "network is unreachable"; no packet leaves the host).
- Nothing is created in the machine's own namespace: each veth pair is made inside the hub and
  its host end moved straight into its host's namespace.
- Names are unique per run: ``rpnet-<pid>-<start>-<token>-<role>`` (:data:`PREFIX`, the owner's
  pid and start time in clock ticks, a random token, ``hub`` or ``h<i>``), so runs in parallel
  never collide, and a sweep (:func:`sweep_stale`, run by every new :class:`Cluster`) removes
  the namespaces of runs whose owner is dead.

Clean-up, whatever happens: :meth:`Cluster.close` (the ``with`` block's end, also on an
exception or Ctrl-C, and at interpreter exit through ``atexit``) kills every process in the
namespaces and deletes them (a veth pair goes with its namespace). A reaper process started with
each cluster (this file, run as a script; a session of its own, so Ctrl-C does not reach it)
does the same when its owner dies without closing -- killed, or ended by ``os._exit`` as
pytest-timeout's thread method does -- and when the cluster outlives ``lifetime_s``.

Chaos: :meth:`Cluster.link_down` sets a host's port on the bridge down (the host's ``eth0``
loses its carrier, its address and route stay: packets to and from it are dropped, as when a
cable is pulled; a new connection fails with "no route to host" after the ARP timeout, about
3 s, or at the caller's socket timeout); :meth:`Cluster.link_up` plugs it back.

Errors: :class:`NetnsUnavailable` (a :class:`RuntimeError`) when namespaces cannot be made here
(:func:`unavailable_reason` says why: not root, no ``ip``, no permission), ``ValueError`` on bad
arguments, :class:`IpError` (a ``subprocess.CalledProcessError``) when an ``ip`` command fails,
with its stderr.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import random
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Sequence

#: First part of every namespace name this module makes (the sweep matches it).
PREFIX = "rpnet"
#: The host subnets are ``/24``\\ s of this ``/16``.
SUPERNET = ipaddress.ip_network("10.250.0.0/16")
#: Seconds a cluster may live before its reaper tears it down (bounds a run that hangs).
DEFAULT_LIFETIME_S = 900.0
#: Seconds a process started by :meth:`Cluster.run_in` gets after SIGTERM before SIGKILL.
DEFAULT_GRACE_S = 1.0
#: Seconds any one ``ip`` command may take.
IP_TIMEOUT_S = 20.0
#: Largest number of hosts of one cluster (addresses .1 to .n of one /24).
MAX_HOSTS = 200

_NAME = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-([0-9a-f]+)-(hub|h\d+)$")


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made on this machine (the message says why)."""


class IpError(subprocess.CalledProcessError):
    """An ``ip`` command failed; the message has its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()} {self.stderr}"


# ---------------------------------------------------------------------------------------------
# ip, processes, names
# ---------------------------------------------------------------------------------------------


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS`` (iproute2), bounded by :data:`IP_TIMEOUT_S`; return its stdout.

    Raises :class:`IpError` (a ``subprocess.CalledProcessError`` with ``ip``'s stderr in its
    message) when it fails and ``check`` is true."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise IpError(proc.returncode, ["ip", *args], proc.stdout, proc.stderr.strip())
    return proc.stdout


def list_namespaces() -> list[str]:
    """Names of every named network namespace of the machine (``ip netns list``)."""
    out = ip("netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def owned_namespaces(pid: int | None = None) -> list[str]:
    """Namespaces made by :class:`Cluster`\\ s of process ``pid`` (default: this one), found by
    the owner pid and start time in their names."""
    pid = os.getpid() if pid is None else pid
    mine = f"{PREFIX}-{pid}-{_start_ticks(pid)}-"
    return [n for n in list_namespaces() if n.startswith(mine)]


def _start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot, ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the command's ")"


def _owner_alive(pid: int, ticks: int) -> bool:
    return _start_ticks(pid) == ticks


def namespace_pids(name: str) -> list[int]:
    """Pids of the processes inside namespace ``name`` (``ip netns pids``)."""
    out = ip("netns", "pids", name, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_inside(names: Sequence[str]) -> None:
    """SIGKILL every process inside ``names``, until none is left (at most ~5 s)."""
    deadline = time.monotonic() + 5.0
    while True:
        pids = [p for n in names for p in namespace_pids(n)]
        if not pids or time.monotonic() > deadline:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def delete_namespaces(names: Sequence[str]) -> None:
    """Kill what runs inside ``names`` and delete them; hosts first, then hubs."""
    names = sorted(names, key=lambda n: n.endswith("-hub"))
    _kill_inside(names)
    for n in names:
        ip("netns", "del", n, check=False)


def sweep_stale() -> list[str]:
    """Delete the namespaces named ``rpnet-<pid>-<start>-...`` whose owner process is gone
    (a run killed before it could clean up), with the processes still inside them.

    Returns the names deleted. Namespaces of live owners (parallel runs) are left alone."""
    stale = []
    for n in list_namespaces():
        m = _NAME.match(n)
        if m and not _owner_alive(int(m[1]), int(m[2])):
            stale.append(n)
    if stale:
        delete_namespaces(stale)
    return stale


_UNAVAILABLE: list[str | None] = []


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be made here, or ``None`` when they can.

    Checks root, the ``ip`` binary, then makes and deletes a probe namespace (this catches a
    container without the permission). Computed once per process."""
    if _UNAVAILABLE:
        return _UNAVAILABLE[0]
    reason = None
    if os.geteuid() != 0:
        reason = "network namespaces need root (run the tests as root, as CI does)"
    elif shutil.which("ip") is None:
        reason = "no `ip` binary: install iproute2 (apt-get install iproute2)"
    else:
        probe = f"{PREFIX}-{os.getpid()}-{_start_ticks(os.getpid())}-{secrets.token_hex(3)}-hub"
        try:
            ip("netns", "add", probe)
            ip("-n", probe, "link", "set", "lo", "up")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            reason = ("cannot make a network namespace here (needs root with CAP_SYS_ADMIN, as "
                      f"CI runs): {e}")
        finally:
            ip("netns", "del", probe, check=False)
    _UNAVAILABLE.append(reason)
    return reason


def free_subnet(supernet: ipaddress.IPv4Network = SUPERNET,
                rng: random.Random | None = None) -> ipaddress.IPv4Network:
    """A random ``/24`` of ``supernet`` that overlaps no route (any table) and no address of
    the calling process's namespace, so that the hosts' addresses can never be confused with
    the machine's. Raises ``RuntimeError`` if every one overlaps."""
    taken = []
    for cmd in (["-4", "-j", "route", "show", "table", "all"], ["-4", "-j", "addr"]):
        for entry in json.loads(ip(*cmd) or "[]"):
            dsts = [entry.get("dst")] if "dst" in entry else [
                f"{a['local']}/{a['prefixlen']}" for a in entry.get("addr_info", [])]
            for d in dsts:
                if d and d != "default":
                    taken.append(ipaddress.ip_network(d, strict=False))
    subnets = list(supernet.subnets(new_prefix=24))
    (rng or random.Random()).shuffle(subnets)
    for s in subnets:
        if not any(s.overlaps(t) for t in taken if t.version == 4):
            return s
    raise RuntimeError(f"every /24 of {supernet} overlaps a route or address of this machine")


# ---------------------------------------------------------------------------------------------
# the cluster
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One host of a :class:`Cluster`: its namespace ``ns``, its ``addr`` (dotted IPv4 on
    ``eth0``), its ``index`` and its ``port``, the bridge port in the hub it hangs on."""

    ns: str
    addr: str
    index: int
    port: str


class Cluster:
    """``n`` hosts (network namespaces) on one bridge; see the module docstring.

    ``n``: 1 to :data:`MAX_HOSTS`. ``lifetime_s`` (default :data:`DEFAULT_LIFETIME_S`):
    seconds after which the reaper tears everything down even if the owner still runs.
    ``subnet``: a ``/24`` to use instead of a free random one (tests).

    Use as a context manager; :meth:`close` is also run at interpreter exit. Raises
    :class:`NetnsUnavailable` where namespaces cannot be made (:func:`unavailable_reason`)."""

    def __init__(self, n: int, *, lifetime_s: float = DEFAULT_LIFETIME_S,
                 subnet: str | None = None) -> None:
        if not isinstance(n, int) or not 1 <= n <= MAX_HOSTS:
            raise ValueError(f"n must be an int from 1 to {MAX_HOSTS} hosts, not {n!r}")
        if not lifetime_s > 0:
            raise ValueError(f"lifetime_s must be > 0 seconds, not {lifetime_s!r}")
        reason = unavailable_reason()
        if reason:
            raise NetnsUnavailable(reason)
        sweep_stale()
        pid = os.getpid()
        self.name = f"{PREFIX}-{pid}-{_start_ticks(pid)}-{secrets.token_hex(3)}"
        self.hub = f"{self.name}-hub"
        self.subnet = ipaddress.ip_network(subnet) if subnet else free_subnet()
        if self.subnet.prefixlen != 24:
            raise ValueError(f"subnet must be a /24, not {self.subnet}")
        hosts = list(self.subnet.hosts())
        self.hosts = [Host(f"{self.name}-h{i}", str(hosts[i]), i, f"p{i}") for i in range(n)]
        self._procs: list[subprocess.Popen] = []
        self._closed = False
        self._reaper = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--reap", self.name, str(lifetime_s)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True)
        atexit.register(_close_at_exit, weakref.ref(self))
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        ip("netns", "add", self.hub)
        ip("-n", self.hub, "link", "set", "lo", "up")
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for h in self.hosts:
            ip("netns", "add", h.ns)
            ip("-n", h.ns, "link", "set", "lo", "up")
            ip("-n", self.hub, "link", "add", h.port, "type", "veth",
               "peer", "name", "eth0", "netns", h.ns)
            ip("-n", self.hub, "link", "set", h.port, "master", "br0", "up")
            ip("-n", h.ns, "link", "set", "eth0", "addrgenmode", "none")
            ip("-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", "eth0")
            ip("-n", h.ns, "link", "set", "eth0", "up")

    # -- access --------------------------------------------------------------------------------

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of the cluster: the hosts', then the hub."""
        return [h.ns for h in self.hosts] + [self.hub]

    def host(self, which: Host | int | str) -> Host:
        """The host given as a :class:`Host`, its index or its namespace name (``ValueError``
        for anything else)."""
        for h in self.hosts:
            if which is h or which == h.index or which == h.ns:
                return h
        raise ValueError(f"{which!r} is not a host of {self.name}: give a Host, an index "
                         f"from 0 to {len(self.hosts) - 1} or a namespace name")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"cluster {self.name} is closed")

    # -- processes -----------------------------------------------------------------------------

    def run_in(self, which: Host | int | str, argv: Sequence[str],
               **popen_kwargs) -> subprocess.Popen:
        """Start ``argv`` inside host ``which`` (``ip netns exec``); returns its ``Popen``.

        ``popen_kwargs`` go to ``subprocess.Popen`` (``stdout=``, ``cwd=``, ``env=``, ...);
        the process gets a session of its own (Ctrl-C at the terminal reaches only the owner,
        which then kills it). :meth:`close` ends it: SIGTERM, SIGKILL after
        :data:`DEFAULT_GRACE_S`, then every process left in the namespace."""
        self._check_open()
        h = self.host(which)
        if isinstance(argv, (str, bytes)) or not argv:
            raise ValueError("argv must be a non-empty list of strings, e.g. ['python3', '-c', "
                             "'...'], not a shell string")
        popen_kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", h.ns, *map(str, argv)], **popen_kwargs)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, grace_s: float = DEFAULT_GRACE_S) -> int:
        """End ``proc`` (started by :meth:`run_in`): SIGTERM to its process group, SIGKILL after
        ``grace_s`` seconds; returns its exit status."""
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
        return proc.wait(5.0)

    # -- chaos ---------------------------------------------------------------------------------

    def link_down(self, which: Host | int | str) -> None:
        """Unplug host ``which``: its bridge port goes down, its ``eth0`` loses the carrier.
        Packets to and from it are dropped; its processes, address and route stay."""
        self._check_open()
        ip("-n", self.hub, "link", "set", self.host(which).port, "down")

    def link_up(self, which: Host | int | str) -> None:
        """Plug host ``which`` back in (undoes :meth:`link_down`)."""
        self._check_open()
        ip("-n", self.hub, "link", "set", self.host(which).port, "up")

    def link_bytes(self, which: Host | int | str) -> tuple[int, int]:
        """``(received, sent)`` bytes so far on host ``which``'s ``eth0`` (kernel counters)."""
        self._check_open()
        stats = json.loads(ip("-n", self.host(which).ns, "-j", "-s", "link", "show", "eth0"))
        s = stats[0]["stats64"]
        return int(s["rx"]["bytes"]), int(s["tx"]["bytes"])

    # -- the end -------------------------------------------------------------------------------

    def close(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Kill the processes of the cluster and delete its namespaces (their links go with
        them). Idempotent; also run at interpreter exit."""
        if self._closed:
            return
        self._closed = True
        try:
            running = [p for p in self._procs if p.poll() is None]
            for p in running:
                _signal_group(p, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for p in running:
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _signal_group(p, signal.SIGKILL)
            delete_namespaces(self.namespaces)
            for p in self._procs:
                try:
                    p.wait(5.0)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if self._reaper.stdin:
                self._reaper.stdin.close()  # EOF: the reaper finds nothing left and exits
            try:
                self._reaper.wait(10.0)
            except subprocess.TimeoutExpired:
                self._reaper.kill()
                self._reaper.wait()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Cluster({self.name}, {self.subnet}, hosts="
                f"{[h.addr for h in self.hosts]}{', closed' if self._closed else ''})")


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _close_at_exit(ref: "weakref.ref[Cluster]") -> None:
    cluster = ref()
    if cluster is not None:
        cluster.close()


# ---------------------------------------------------------------------------------------------
# the reaper: python stress/netns.py --reap NAME LIFETIME_S
# ---------------------------------------------------------------------------------------------


def _reap(name: str, lifetime_s: float) -> None:
    """Wait for EOF on stdin (the owner closed, or died) or ``lifetime_s``; then delete every
    namespace of cluster ``name`` with what runs inside."""
    deadline = time.monotonic() + lifetime_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
    delete_namespaces([n for n in list_namespaces() if n.startswith(name + "-")])


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--reap":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _reap(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit("usage: python stress/netns.py --reap CLUSTER_NAME LIFETIME_S "
                 "(started by stress.netns.Cluster)")
