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

import dataclasses
import itertools
import json
import mmap
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
import weakref

from ..config import STUCK_SPAWN_S, Config, shm_free_bytes
from ..errors import ObjectStoreFullError
from ..scheduler.segment import Segment, SlotState, segment_bytes
from ..store.arena import BLOCK_HEADER, Arena
from ..scheduler import record
from ..scheduler.record import NRES
from ..errors import RepartirError
from .actor_life import CTOR_FAILED_EXIT
from .output import OutputForwarder
from .messages import (ACTOR_DIED, CANCEL, CRASH, MSG_ACTOR_EPOCH, MSG_CALL, MSG_CRASHED,
                       MSG_DONE, MSG_ITEM, MSG_LARGE, MSG_OWNER_DIED, MSG_RELEASE,
                       EXITED_ON_PURPOSE, OK, TIMEOUT, stop_task)

__all__ = ["Node"]

_SHM_PREFIX = "repartir-"


def _pid_alive(pid: int) -> bool:
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
        if pid and _pid_alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        session = name[len("session_"):]
        try:
            for f in os.listdir(shm_dir):
                if f.startswith(f"{_SHM_PREFIX}{session}-"):
                    os.unlink(os.path.join(shm_dir, f))
        except OSError:
            pass


def _create_shm(shm_dir: str, name: str, size: int) -> int:
    path = os.path.join(shm_dir, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.unlink(path)  # held by descriptors only from now on
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _ActorRecord:
    def __init__(self, actor_id: bytes, config: dict, demand: tuple, held) -> None:
        self.actor_id = actor_id
        self.config = config
        self.demand = demand
        self.held = held  # refs among the constructor's arguments
        self.restarts_left = config["max_restarts"]
        self.killed = False
        self.exiting = False  # its last handle died: it ends after the calls made before
        self.kill_cause = "it was killed by repartir.kill()"
        self.pending = False  # waiting for its resources, not started yet
        self.pending_since = 0.0  # time.monotonic() when it began to wait
        self.warned = False  # the "waits for resources" warning was given
        self.dead = False


_retired: list = []  # (when, mmap) of scheduler segments of stopped nodes
#: An extra worker starts only once the wish for one has held on every supervisor tick for
#: this long. A worker that parks gives its CPU back and takes it again when woken, so for a
#: few microseconds a queued task "fits" while every worker is busy; starting a process on
#: that alone oversubscribes the node (seen: a third worker for 2 CPUs running flat tiny
#: tasks). A worker blocked in ``get`` lends its CPU far longer than this.
EXTRA_WORKER_AFTER_S = 0.02
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


class Node:
    """The local node: owns the shared memory and the worker processes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        stamp, pid, n = time.strftime('%Y-%m-%d_%H-%M-%S'), os.getpid(), 0
        self.session = f"{stamp}_{pid}"
        while os.path.exists(os.path.join(config.temp_dir, f"session_{self.session}")):
            n += 1  # a second init() of this process within the same second
            self.session = f"{stamp}.{n}_{pid}"
        self.session_dir = os.path.join(config.temp_dir, f"session_{self.session}")
        self.procs: dict[int, subprocess.Popen] = {}
        self.life_r = self.life_w = -1
        self.stopping = False
        self.startup_failures = 0
        self.fatal: str | None = None  # set when workers cannot run at all
        self.actors: dict[int, _ActorRecord] = {}
        self.actor_procs: dict[int, subprocess.Popen] = {}
        self.named_actors: dict[tuple[str, str], object] = {}  # handles without a life
        self.actor_lives = weakref.WeakValueDictionary()  # actor id -> its handles' count
        self.detached: set[bytes] = set()  # actors with lifetime="detached"
        self.pending_actors: list[int] = []  # slots of actors waiting for resources, in order
        self._lock = threading.Lock()
        self.output: OutputForwarder | None = None  # None: output goes to log files
        self.stuck_warning_s = 10.0  # warn when queued tasks cannot start for this long

    # -- start -----------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        os.makedirs(cfg.temp_dir, exist_ok=True)
        sweep_dead_sessions(cfg.temp_dir, cfg.shm_dir)
        self._check_shm(cfg)
        os.makedirs(self.session_dir)
        # the driver, workers up to the cap, one spare, the actors, then the workers started
        # beyond the cap while every worker is blocked: scans of the segment stop at the
        # highest slot ever used, so the rarely used slots come last
        self.first_actor_slot = cfg.max_workers + 2
        self.first_stuck_slot = self.first_actor_slot + cfg.max_actors
        self.nslots = self.first_stuck_slot + cfg.max_stuck_workers
        sched_size = segment_bytes(self.nslots, cfg.deque_capacity, cfg.inbox_bytes)
        self.sched_fd = _create_shm(cfg.shm_dir, f"{_SHM_PREFIX}{self.session}-sched",
                                    sched_size)
        self.arena_fd = _create_shm(cfg.shm_dir, f"{_SHM_PREFIX}{self.session}-arena",
                                    cfg.object_store_memory)
        self.sched_size = sched_size
        self.segment = Segment(mmap.mmap(self.sched_fd, sched_size), self.nslots,
                               cfg.deque_capacity, cfg.inbox_bytes, create=True)
        self.arena = Arena(self.arena_fd, cfg.object_store_memory, create=True)
        self.segment.claim_slot(SlotState.DRIVER, os.getpid(), 0)
        self.segment.set_totals(self.resource_totals())
        self.life_r, self.life_w = os.pipe()
        os.set_inheritable(self.life_r, False)
        with open(os.path.join(self.session_dir, "session.json"), "w") as f:
            json.dump({"pid": os.getpid(), "session": self.session,
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
        """Resource names by vector index: CPU, GPU, then the custom ones sorted."""
        return ["CPU", "GPU"] + [name for name, _ in self.config.resources]

    def resource_totals(self) -> tuple[int, ...]:
        cfg = self.config
        v = [int(cfg.num_cpus * 1000), int(round(cfg.num_gpus * 1000))]
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

    def _spawn(self, slot: int, actor: dict | None = None,
               state: int = SlotState.STARTING) -> None:
        cfg = self.config
        spec = {
            "actor": actor,
            "slot": slot,
            "session": self.session,
            "sched_fd": self.sched_fd,
            "sched_size": self.sched_size,
            "arena_fd": self.arena_fd,
            "arena_size": cfg.object_store_memory,
            "life_fd": self.life_r,
            "config": dataclasses.asdict(cfg),
            "sys_path": [p if p else os.getcwd() for p in sys.path],
            "cwd": os.getcwd(),
        }
        env = dict(os.environ, REPARTIR_WORKER_SPEC=json.dumps(spec))
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

    def create_actor(self, actor_id: bytes, creation: bytes, config: dict,
                     demand: tuple, held: list | None = None) -> int:
        """Start an actor process; returns its slot.  ``held``: refs among the constructor's
        arguments, kept alive as long as the actor may need them (restarts included).

        Raises:
            RepartirError: every actor slot is taken (``REPARTIR_MAX_ACTORS``).
        """
        seg = self.segment
        deadline = time.monotonic() + 30
        while True:
            with self._lock:
                slot = next((i for i in range(self.first_actor_slot, self.first_stuck_slot)
                             if (i not in self.actors or self.actors[i].dead)
                             and seg.slot_state(i)[0] in (SlotState.FREE, SlotState.DEAD,
                                                          SlotState.ACTOR_DEAD)), None)
                if slot is not None:
                    path = os.path.join(self.session_dir, f"actor-{actor_id.hex()}.pkl")
                    with open(path, "wb") as f:
                        f.write(creation)
                    config = dict(config, creation_file=path)
                    self.actors[slot] = _ActorRecord(actor_id, config, demand, held)
                    break
                exiting = any(r.exiting and not r.dead for r in self.actors.values())
            if not exiting or time.monotonic() > deadline:
                raise RepartirError(
                    f"this node already runs {len(self.actors)} actors, its maximum; kill "
                    f"actors you no longer need or raise REPARTIR_MAX_ACTORS")
            time.sleep(0.005)  # actors whose last handle died are finishing their calls
        for raw in seg.inboxes[slot].drain():  # nothing meant for an earlier actor remains
            self._open_large(slot, pickle.loads(raw))  # frees a large message's block
        seg.bump_actor_epoch(slot, actor_id)
        seg.set_note(slot, "")
        if any(demand) and not self._fits(demand):
            # as in Ray, the actor waits for its resources (its calls wait in its inbox);
            # the supervisor starts it when they are free
            seg.set_slot_state(slot, SlotState.STARTING)
            with self._lock:
                self.actors[slot].pending = True
                self.actors[slot].pending_since = time.monotonic()
                self.pending_actors.append(slot)
            return slot
        self._start_actor(slot)
        return slot

    def _fits(self, demand: tuple) -> bool:
        """Whether ``demand`` is free now (idle workers' CPU tokens count as free)."""
        seg = self.segment
        avail = list(seg.available())
        avail[0] += 1000 * seg.free_tokens()
        return all(d <= a for d, a in zip(demand, avail) if d > 0)

    def _start_actor(self, slot: int) -> None:
        rec = self.actors[slot]
        rec.pending = False
        if any(rec.demand):
            self.segment.force_acquire(rec.demand, 0)  # actors' reservations: the driver's
        self._spawn(slot, actor=rec.config)

    def _start_pending_actors(self) -> None:
        """Start the pending actors whose resources are free now, oldest first."""
        with self._lock:
            pending = list(self.pending_actors)
        for slot in pending:
            rec = self.actors.get(slot)
            if rec is None or not rec.pending:
                with self._lock:
                    self.pending_actors.remove(slot)
                continue
            if self._fits(rec.demand):
                with self._lock:
                    if not rec.pending:  # killed meanwhile
                        continue
                    self.pending_actors.remove(slot)
                try:
                    self._start_actor(slot)
                except OSError:  # the node is stopping
                    return
            elif not rec.warned and time.monotonic() - rec.pending_since > self.stuck_warning_s:
                rec.warned = True
                self._warn_pending_actor(rec, time.monotonic() - rec.pending_since)

    def _free_resources_text(self) -> str:
        """What the node has free now, e.g. ``CPU 0, GPU 1``."""
        seg = self.segment
        names = ["CPU", "GPU"] + [n for n, _ in self.config.resources]
        avail = list(seg.available())
        avail[0] += 1000 * seg.free_tokens()
        return ", ".join(f"{n} {max(a, 0) / 1000:g}" for n, a in zip(names, avail))

    def _warn_pending_actor(self, rec: "_ActorRecord", seconds: float) -> None:
        """An actor has waited this long for resources that other actors (or tasks) hold."""
        names = ["CPU", "GPU"] + [n for n, _ in self.config.resources]
        wants = ", ".join(f"{n} {a / 1000:g}" for n, a in zip(names, rec.demand) if a)
        holders = sum(1 for r in self.actors.values()
                      if r is not rec and not r.dead and not r.pending and any(r.demand))
        warnings.warn(
            f"repartir: actor {rec.config['class_name']} has waited {seconds:.0f} s for its "
            f"resources ({wants}) and has not started: free now: "
            f"{self._free_resources_text()}; {holders} live actor(s) hold resources. Kill "
            f"actors you no longer need (repartir.kill), or ask for fewer resources.",
            RuntimeWarning, stacklevel=1)

    def kill_actor(self, slot: int, no_restart: bool = True,
                   cause: str = "it was killed by repartir.kill()") -> None:
        rec = self.actors.get(slot)
        with self._lock:
            proc = self.actor_procs.get(slot)
            never_started = rec is not None and rec.pending
            if never_started:
                rec.pending = False
                self.pending_actors.remove(slot)
        if never_started:  # dead before it started: nothing to stop, nothing to release
            self._end_pending_actor(slot, rec, cause)
            return
        if rec is None or proc is None:
            return
        rec.killed = True
        rec.kill_cause = cause
        if no_restart:
            rec.restarts_left = 0
        try:
            proc.kill()
        except ProcessLookupError:
            pass

    def _end_pending_actor(self, slot: int, rec, cause: str) -> None:
        seg = self.segment
        epoch = seg.bump_actor_epoch(slot)
        rec.dead = True
        rec.held = None
        seg.set_note(slot, cause)
        seg.set_slot_state(slot, SlotState.ACTOR_DEAD)
        self._broadcast(pickle.dumps(
            (MSG_ACTOR_EPOCH, slot, rec.actor_id, epoch, True, cause, []), 5))
        self._fail_actor_inbox(slot)

    def _watch_actor(self, slot: int, proc: subprocess.Popen) -> None:
        code = proc.wait()
        self._finish_output(proc)
        if self.stopping or self.segment.shutting_down:
            return
        seg = self.segment
        rec = self.actors[slot]
        running = [task_id for _, task_id, _, _ in seg.running(slot)]
        seg.clear_running(slot)
        seg.release_held(slot)  # (an actor process itself holds nothing)
        self._drop_pins(slot)
        with self._lock:
            if self.actor_procs.get(slot) is proc:
                del self.actor_procs[slot]
        detail = (f"killed by signal {signal.Signals(-code).name}" if code < 0
                  else f"exit code {code}")
        restart = False
        if code in (CTOR_FAILED_EXIT, EXITED_ON_PURPOSE):  # not restarted
            cause = seg.note(slot)
        elif rec.killed and rec.restarts_left == 0:
            cause = rec.kill_cause
        elif rec.restarts_left != 0:  # restart: the constructor runs again
            if rec.restarts_left > 0:
                rec.restarts_left -= 1
            rec.killed = False
            restart, cause = True, detail
        else:
            cause = (f"its process died ({detail}) after "
                     f"{rec.config['max_restarts']} restart(s) (max_restarts)")
        # A new epoch: calls sent to the dead process (in its inbox or already taken from
        # it) are re-sent or failed by their callers, who all hear of it.
        epoch = seg.bump_actor_epoch(slot)
        if restart:
            seg.set_slot_state(slot, SlotState.ACTOR_RESTARTING)
        else:
            rec.dead = True
            rec.held = None
            seg.set_note(slot, cause)
            seg.set_slot_state(slot, SlotState.ACTOR_DEAD)
            if any(rec.demand):
                seg.release(rec.demand, 0)
        self._broadcast(pickle.dumps(
            (MSG_ACTOR_EPOCH, slot, rec.actor_id, epoch, not restart, cause, running), 5))
        self._broadcast(pickle.dumps((MSG_OWNER_DIED, slot), 5))
        if restart:
            try:
                self._spawn(slot, actor=rec.config, state=SlotState.ACTOR_RESTARTING)
            except OSError:  # the node is stopping (its session directory is gone)
                return
        else:
            self._fail_actor_inbox(slot)

    def _drop_pins(self, slot: int) -> None:
        """Clean up after a dead process: take it off the spinner and sleeper counts, give
        back the arena pins it held (its views cannot unpin any more), and release the
        objects it owned (its refs are gone with it)."""
        self.segment.forget_waiting(slot)
        for blk, count in self.segment.take_ledger(slot):
            for _ in range(count):
                self.arena.unpin(blk + BLOCK_HEADER)
        self.arena.release_owned_by(slot)

    def _broadcast(self, msg: bytes) -> None:
        """Put ``msg`` into the inbox of every live process of the node."""
        seg = self.segment
        for i in range(seg.active_slots):
            if seg.slot_state(i)[0] in (SlotState.DRIVER, SlotState.WORKER, SlotState.ACTOR,
                                        SlotState.STARTING):
                inbox = seg.inboxes[i]
                deadline = time.monotonic() + 5
                while not inbox.put(msg) and not self.stopping and time.monotonic() < deadline:
                    time.sleep(0.001)

    def _tell_owners(self, running, detail: str, reason: int) -> None:
        for owner, task_id, _, _ in running:
            msg = pickle.dumps((MSG_CRASHED, task_id, detail, reason), 5)
            inbox = self.segment.inboxes[owner]
            while not inbox.put(msg) and not self.stopping:
                time.sleep(0.001)

    def _open_large(self, slot: int, msg: tuple) -> tuple | None:
        """``msg``, or for a ``MSG_LARGE`` one the message in its arena block, which is
        freed (``None`` when the block is gone with its sender)."""
        if msg[0] != MSG_LARGE:
            return msg
        _, off, nbytes, gen = msg
        if not self.arena.claim(off, gen, slot):
            return None
        try:
            return pickle.loads(self.arena.view(off, nbytes))
        finally:
            self.arena.release(off)

    def _fail_actor_inbox(self, slot: int, rec=None) -> None:
        """Answer the calls waiting in a dead actor's inbox with ActorDiedError.  With
        ``rec``, only while the slot is still that dead actor's: a new actor may have been
        created in it since (its calls, sent once its creation returned, are its own)."""
        with self._lock:
            if rec is not None and self.actors.get(slot) is not rec:
                return
            cause = self.segment.note(slot)
            raws = self.segment.inboxes[slot].drain()
        for raw in raws:
            msg = self._open_large(slot, pickle.loads(raw))
            if msg is None:
                continue
            if msg[0] == MSG_CALL:
                self._tell_owners([(msg[2], msg[1], 0.0, 0.0)], cause, ACTOR_DIED)
            elif msg[0] in (MSG_DONE, MSG_ITEM):  # results of tasks the actor submitted
                if msg[0] == MSG_ITEM:
                    locs, pins = [msg[3]], msg[4]
                else:
                    ok = msg[2] == OK and isinstance(msg[3], list)
                    locs, pins = (msg[3] if ok else []), msg[4]
                for loc in locs:
                    if loc[0] == "a" and self.arena.claim(loc[1], loc[3], slot):
                        self.arena.release(loc[1])
                for pin in pins or ():
                    if type(pin) is int:
                        self.arena.unpin(pin)
                    else:  # a loan: its owner may free the object now
                        self._post(pin[0], pickle.dumps((MSG_RELEASE, pin[1]), 5))

    def _post(self, slot: int, msg: bytes) -> None:
        inbox = self.segment.inboxes[slot]
        while not inbox.put(msg) and not self.stopping:
            time.sleep(0.001)

    # -- faults ----------------------------------------------------------------------

    def _watch(self, slot: int, proc: subprocess.Popen) -> None:
        code = proc.wait()
        tail = self._finish_output(proc)
        if self.stopping or self.segment.shutting_down:
            return
        state, _ = self.segment.slot_state(slot)
        running = self.segment.running(slot)
        self.segment.clear_running(slot)
        if state != SlotState.FREE or code != 0:  # before its CPU is free for a thief
            self._requeue_orphans(slot)
        self.segment.release_held(slot)  # what it had reserved goes back to the pool
        self._drop_pins(slot)
        self.segment.set_blocked(slot, False)
        self.segment.set_token_free(slot, False)
        with self._lock:
            if self.procs.get(slot) is proc:
                del self.procs[slot]
        if state == SlotState.FREE and code == 0:  # an extra worker retired
            return
        if state == SlotState.STARTING and code > 0:
            # failed before attaching (an import error, say): do not respawn in a loop.
            # (A signal -- someone killed it -- is not the worker's own failure.)
            self.startup_failures += 1
            if self.startup_failures >= 3:
                self.fatal = (
                    f"worker processes fail to start (exit code {code}); the last one "
                    f"wrote:\n{self._log_tail(slot) if tail is None else tail[-3000:]}")
                self.segment.set_slot_state(slot, SlotState.DEAD)
                return
        else:
            self.startup_failures = 0
        self.segment.set_slot_state(slot, SlotState.DEAD)
        detail = (f"killed by signal {signal.Signals(-code).name}" if code < 0
                  else f"exit code {code}")
        note = self.segment.note(slot)
        if note:  # it said why it exits (a task called sys.exit)
            detail = f"{detail}: {note}"
            self.segment.set_note(slot, "")
        stop = self.segment.take_stop_request(slot)  # killed on purpose: cancel or timeout
        for owner, task_id, _, _ in running:
            reason = stop[0] if stop is not None and stop[1] == task_id else CRASH
            msg = pickle.dumps((MSG_CRASHED, task_id, detail, reason), 5)
            inbox = self.segment.inboxes[owner]
            while not inbox.put(msg) and not self.stopping:
                time.sleep(0.001)
        self._broadcast(pickle.dumps((MSG_OWNER_DIED, slot), 5))  # what it lent is lost
        # its children running elsewhere are stopped too (recursively): nobody will read
        # their results, and a cancelled or timed-out tree must stop to its leaves
        seg = self.segment
        for i in range(seg.active_slots):
            if i != slot:
                for owner, task_id, _, _ in seg.running(i):
                    if owner == slot:
                        stop_task(seg, task_id, CANCEL, force=False)
        if not self.stopping and slot <= self.config.num_cpus:
            self._spawn(slot)

    def _requeue_orphans(self, slot: int) -> None:
        """A worker died: the tasks it had stolen into its own deque go back to the top of
        the driver's deque; the tasks it submitted itself are dropped wherever they wait
        (their owner is gone: no one would read their results; a cancelled or timed-out
        task's children end with it)."""
        seg = self.segment
        orphans = seg.deques[slot].remove_if(lambda r: True)
        for i in range(seg.active_slots):
            if i != slot:
                seg.deques[i].remove_if(lambda r: record.HEADER.unpack_from(r, 0)[4] == slot)
        # back at the top of the driver's deque, in the order the dead worker would have
        # popped them (bottom first: a stolen batch lies reversed), so that they start
        # before the tasks queued after them
        put_back = 0
        for prio, level in enumerate(seg.deques[0].levels):
            recs = [r for r in orphans if r[1] == prio
                    and record.HEADER.unpack_from(r, 0)[4] != slot]
            if recs:
                recs.reverse()
                n = level.push_front_many(recs)
                if n < len(recs):  # no room at the top: keep them, at the bottom
                    n += seg.deques[0].push_many(recs[n:])
                put_back += n
        if put_back:
            seg.notify_work(put_back)

    def _finish_output(self, proc: subprocess.Popen) -> str | None:
        """Forward the rest of a dead process's output and close its pipes; returns its last
        lines (``None`` when its output went to a log file, or is not known)."""
        if self.output is None:
            return None
        tail = self.output.finish(proc)
        return "(no output)" if tail == "" else tail

    def _log_tail(self, slot: int, nbytes: int = 3000) -> str:
        try:
            with open(os.path.join(self.session_dir, f"worker-{slot}.log"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode(errors="replace")
        except OSError:
            return "(no log)"

    def _supervise(self) -> None:
        """Every few milliseconds: stop tasks past their timeout, and start an extra worker
        when a queued task fits in the CPU left but every worker is busy -- because workers
        blocked in ``get`` lent their CPUs, or tasks ask for fractions of a CPU -- for
        ``EXTRA_WORKER_AFTER_S`` in a row, up to ``max_workers`` processes."""
        seg, cfg = self.segment, self.config
        overdue: dict[bytes, float] = {}
        stuck_since, warned = None, False  # tasks queued while no worker runs anything
        # at the cap: the task on top of each worker's stack, and since when none changed
        stack_tops, all_blocked_since, cap_warned = None, 0.0, False
        want_since = None  # since when an extra worker has been wanted, on every tick
        while not self.stopping:
            time.sleep(0.005)
            if self.stopping:
                return
            with self._lock:
                slots = list(self.procs)
            now = time.monotonic()
            for s in slots:  # every task on a worker's stack (one may wait under another)
                for _, task_id, start, timeout in seg.running(s):
                    if timeout and now - start > timeout:
                        # ask the task to stop; kill the worker if it has not within 1 s
                        first = overdue.get(task_id)
                        if first is None:
                            overdue[task_id] = now
                            stop_task(seg, task_id, TIMEOUT, force=False)
                        elif now - first > 1.0:
                            stop_task(seg, task_id, TIMEOUT, force=True)
            if len(overdue) > 1000:
                overdue.clear()
            if self.pending_actors:
                self._start_pending_actors()
            for slot, rec in list(self.actors.items()):  # late calls to dead actors
                if (rec.dead and seg.slot_state(slot)[0] == SlotState.ACTOR_DEAD
                        and seg.inboxes[slot].pending()):
                    self._fail_actor_inbox(slot, rec)
            if not seg.queued():
                stuck_since, warned, want_since = None, False, None
                continue
            if any(seg.running(s) for s in slots):
                stuck_since = None
            elif stuck_since is None:
                stuck_since = now
            elif not warned and now - stuck_since > self.stuck_warning_s:
                warned = True
                self._warn_stuck(now - stuck_since)
            cpus = seg.available()[0]
            busy = sum(1 for s in slots if seg.running(s))
            if (cpus <= 0 or (cpus < 1000 and (seg.smallest_queued_cpu() or 1000) > cpus)
                    or self.fatal or busy < len(slots)):
                want_since = None  # no queued task fits in the CPU left, or a worker is free
                continue
            if want_since is None or now - want_since < EXTRA_WORKER_AFTER_S:
                want_since = want_since or now  # not yet: it may be a worker's wake-up
                continue
            if len(slots) >= cfg.max_workers:
                # At the cap.  Workers blocked in get help only with tasks that cannot wait
                # on their stacks; when no stack moves while tasks stay queued and CPU is
                # free (lent by blocked workers), the queued tasks are others (they hold refs
                # to pending objects) and only a new worker, with an empty stack, can run
                # them: start one beyond the cap, or the program would hang.
                tops = tuple((seg.running(s) or [(0, b"")])[-1][1] for s in slots)
                if tops != stack_tops:
                    stack_tops, all_blocked_since = tops, now
                    continue
                if now - all_blocked_since < STUCK_SPAWN_S:
                    continue
                if len(slots) >= cfg.max_workers + cfg.max_stuck_workers:
                    if not cap_warned and now - all_blocked_since > self.stuck_warning_s:
                        cap_warned = True
                        warnings.warn(
                            f"repartir: all {len(slots)} workers have been blocked in get() "
                            f"for {now - all_blocked_since:.0f} s while {seg.queued()} "
                            f"task(s) wait that none of them may run (they hold refs to "
                            f"pending objects), and the node may start no more workers "
                            f"(max_stuck_workers={cfg.max_stuck_workers}). Raise "
                            f"REPARTIR_MAX_STUCK_WORKERS, or pass fewer nested refs.",
                            RuntimeWarning, stacklevel=1)
                    continue
                cap_warned = False
                stack_tops = None
            want_since = None
            spare = itertools.chain(range(cfg.num_cpus + 1, self.first_actor_slot),
                                    range(self.first_stuck_slot, self.nslots))
            free = next((i for i in spare
                         if i not in slots and seg.slot_state(i)[0] not in
                         (SlotState.WORKER, SlotState.STARTING)), None)
            if free is not None:
                try:
                    self._spawn(free)
                except OSError:
                    pass

    def _warn_stuck(self, seconds: float) -> None:
        """Tasks have been queued for a while and no worker runs anything: their resources
        are held elsewhere (actors, most often) or do not exist free on this node."""
        seg = self.segment
        free = self._free_resources_text()
        actors = sum(1 for r in self.actors.values()
                     if not r.dead and not r.pending and any(r.demand))
        warnings.warn(
            f"repartir: {seg.queued()} task(s) have waited {seconds:.0f} s and none can start: "
            f"free now: {free}; {actors} live actor(s) hold resources. Kill actors you no "
            f"longer need (repartir.kill), or ask for fewer resources.", RuntimeWarning,
            stacklevel=1)

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
