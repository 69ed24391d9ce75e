"""The composition root of one machine: session, shared memory, worker processes.

``Node.start`` makes the session directory (``/tmp/repartir-sessions/session_<time>_<pid>/``, with
``session.json``, and the workers' logs when their output is not forwarded), creates the
scheduler segment and the arena in ``/dev/shm`` and **unlinks them at once**: every process of
the node holds them through inherited file descriptors, so nothing of the session can outlive
its processes, even after ``SIGKILL`` of the driver.  It then starts the workers, and a
monitor thread per worker that reports a worker's death to the owner of the task it was
running and starts a replacement.

The stdout and stderr of every worker and actor process go, line by line and prefixed with
the process, to the driver's own ``sys.stdout`` and ``sys.stderr`` (one thread for all of
them: :mod:`repartir.runtime.output`), or, with ``REPARTIR_LOG_TO_DRIVER=0``, to
``worker-<slot>.log`` in the session directory.

Start-up also sweeps away what dead sessions left (their directories and any
``/dev/shm/repartir-<session>-*`` name).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import mmap
import os
import shutil
import subprocess
import sys
import threading
import time

from ..config import Config, STUCK_WARNING_S, resource_names, shm_free_bytes
from ..errors import ObjectStoreFullError
from ..scheduler.segment import Segment, SlotState, segment_bytes
from ..store.arena import Arena
from ..scheduler.record import NRES
from .output import OutputForwarder
from .handle_table import HandleTable
from .node_actors import ActorRecord, NodeActors
from .session import (SHM_PREFIX, create_shm, spill_dir_of, sweep_dead_sessions,
                      sweep_dead_spill_dirs)
from .supervisor import Supervisor
from .threads import spawn_env, threads_for, user_set

__all__ = ["Node"]

_retired: list = []  # (when, mmap) of scheduler segments of stopped nodes
_RETIRE_AFTER = 1.0  # seconds: a thread parked in a segment wakes within 50 ms and leaves


def _retire(mm: mmap.mmap) -> None:
    """Unmap the segment of a stopped node -- later: a thread of this process may still be
    inside a futex wait on it, and would crash taking the mutex after it (the wait ends
    within 50 ms, then the thread sees the session closed).  Each call unmaps the segments
    retired over a second before it, so mappings do not pile up over init/shutdown cycles:
    only those of the last second's cycles remain, until the next shutdown."""
    now = time.monotonic()
    keep = []
    for when, old in _retired:
        if now - when < _RETIRE_AFTER:
            keep.append((when, old))
            continue
        try:
            old.close()
        except BufferError:  # still exported somewhere in this process
            keep.append((when, old))
    keep.append((now, mm))
    _retired[:] = keep


class Node(NodeActors, Supervisor):
    """The local node: owns the shared memory and the worker processes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        stamp, pid, n = time.strftime('%Y-%m-%d_%H-%M-%S'), os.getpid(), 0
        self.session = f"{stamp}_{pid}"
        while os.path.exists(os.path.join(config.temp_dir, f"session_{self.session}")):
            n += 1  # a second init() of this process within the same second
            self.session = f"{stamp}.{n}_{pid}"
        self.session_dir = os.path.join(config.temp_dir, f"session_{self.session}")
        self.node_id = os.urandom(28).hex()  # Ray's NodeID size; get_runtime_context()
        self.spill_dir = spill_dir_of(config.spill_dir, self.session_dir, self.session)
        self.procs: dict[int, subprocess.Popen] = {}
        self.life_r = self.life_w = -1
        self.stopping = False
        self.startup_failures = 0
        self.fatal: str | None = None  # set when workers cannot run at all
        self.actors: dict[int, ActorRecord] = {}
        self.actor_procs: dict[int, subprocess.Popen] = {}
        # (namespace, name) -> the fields of a handle of the actor (actor._rebuild_handle)
        self.named_actors: dict[tuple[str, str], tuple] = {}
        self.handles = HandleTable()  # every actor's handles, in every process of the node
        self._handles_lock = threading.Lock()
        self._naming = threading.Lock()  # makes "is the name free? then create" one step
        # actors whose last handle is gone, for the driver's client to end (its poll)
        self.actor_ends: collections.deque[tuple] = collections.deque()
        self.pending_actors: list[int] = []  # slots of actors waiting for resources, in order
        self._lock = threading.Lock()
        self.output: OutputForwarder | None = None  # None: output goes to log files
        self.stuck_warning_s = STUCK_WARNING_S  # (tests shorten it)
        # BLAS/OpenMP threads follow each task's CPUs unless the user set them (threads.py)
        self.blas_managed = not user_set(os.environ)

    # -- start -----------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        os.makedirs(cfg.temp_dir, exist_ok=True)
        sweep_dead_sessions(cfg.temp_dir, cfg.shm_dir)
        self._check_shm(cfg)
        os.makedirs(self.session_dir)
        self._make_spill_dir(cfg)
        # the driver, workers up to the cap, one spare, the actors, then the workers started
        # beyond the cap while every worker is blocked: scans of the segment stop at the
        # highest slot ever used, so the rarely used slots come last
        self.first_actor_slot = cfg.max_workers + 2
        self.first_stuck_slot = self.first_actor_slot + cfg.max_actors
        self.nslots = self.first_stuck_slot + cfg.max_stuck_workers
        sched_size = segment_bytes(self.nslots, cfg.deque_capacity, cfg.inbox_bytes)
        self.sched_fd = create_shm(cfg.shm_dir, f"{SHM_PREFIX}{self.session}-sched",
                                    sched_size)
        self.arena_fd = create_shm(cfg.shm_dir, f"{SHM_PREFIX}{self.session}-arena",
                                    cfg.object_store_memory)
        self.sched_size = sched_size
        self.segment = Segment(mmap.mmap(self.sched_fd, sched_size), self.nslots,
                               cfg.deque_capacity, cfg.inbox_bytes, create=True)
        self.arena = Arena(self.arena_fd, cfg.object_store_memory, create=True,
                           spill_dir=self.spill_dir)
        self.segment.claim_slot(SlotState.DRIVER, os.getpid(), 0)
        self.segment.set_totals(self.resource_totals())
        self.life_r, self.life_w = os.pipe()
        os.set_inheritable(self.life_r, False)
        with open(os.path.join(self.session_dir, "session.json"), "w") as f:
            json.dump({"pid": os.getpid(), "session": self.session, "node_id": self.node_id,
                       "num_cpus": cfg.num_cpus,
                       "object_store_memory": cfg.object_store_memory}, f)
        if cfg.log_to_driver:
            self.output = OutputForwarder()
        for i in range(cfg.num_cpus):
            self._spawn(i + 1)
        self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                            name="repartir-supervisor")
        self._supervisor.start()

    def resource_names(self) -> list[str]:
        """Resource names by vector index: CPU, GPU, memory, then the custom ones sorted."""
        return resource_names(self.config)

    def resource_totals(self) -> tuple[int, ...]:
        cfg = self.config
        v = [int(cfg.num_cpus * 1000), int(round(cfg.num_gpus * 1000)), cfg.memory * 1000]
        v += [int(round(a * 1000)) for _, a in cfg.resources]
        return tuple(v + [0] * (NRES - len(v)))

    def _check_shm(self, cfg: Config) -> None:
        try:
            free = shm_free_bytes(cfg.shm_dir)
        except OSError as exc:
            raise ObjectStoreFullError(
                f"cannot use {cfg.shm_dir} for the object store ({exc.strerror}); set "
                f"REPARTIR_SHM_DIR to a tmpfs directory") from None
        if free < cfg.object_store_memory:
            raise ObjectStoreFullError(
                f"{cfg.shm_dir} has {free / 2**20:,.0f} MiB free but the object store asks "
                f"for {cfg.object_store_memory / 2**20:,.0f} MiB. Pass a smaller "
                f"object_store_memory= to init() (or REPARTIR_OBJECT_STORE_MEMORY), or give "
                f"{cfg.shm_dir} more room (e.g. `docker run --shm-size=...`).")

    def _make_spill_dir(self, cfg: Config) -> None:
        if cfg.spill_dir:
            if not os.path.isdir(cfg.spill_dir):
                raise ValueError(
                    f"REPARTIR_SPILL_DIR={cfg.spill_dir!r} is not a directory: create it, or "
                    f"unset the variable to spill into the session directory")
            sweep_dead_spill_dirs(cfg.spill_dir)
        try:
            os.makedirs(self.spill_dir)
        except OSError as exc:
            raise ValueError(
                f"cannot create the spill directory {self.spill_dir} ({exc.strerror}): point "
                f"REPARTIR_SPILL_DIR at a writable directory") from None

    def _spawn(self, slot: int, actor: dict | None = None,
               state: int = SlotState.STARTING) -> None:
        cfg = self.config
        blas_threads = None
        if self.blas_managed:  # a worker starts at one thread: a default task's CPU
            blas_threads = threads_for(self.actors[slot].demand[0] if actor else 1000)
        spec = {
            "actor": actor,
            "blas_threads": blas_threads,
            "slot": slot,
            "session": self.session,
            "node_id": self.node_id,
            "sched_fd": self.sched_fd,
            "sched_size": self.sched_size,
            "arena_fd": self.arena_fd,
            "arena_size": cfg.object_store_memory,
            "spill_dir": self.spill_dir,
            "life_fd": self.life_r,
            "config": dataclasses.asdict(cfg),
            "sys_path": [p if p else os.getcwd() for p in sys.path],
            "cwd": os.getcwd(),
        }
        env = dict(os.environ, REPARTIR_WORKER_SPEC=json.dumps(spec))
        if blas_threads is not None:
            env.update(spawn_env(blas_threads))
        # -u: a task's print reaches the pipe (or log) at once, and is not lost in a buffer
        # when the process leaves with os._exit
        cmd = [sys.executable, "-u", "-m", "repartir.runtime.worker", self.session]
        pass_fds = (self.sched_fd, self.arena_fd, self.life_r)
        output = self.output
        if output is None:
            log = open(os.path.join(self.session_dir, f"worker-{slot}.log"), "ab")
            try:
                proc = subprocess.Popen(cmd, pass_fds=pass_fds, env=env,
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        close_fds=True)
            finally:
                log.close()
        else:
            # os.pipe: both ends non-inheritable; Popen puts only the write ends in the child
            # (as its fds 1 and 2), so no other child ever holds a read end
            out_r, out_w = os.pipe()
            try:
                err_r, err_w = os.pipe()
            except OSError:
                os.close(out_r)
                os.close(out_w)
                raise
            try:
                proc = subprocess.Popen(cmd, pass_fds=pass_fds, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                                        close_fds=True)
            except BaseException:
                os.close(out_r)
                os.close(err_r)
                raise
            finally:
                os.close(out_w)
                os.close(err_w)
            name = actor["class_name"].rsplit(".", 1)[-1] if actor else "worker"
            output.add(proc, f"({name} pid={proc.pid}) ", out_r, err_r)
        self.segment.claim_slot(state, proc.pid, slot)
        with self._lock:
            (self.actor_procs if actor else self.procs)[slot] = proc
        threading.Thread(target=self._watch_actor if actor else self._watch, args=(slot, proc),
                         daemon=True, name=f"repartir-watch-{slot}").start()

    # -- actors ----------------------------------------------------------------------
















    # -- faults ----------------------------------------------------------------------







    # -- stop ------------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self.procs.values()]

    def process_slots(self) -> list[int]:
        """Slots of the node's live worker and actor processes."""
        with self._lock:
            return list(self.procs) + list(self.actor_procs)

    def stop(self, timeout: float = 2.0, unmap: bool = True) -> None:
        """Stop the workers (asked, then killed after ``timeout``), unmap (unless ``unmap``
        is false: a thread of this process may still use the segment), remove the session
        directory."""
        self.stopping = True
        started = hasattr(self, "arena")  # else start() failed part-way
        if hasattr(self, "segment"):
            self.segment.begin_shutdown()
        if self.life_w >= 0:
            os.close(self.life_w)  # the workers see end-of-file and leave
            self.life_w = -1
        with self._lock:
            procs = list(self.procs.values()) + list(self.actor_procs.values())
        end = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.output is not None:
            self.output.close()  # forwards what the processes left in their pipes
        for fd in (self.life_r, getattr(self, "sched_fd", -1), getattr(self, "arena_fd", -1)):
            try:
                os.close(fd)
            except OSError:
                pass
        if started:
            self.arena.close()
        supervisor = getattr(self, "_supervisor", None)
        if supervisor is not None:
            supervisor.join(5)
        if unmap and hasattr(self, "segment") and not (supervisor and supervisor.is_alive()):
            _retire(self.segment.mm)
        shutil.rmtree(self.session_dir, ignore_errors=True)
        shutil.rmtree(self.spill_dir, ignore_errors=True)  # (in the session dir by default)
