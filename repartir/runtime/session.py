"""The session's files: its directory under ``temp_dir`` and its shared memory in
``shm_dir``, created by the node, swept at start-up when their driver is gone (used by the
node and by ``repartir status``)."""

from __future__ import annotations

import json
import os
import shutil

__all__ = ["SHM_PREFIX", "pid_alive", "sweep_dead_sessions", "create_shm"]

SHM_PREFIX = "repartir-"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_sessions(temp_dir: str, shm_dir: str) -> None:
    """Remove directories and shared memory of sessions whose driver is gone."""
    try:
        entries = os.listdir(temp_dir)
    except OSError:
        return
    for name in entries:
        if not name.startswith("session_"):
            continue
        path = os.path.join(temp_dir, name)
        try:
            with open(os.path.join(path, "session.json")) as f:
                pid = json.load(f)["pid"]
        except (OSError, ValueError, KeyError):
            pid = int(name.rsplit("_", 1)[-1]) if name.rsplit("_", 1)[-1].isdigit() else 0
        if pid and pid_alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        session = name[len("session_"):]
        try:
            for f in os.listdir(shm_dir):
                if f.startswith(f"{SHM_PREFIX}{session}-"):
                    os.unlink(os.path.join(shm_dir, f))
        except OSError:
            pass


def create_shm(shm_dir: str, name: str, size: int) -> int:
    path = os.path.join(shm_dir, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.unlink(path)  # held by descriptors only from now on
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd
