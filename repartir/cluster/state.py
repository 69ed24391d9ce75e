"""This machine's cluster state (docs/cluster.md, "Start, join, connect"): a directory
(``REPARTIR_CLUSTER_DIR``, default ``~/.config/repartir/cluster``, mode 0700) that holds

- ``address``: the address of the head started on this machine (``init(address="auto")``
  reads it);
- ``processes.json``: the node daemons ``repartir start`` started here (pid, its start time
  in clock ticks so that a reused pid is never taken for one of ours, role, address), which
  ``repartir stop`` stops;
- ``node-<pid>.log``: each daemon's stdout and stderr; ``ready-<n>.json``: how a daemon tells
  ``repartir start`` that it is up (or why it is not).

Also the messages' helpers shared by the daemon and the driver's client: :class:`StoredArg`
and :func:`host_port`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple

from ..config import cluster_state_dir
from ..errors import RepartirError

__all__ = ["state_dir", "read_address", "write_address", "remove_address", "record_process",
           "recorded_processes", "forget_processes", "process_start_time", "host_port",
           "tcp", "StoredArg", "resolve_address"]


def state_dir(create: bool = False) -> str:
    """The state directory (made with mode 0700 when ``create``)."""
    path = cluster_state_dir()
    if create:
        os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _write_json(path: str, value: Any) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def write_address(address: str) -> None:
    """Record the head's ``HOST:PORT`` (for ``address="auto"`` and ``repartir status``)."""
    _write_json(os.path.join(state_dir(True), "address.json"), {"address": address})


def read_address() -> str | None:
    """The head address recorded on this machine, or ``None``."""
    try:
        with open(os.path.join(state_dir(), "address.json")) as f:
            return json.load(f)["address"]
    except (OSError, ValueError, KeyError):
        return None


def remove_address() -> None:
    try:
        os.unlink(os.path.join(state_dir(), "address.json"))
    except FileNotFoundError:
        pass


def process_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat``
    field 22), or ``None`` when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie is gone for our purposes
        return None
    return int(fields[19])


def recorded_processes() -> list[dict]:
    """The daemons recorded by ``repartir start`` on this machine (dead ones included)."""
    try:
        with open(os.path.join(state_dir(), "processes.json")) as f:
            return list(json.load(f))
    except (OSError, ValueError):
        return []


def record_process(pid: int, role: str, address: str) -> None:
    """Add a daemon to ``processes.json``."""
    rows = recorded_processes()
    rows.append({"pid": pid, "start": process_start_time(pid), "role": role,
                 "address": address, "time": time.time()})
    _write_json(os.path.join(state_dir(True), "processes.json"), rows)


def forget_processes(pids: set[int]) -> None:
    rows = [r for r in recorded_processes() if r["pid"] not in pids]
    _write_json(os.path.join(state_dir(True), "processes.json"), rows)


def host_port(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (or ``tcp://HOST:PORT``) split.

    Raises:
        ValueError: not of that form (another scheme than ``tcp://``, a port outside
            1-65535); the message shows one that is.
    """
    scheme = address.split("://", 1)[0] if "://" in address else "tcp"
    if scheme != "tcp":
        raise ValueError(f"a cluster address is HOST:PORT (or tcp://HOST:PORT), e.g. "
                         f"127.0.0.1:6380, got {address!r}: a repartir head speaks no "
                         f"{scheme}://; give the address `repartir start --head` printed")
    text = address[6:] if address.startswith("tcp://") else address
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a cluster address is HOST:PORT, e.g. 127.0.0.1:6380, got "
                         f"{address!r}")
    return host.strip("[]"), int(port)


def tcp(address: str) -> str:
    """The ZeroMQ address of ``HOST:PORT``."""
    host, port = host_port(address)
    return f"tcp://{host}:{port}"


def resolve_address(address: str | None) -> str:
    """The head address a driver or ``repartir status`` uses: ``address``, where ``"auto"``
    (or ``None``) means ``REPARTIR_ADDRESS``, then the head recorded on this machine.

    Raises:
        RepartirError: ``"auto"`` and no head is known; the message says how to start one.
        ValueError: an address not of the form ``HOST:PORT``.
    """
    if address in (None, "auto"):
        found = os.environ.get("REPARTIR_ADDRESS", "").strip() or read_address()
        if not found:
            raise RepartirError(
                f"no cluster to connect to: no REPARTIR_ADDRESS and no head started on this "
                f"machine (none recorded in {state_dir()}). Start one with `repartir start "
                f"--head`, or pass address='HOST:PORT'")
        address = found
    host_port(address)
    return address


class StoredArg(NamedTuple):
    """A task argument that is a result kept on the node the task is sent to: the node
    passes its own ref to that object instead (no copy travels)."""

    object_id: bytes
