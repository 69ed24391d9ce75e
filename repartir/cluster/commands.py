"""``repartir start``, ``repartir stop`` and ``repartir status`` of a cluster
(docs/cluster.md, "Start, join, connect").

- ``repartir start --head [--port 6380] [--bind ADDR] [--num-cpus N] [--num-gpus G]
  [--resources JSON] [--object-store-memory BYTES] [--block]``: starts a node daemon that is
  the head (the registry) and a node, detached; prints its address, where the token is kept
  and the commands to join a node and to connect a driver.
- ``repartir start --address HOST:PORT [--token T] [...]``: starts a node daemon that joins
  that head (token: ``--token``, else ``REPARTIR_TOKEN``, else the token file).
- ``repartir stop``: stops the daemons that ``repartir start`` recorded on this machine
  (SIGTERM, then SIGKILL after ``CLUSTER_STOP_GRACE_S``), and no other process.
- ``repartir status [--address A]``: the head's registry: every node, alive or dead, its
  address, resources total and free, tasks queued and running.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from ..config import (CLUSTER_HEARTBEAT_S, CLUSTER_PORT, CLUSTER_START_TIMEOUT_S,
                      CLUSTER_STOP_GRACE_S, cluster_token_file)
from ..errors import RepartirError, TokenError, WireTimeoutError
from .curve import public_key
from .encryption import ClusterKeys, head_key_pair, record_head_key
from .reach import PROBE_AFTER_S, probe, recv_or_probe
from .sockets import Endpoint, is_local_address
from .state import (forget_processes, host_port, process_start_time, record_process,
                    recorded_processes, resolve_address, state_dir, tcp, write_address,
                    remove_address)
from .tokens import check_token, load_token_file, write_token_file

__all__ = ["main", "parser", "add_parsers", "add_start_stop", "add_status", "start", "stop",
           "status", "handles"]

COMMANDS = ("start", "stop")


def handles(argv: list[str]) -> bool:
    """Whether ``argv`` is a cluster command (``start``, ``stop``, ``status`` with
    ``--address`` or with a head recorded on this machine)."""
    if not argv:
        return False
    if argv[0] in COMMANDS:
        return True
    if argv[0] == "status":
        if any(a == "--address" or a.startswith("--address=") for a in argv[1:]):
            return True
        from_env = os.environ.get("REPARTIR_ADDRESS", "").strip()
        try:
            return bool(from_env) or resolve_address("auto") is not None
        except (RepartirError, ValueError):
            return False
    return False


def _port(text: str) -> int:
    """``--port``: a TCP port, 0 (a free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a whole number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 (take a free one) to 65535, got {port}")
    return port


def add_parsers(sub: argparse._SubParsersAction) -> None:
    add_start_stop(sub)
    add_status(sub)


def add_status(sub: argparse._SubParsersAction, **kwargs) -> argparse.ArgumentParser:
    """The ``status`` sub-command with its ``--address`` (``kwargs``: its help)."""
    p = sub.add_parser("status", **(kwargs or {
        "help": "the cluster's nodes (or this machine's sessions)"}))
    p.add_argument("--address", default=None,
                   help="a cluster head's HOST:PORT: list its nodes (default: REPARTIR_ADDRESS,"
                        " else the head started on this machine, if any)")
    return p


def add_start_stop(sub: argparse._SubParsersAction) -> None:
    """The ``start`` and ``stop`` sub-commands."""
    p = sub.add_parser("start", help="start a cluster's head, or join a node to one")
    p.add_argument("--head", action="store_true", help="start the head (and a node)")
    p.add_argument("--address", default=None, help="the head's HOST:PORT, to join it")
    p.add_argument("--port", type=_port, default=None,
                   help=f"the head's port (default {CLUSTER_PORT}; a joining node takes "
                        f"a free one)")
    p.add_argument("--bind", default="127.0.0.1",
                   help="the address to listen on (default 127.0.0.1: this machine only; "
                        "any other needs a cluster token)")
    p.add_argument("--token", default=None,
                   help="the cluster token (default: REPARTIR_TOKEN, else the token file)")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--num-gpus", type=float, default=None)
    p.add_argument("--resources", default=None,
                   help='custom resources as JSON, e.g. \'{"big_mem": 1}\'')
    p.add_argument("--object-store-memory", type=int, default=None, help="bytes")
    p.add_argument("--encrypt", action="store_true",
                   help="encrypt every connection with CurveZMQ (on top of the token's "
                        "signatures): the head makes or loads its key pair, a joining node "
                        "needs the head's public key (--server-key)")
    p.add_argument("--key-file", default=None,
                   help="with --head --encrypt: the head's .key_secret file (default: "
                        "~/.config/repartir/keys/repartir.key_secret, made when missing)")
    p.add_argument("--server-key", default=None,
                   help="with --address: the public key of a head started with --encrypt "
                        "(40 characters, or its .key file; default: REPARTIR_SERVER_KEY)")
    p.add_argument("--block", action="store_true",
                   help="stay in the foreground until the node stops (Ctrl-C stops it)")
    sub.add_parser("stop", help="stop the cluster processes started on this machine")


def _err(text: str) -> int:
    print(f"repartir: {text}", file=sys.stderr)
    return 1


def _token(args: argparse.Namespace) -> tuple[str | None, str]:
    """(token, where it is kept) for ``start``; the head makes one if there is none."""
    if args.token:
        return check_token(args.token, "--token"), "given with --token"
    env = os.environ.get("REPARTIR_TOKEN", "").strip()
    if env:
        return check_token(env, "REPARTIR_TOKEN"), "REPARTIR_TOKEN"
    path = cluster_token_file()
    if os.path.exists(path):
        return load_token_file(path), path
    if args.head:
        return write_token_file(path), path
    return None, path


def start(args: argparse.Namespace) -> int:
    if args.head == (args.address is not None):
        return _err("give --head (start a cluster) or --address HOST:PORT (join one)")
    try:
        if args.address is not None:
            host_port(args.address)
        if args.resources:
            _resources(args.resources)
        token, where = _token(args)
        key_file, head_key, server_key, made = _keys(args)
    except (ValueError, RepartirError, FileNotFoundError) as exc:
        return _err(str(exc))
    target = host_port(args.address)[0] if args.address else args.bind
    if token is None and not (is_local_address(tcp(f"{target}:1"))
                              and is_local_address(tcp(f"{args.bind}:1"))):
        return _err(f"refusing to start a node that listens on {args.bind} or reaches "
                    f"{target} without a cluster token: copy the head's token file to "
                    f"{where} (mode 0600), or pass --token / set REPARTIR_TOKEN")
    sd = state_dir(create=True)
    ready = os.path.join(sd, f"ready-{os.getpid()}-{time.monotonic_ns()}.json")
    cmd = [sys.executable, "-m", "repartir.cluster.node", "--bind", args.bind,
           "--ready-file", ready]
    cmd += ["--head"] if args.head else ["--address", args.address]
    cmd += ["--key-file", key_file] if key_file else []
    cmd += ["--server-key", server_key.decode()] if server_key else []
    for flag in ("port", "num_cpus", "num_gpus", "resources", "object_store_memory"):
        value = getattr(args, flag)
        if value is not None:
            cmd += ["--" + flag.replace("_", "-"), str(value)]
    env = dict(os.environ)
    env.pop("REPARTIR_ADDRESS", None)  # the daemon runs a local node: init() must not connect
    if token is not None:
        env["REPARTIR_TOKEN"] = token
    log_path = os.path.join(sd, f"node-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                start_new_session=not args.block)
    deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
    probe_at = None if args.head else time.monotonic() + PROBE_AFTER_S
    info = None
    while time.monotonic() < deadline:
        if probe_at is not None and time.monotonic() >= probe_at:
            probe_at = None
            try:  # nothing listens at --address: say so now, not at the timeout (reach.py)
                probe(args.address)
            except RepartirError as exc:
                info = {"error": str(exc)}
                break
        if os.path.exists(ready):
            with open(ready) as f:
                info = json.load(f)
            os.unlink(ready)
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if info is None or "error" in info:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if not args.head and probe_at is not None:  # failed before the probe: tell a
            try:                                    # failure to connect apart (reach.py)
                probe(args.address)
            except RepartirError as exc:
                info = {"error": str(exc)}
        why = info["error"] if info else _tail(log_path)
        return _err(f"the node did not start: {why}\n(log: {log_path})")
    address = info["address"]
    record_process(proc.pid, "head" if args.head else "node", address)
    if args.head:
        write_address(address)
        record_head_key(address, head_key)
        print(f"Started the head of a repartir cluster at {address} (node "
              f"{info['node_id'][:12]}, pid {proc.pid}; log {log_path}).\n"
              f"The cluster token is in {where}" + (" (mode 0600)." if os.sep in where else ".")
              + "\n\nTo join a node from another machine: copy that token file there (mode "
              f"0600, same path or REPARTIR_TOKEN_FILE), then run\n"
              f"    repartir start --address {address}"
              + (f" --server-key '{head_key.decode()}'" if head_key else "")
              + ("" if args.bind != "127.0.0.1" else
                 "\n(this head listens on 127.0.0.1 only: start it with --bind ADDR to "
                 "reach it from other machines)")
              + "\nTo connect a driver:\n"
              f"    repartir.init(address=\"{address}\")   # or address=\"auto\" on this "
              f"machine, or REPARTIR_ADDRESS={address}"
              + (f"\n    with REPARTIR_SERVER_KEY='{head_key.decode()}' in its environment "
                 f"(not needed on this machine)" if head_key else "")
              + "\nTo see the nodes: repartir status    To stop: repartir stop"
              + (_encryption_note(key_file, head_key, made) if head_key else ""))
    else:
        print(f"Node {info['node_id'][:12]} (pid {proc.pid}, serving on {address}) joined "
              f"the cluster at {args.address}. Log: {log_path}. Stop it with: repartir stop")
    sys.stdout.flush()
    if args.block:  # SIGTERM to this process (a container's pid 1, srun) stops the node
        previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
        try:
            proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
        forget_processes({proc.pid})
    return 0


def _resources(text: str) -> dict:
    """``--resources``: a JSON object of names to amounts.

    Raises:
        ValueError: not JSON, not an object, or an amount that is not a number >= 0; the
            message names --resources and shows one that is right.
    """
    example = "e.g. --resources '{\"big_mem\": 1}'"
    try:
        res = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--resources is not valid JSON ({exc}): give a JSON object of "
                         f"resource names to amounts, {example}") from None
    if not isinstance(res, dict):
        raise ValueError(f"--resources is a JSON object of resource names to amounts, "
                         f"{example}; got {text!r}")
    for k, v in res.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"--resources: the amount of {k!r} is {v!r}, not a number "
                             f">= 0 ({example})")
    return res


def _keys(args: argparse.Namespace) -> tuple[str | None, bytes | None, bytes | None, bool]:
    """(the head's key file, its public key, a joining node's server key, whether the key
    file was made now) for ``start``; all ``None`` without encryption."""
    if args.head:
        if args.server_key:
            raise ValueError("--server-key is for a node joining an encrypted head "
                             "(--address); the head itself takes --encrypt [--key-file F]")
        if not args.encrypt:
            if args.key_file:
                raise ValueError("--key-file is the key of an encrypted head: add --encrypt")
            return None, None, None, False
        path, keys, made = head_key_pair(args.key_file)
        return path, keys.public, None, made
    if args.key_file:
        raise ValueError("--key-file is for the head (--head --encrypt); a joining node "
                         "takes the head's public key with --server-key")
    given = args.server_key or os.environ.get("REPARTIR_SERVER_KEY", "").strip() or None
    if given is None:
        if args.encrypt:
            raise ValueError("a node joining an encrypted cluster needs the head's public "
                             "key: --server-key KEY (printed by `repartir start --head "
                             "--encrypt`), or REPARTIR_SERVER_KEY")
        return None, None, None, False
    return None, None, public_key(given), False


def _encryption_note(key_file: str, public: bytes, made: bool) -> str:
    public_file = key_file[:-len("_secret")] if key_file.endswith(".key_secret") else ""
    return (f"\n\nEncryption (CurveZMQ) is on for every connection of this cluster. The "
            f"head's key pair is in {key_file}" + (" (made now)" if made else "")
            + " (mode 0600: keep it on this machine). Copy to the other machines, with the "
            f"token file, the head's public key (not a secret, but give it over a channel "
            f"you trust):\n    {public.decode()}"
            + (f"\n(also in {public_file})" if public_file and os.path.exists(public_file)
               else "")
            + "\nNodes learn each other's keys from the head.")


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip() or "(empty log)"
    except OSError:
        return "(no log)"


def stop(args: argparse.Namespace) -> int:
    rows = recorded_processes()
    ours = []
    for r in rows:
        start = process_start_time(r["pid"])
        if start is not None and start == r.get("start"):
            ours.append(r)
    for r in ours:
        try:
            os.kill(r["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + CLUSTER_STOP_GRACE_S
    left = list(ours)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [r for r in left if process_start_time(r["pid"]) == r.get("start")]
    for r in left:
        try:
            os.kill(r["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    forget_processes({r["pid"] for r in rows})
    if any(r["role"] == "head" for r in rows):
        remove_address()
    for r in ours:
        print(f"stopped the {r['role']} (pid {r['pid']}, {r['address']})"
              + (" with SIGKILL" if r in left else ""))
    if not ours:
        print(f"no repartir cluster process of this machine is running (none recorded in "
              f"{state_dir()})")
    return 0


def query_nodes(address: str, timeout: float = 5.0) -> list[dict]:
    """The head's registry.

    Raises:
        RepartirError: nothing listens at ``address``, or the head did not answer within
            ``timeout``.
        TokenError: the head refused our token.
    """
    with Endpoint.connect(tcp(address), **ClusterKeys.for_driver(address).to_head()) as ep:
        ep.send(("nodes",))
        try:
            return recv_or_probe(ep, address, timeout).value[1]
        except WireTimeoutError:
            raise RepartirError(f"the head at {address} did not answer within {timeout:g} s: "
                                f"is it running (repartir start --head) and reachable?") \
                from None


def _fmt(res: dict) -> str:
    out = []
    for k, v in res.items():
        if k in ("memory", "object_store_memory"):
            out.append(f"{k}={v / 2**30:.1f}GiB")
        else:
            out.append(f"{k}={v:g}")
    return " ".join(out)


def status(args: argparse.Namespace) -> int:
    try:
        address = resolve_address(args.address)
        nodes = query_nodes(address, timeout=max(5.0, 3 * CLUSTER_HEARTBEAT_S))
    except (RepartirError, TokenError, ValueError) as exc:
        return _err(str(exc))
    alive = sum(n["Alive"] for n in nodes)
    print(f"cluster at {address}: {alive} node(s) alive, {len(nodes) - alive} dead")
    for n in nodes:
        state = "alive" if n["Alive"] else "DEAD"
        head = " (head)" if n.get("Head") else ""
        ago = n.get("HeardAgoS")
        heard = "" if ago is None else f" (heard {ago:g} s ago)"
        tasks = (f"tasks: {n.get('Running', 0)} running, {n.get('Queued', 0)} queued{heard}"
                 if n["Alive"] else f"tasks: unknown{heard}")
        print(f"node {n['NodeID'][:12]}{head}  {state}  {n['NodeManagerAddress']}  "
              f"pid {n.get('Pid')}  {tasks}")
        print(f"    total: {_fmt(n['Resources'])}")
        used = {k: v - n["Available"].get(k, 0.0) for k, v in n["Resources"].items()
                if k != "object_store_memory"}
        print(f"    used:  {_fmt(used)}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The parser of ``repartir start``, ``stop`` and ``status`` (of a cluster)."""
    parser = argparse.ArgumentParser(prog="repartir")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    return parser


def main(argv: list[str]) -> int:
    """Run ``start``, ``stop`` or ``status`` (cluster) with ``argv``."""
    args = parser().parse_args(argv)
    return {"start": start, "stop": stop, "status": status}[args.command](args)
