"""The ``repartir`` command (also ``python -m repartir``).

    repartir start --head     start a cluster here (repartir start --help; docs/cluster-nodes.md)
    repartir start --address HOST:PORT   join a node to a cluster
    repartir stop             stop the cluster processes started on this machine
    repartir version          print the version
    repartir sessions         list this machine's sessions (live or left by dead drivers)
    repartir clean            remove what dead sessions left in the temp dir and /dev/shm
    repartir devices          list this machine's OpenCL devices (NVML figures for NVIDIA GPUs)
    repartir status           this machine's sessions, then its devices
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .config import resolve
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if cluster_commands.handles(argv):  # start, stop; status of a cluster
        return cluster_commands.main(argv)
    parser = argparse.ArgumentParser(prog="repartir", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version")
    sub.add_parser("sessions", help="list sessions on this machine")
    sub.add_parser("clean", help="remove what dead sessions left behind")
    sub.add_parser("devices", help="list the OpenCL devices of this machine")
    sub.add_parser("status", help="sessions and devices of this machine")
    args = parser.parse_args(argv)
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
