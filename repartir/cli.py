"""The ``repartir`` command (also ``python -m repartir``).

    repartir start --head     start a cluster here (repartir start --help; docs/cluster.md)
    repartir start --address HOST:PORT   join a node to a cluster
    repartir stop             stop the cluster processes started on this machine
    repartir version          print the version
    repartir sessions         list this machine's sessions (live or left by dead drivers)
    repartir clean            remove what dead sessions left in the temp dir and /dev/shm
    repartir devices          list this machine's OpenCL devices (NVML figures for NVIDIA GPUs)
    repartir status           this machine's sessions, then its devices
    repartir token [--file F] write a new cluster token to a file of mode 0600
    repartir keygen [DIR]     write a CurveZMQ key pair (for --encrypt) into DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .cluster.curve import write_key_files
from .cluster.tokens import write_token_file
from .config import CLUSTER_KEY_NAME, cluster_key_dir, cluster_token_file, resolve
from .devices.discovery import discover, format_table
from .runtime.session import pid_alive, sweep_dead_sessions
from .cluster import commands as cluster_commands


def _sessions(temp_dir: str) -> list[dict]:
    out = []
    try:
        names = sorted(os.listdir(temp_dir))
    except OSError:
        return out
    for name in names:
        if not name.startswith("session_"):
            continue
        try:
            with open(os.path.join(temp_dir, name, "session.json")) as f:
                info = json.load(f)
        except (OSError, ValueError):
            info = {"session": name[len("session_"):], "pid": 0}
        info["alive"] = bool(info.get("pid")) and pid_alive(info["pid"])
        out.append(info)
    return out


def _secrets(args: argparse.Namespace) -> int:
    """``repartir token`` and ``repartir keygen``: never print a secret, only where it is."""
    try:
        if args.command == "token":
            path = args.file or cluster_token_file()
            write_token_file(path, overwrite=args.force)
            print(f"wrote a new cluster token to {path} (mode 0600); copy it to every node "
                  f"of the cluster the same way, or set REPARTIR_TOKEN to its content")
        else:
            public, secret = write_key_files(args.dir, args.name, overwrite=args.force)
            print(f"public key: {public}  (give it to the clients)\n"
                  f"secret key: {secret}  (mode 0600; keep it on the server)")
    except (FileExistsError, ValueError) as exc:
        print(f"repartir {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    """The parser of the commands other than a cluster's (``start``, ``stop``, ``status``
    of a cluster: :func:`repartir.cluster.commands.parser`)."""
    parser = argparse.ArgumentParser(prog="repartir", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version")
    sub.add_parser("sessions", help="list sessions on this machine")
    sub.add_parser("clean", help="remove what dead sessions left behind")
    sub.add_parser("devices", help="list the OpenCL devices of this machine")
    cluster_commands.add_start_stop(sub)  # run by cluster_commands.main
    cluster_commands.add_status(sub, help="sessions and devices of this machine, or with "
                                          "--address a cluster's nodes")
    p = sub.add_parser("token", help="write a new cluster token to a file of mode 0600")
    p.add_argument("--file", default=None,
                   help=f"where to write it (default: REPARTIR_TOKEN_FILE or "
                        f"{cluster_token_file()})")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p = sub.add_parser("keygen", help="write a CurveZMQ key pair (for --encrypt)")
    p.add_argument("dir", nargs="?", default=None,
                   help=f"directory of the key files (default: {cluster_key_dir()})")
    p.add_argument("--name", default=CLUSTER_KEY_NAME,
                   help="base name: NAME.key (public) and NAME.key_secret (mode 0600)")
    p.add_argument("--force", action="store_true", help="replace existing key files")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``repartir`` command.  Its exit status: 0, or 1 on an error it reports (and when
    its output's reader went away, as in ``repartir start --head | head -1``: what it
    started keeps running, and no traceback is shown)."""
    try:
        status = _main(argv)
        sys.stdout.flush()
        return status
    except BrokenPipeError:  # the Python docs' recipe ("Note on SIGPIPE", signal module)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if cluster_commands.handles(argv):  # start, stop; status of a cluster
        return cluster_commands.main(argv)
    args = parser().parse_args(argv)
    if args.command in ("token", "keygen"):
        return _secrets(args)
    cfg = resolve(num_cpus=1, object_store_memory=64 << 20, num_gpus=0)
    if args.command == "version":
        print(f"repartir {__version__} (Python {sys.version.split()[0]})")
    elif args.command == "devices":
        print(format_table(discover()))
    elif args.command in ("sessions", "status"):
        rows = _sessions(cfg.temp_dir)
        if not rows:
            print("no sessions")
        for r in rows:
            state = "alive" if r["alive"] else "dead"
            print(f"{r['session']}  pid {r.get('pid')}  {state}  "
                  f"num_cpus={r.get('num_cpus', '?')}")
        if args.command == "status":
            print("devices:")
            print("\n".join("  " + line for line in format_table(discover()).splitlines()))
    elif args.command == "clean":
        before = [r for r in _sessions(cfg.temp_dir) if not r["alive"]]
        sweep_dead_sessions(cfg.temp_dir, cfg.shm_dir)
        print(f"removed {len(before)} dead session(s)")
    return 0
