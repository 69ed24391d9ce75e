"""The session's files: its directory under ``temp_dir``, its shared memory in ``shm_dir``
and its spill directory (``spill/`` in the session directory, or
``repartir-spill-<session>`` in ``spill_dir``), created by the node, swept at start-up when
their driver is gone (used by the node and by ``repartir status``)."""

from __future__ import annotations

import json
import os
import shutil

__all__ = ["SHM_PREFIX", "SPILL_PREFIX", "pid_alive", "sweep_dead_sessions", "create_shm",
           "spill_dir_of"]

SHM_PREFIX = "repartir-"
SPILL_PREFIX = "repartir-spill-"  # a session's spill directory in a REPARTIR_SPILL_DIR


def spill_dir_of(spill_dir: str, session_dir: str, session: str) -> str:
    """The session's spill directory: ``spill/`` in ``session_dir`` when ``spill_dir`` is
    empty (the default), else ``repartir-spill-<session>`` in ``spill_dir``."""
    if not spill_dir:
        return os.path.join(session_dir, "spill")
    return os.path.join(spill_dir, f"{SPILL_PREFIX}{session}")


def sweep_dead_spill_dirs(spill_dir: str) -> None:
    """Remove the spill directories of sessions whose driver is gone from ``spill_dir`` (a
    session's name ends with its driver's pid); the default ones go with their session's
    directory."""
    try:
        entries = os.listdir(spill_dir)
    except OSError:
        return
    for name in entries:
        pid = name.rsplit("_", 1)[-1]
        if name.startswith(SPILL_PREFIX) and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(os.path.join(spill_dir, name), ignore_errors=True)


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
