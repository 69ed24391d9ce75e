"""Configuration: the keyword arguments of ``repartir.init()`` first (``num_cpus``,
``num_gpus``, ``memory``, ``resources``, ``object_store_memory``), ``REPARTIR_*`` environment
variables second (every setting but ``resources`` has one), then the defaults.

Every setting, its variable, unit and default:

============================== =============================== =====================================
setting                        environment variable            default
============================== =============================== =====================================
``num_cpus``                   ``REPARTIR_NUM_CPUS``           ``os.cpu_count()``: CPUs, one worker
                                                               process each; 0: a driver that
                                                               only submits (tasks and actors
                                                               asking for CPU are infeasible)
``num_gpus``                   ``REPARTIR_NUM_GPUS``           the OpenCL GPUs that device discovery
                                                               finds (a subprocess; the count is
                                                               kept per boot, see below);
                                                               0 without pyopencl
``memory``                     ``REPARTIR_MEMORY``             bytes of the ``memory`` resource
                                                               (for scheduling only, as in Ray):
                                                               the memory available now (cgroup
                                                               limit or ``MemAvailable``) less
                                                               ``object_store_memory``, at least 0
``resources``                  --                              ``{}``: custom resources, name to
                                                               amount (at most 6)
``object_store_memory``        ``REPARTIR_OBJECT_STORE_MEMORY`` bytes of the shared-memory arena:
                                                               30 % of RAM, at most 80 % of the free
                                                               space of ``/dev/shm`` (as Ray)
``inline_threshold``           ``REPARTIR_INLINE_THRESHOLD``   100 KiB: smaller objects travel
                                                               inside task and completion records
``max_workers``                ``REPARTIR_MAX_WORKERS``        2 x ``num_cpus``, at least 2: cap on
                                                               worker processes (nested tasks may
                                                               add some)
``max_stuck_workers``          ``REPARTIR_MAX_STUCK_WORKERS``  64 (or ``max_workers`` if more):
                                                               workers started beyond the cap, 8
                                                               at a time, only while every worker
                                                               is blocked in ``get`` and queued
                                                               tasks wait that none may help with;
                                                               they retire when idle.  Ray has no
                                                               such cap; at it the node warns
``spin_us``                    ``REPARTIR_SPIN_US``            200: microseconds an idle process
                                                               spins before it parks
``temp_dir``                   ``REPARTIR_TEMP_DIR``           ``/tmp/repartir-sessions``: session
                                                               dirs (a name Python cannot import,
                                                               so it never shadows the package)
``shm_dir``                    ``REPARTIR_SHM_DIR``            ``/dev/shm``
``spill_dir``                  ``REPARTIR_SPILL_DIR``          ``""``: objects spilled when the
                                                               object store is full go to
                                                               ``spill/`` in the session dir;
                                                               else to ``repartir-spill-<session>``
                                                               made in this directory (which
                                                               must exist).  Removed at shutdown
``deque_capacity``             ``REPARTIR_DEQUE_CAPACITY``     8192 task records per process deque
``inbox_bytes``                ``REPARTIR_INBOX_BYTES``        8 MiB per process inbox ring
``max_actors``                 ``REPARTIR_MAX_ACTORS``         64 actor processes per node
``log_to_driver``              ``REPARTIR_LOG_TO_DRIVER``      1: workers' and actors' stdout and
                                                               stderr go to the driver's, each
                                                               line prefixed ``(worker pid=N)``
                                                               or ``(ClassName pid=N)``; 0: to
                                                               ``worker-<slot>.log`` files in the
                                                               session dir (removed at shutdown)
============================== =============================== =====================================

Six variables are read outside :class:`Config`, by whatever process needs them:
``REPARTIR_DEVICE_CACHE`` (default ``~/.cache/repartir``), where device discovery keeps the
GPU count per boot and the cost model its measured rates per host and device; and, for the
cluster's wire layer (``repartir/cluster/``, docs/cluster.md), ``REPARTIR_TOKEN`` (the cluster
token itself; unset by default) and ``REPARTIR_TOKEN_FILE`` (default
``~/.config/repartir/token``: where the token is read when ``REPARTIR_TOKEN`` is unset, and
where ``repartir token`` writes one).  The wire layer's other defaults are the ``CLUSTER_*``
and ``WIRE_*`` constants below.  For the cluster's nodes and drivers (docs/cluster.md):
``REPARTIR_NODE_TIMEOUT`` (seconds without a heartbeat before a node is declared dead, default
10: :func:`cluster_node_timeout`), ``REPARTIR_ADDRESS`` (the head ``init()`` connects to when
no ``address=`` is given; unset by default), ``REPARTIR_CLUSTER_DIR`` (this machine's
cluster state, default ``~/.config/repartir/cluster``: :func:`cluster_state_dir`) and
``REPARTIR_SERVER_KEY`` (the public key of a head started with ``--encrypt``, for drivers,
``repartir status`` and joining nodes; unset by default: :func:`cluster_server_key`).

The thread pools of BLAS and OpenMP libraries in workers and actors follow each task's
``num_cpus`` (:data:`BLAS_THREAD_VARIABLES`, ``repartir/runtime/threads.py``) unless one of
those variables is set in the driver's environment.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

__all__ = ["Config", "resolve", "device_cache_dir", "detected_gpus", "STUCK_SPAWN_S",
           "EXTRA_IDLE_S", "EXTRA_WORKER_AFTER_S", "STUCK_WARNING_S", "STUCK_SPAWN_BATCH",
           "resource_names", "available_memory", "BLAS_THREAD_VARIABLES", "MIN_MAX_WORKERS",
           "ACTOR_OP_TIMEOUT_S", "CLUSTER_HOST", "CLUSTER_MIN_TOKEN_CHARS", "CLUSTER_KEY_NAME",
           "cluster_token_file", "cluster_key_dir", "WIRE_MAX_SENDERS", "WIRE_INBAND_BYTES",
           "WIRE_DIGEST_BYTES", "WIRE_LINGER_MS", "WIRE_MAX_FRAME_BYTES", "WIRE_LOG_INTERVAL_S",
           "WIRE_REFUSALS_PER_S", "WIRE_SEND_TIMEOUT_S"]

#: Seconds every worker must have been blocked in ``get``, with tasks queued that none of them
#: may run on its stack, before the node starts a worker beyond ``max_workers``.  Shorter
#: starts processes for waits that would have ended by themselves; longer makes such a
#: program (a task waiting on a ref passed to it inside a list) wait that long per level.
STUCK_SPAWN_S = 0.05

#: Workers started at once beyond ``max_workers`` when every worker is blocked (at most one
#: per queued task, within ``max_stuck_workers``).  One at a time cost a process start per
#: level of waiting tasks, in series (100 tasks waiting two levels deep took 30-60 s at one
#: CPU); more at once oversubscribes the CPUs while they start.
STUCK_SPAWN_BATCH = 8

#: An extra worker (started because a queued task fits in CPU lent by blocked workers, or
#: beyond the cap) that has been idle this long exits.
EXTRA_IDLE_S = 2.0

#: An extra worker starts only once the wish for one has held on every supervisor tick for
#: this long. A worker that parks gives its CPU back and takes it again when woken, so for a
#: few microseconds a queued task "fits" while every worker is busy; starting a process on
#: that alone oversubscribes the node (seen: a third worker for 2 CPUs running flat tiny
#: tasks). A worker blocked in ``get`` lends its CPU far longer than this.
EXTRA_WORKER_AFTER_S = 0.02

#: Queued tasks that none can start, or an actor waiting for resources, for this long: warn.
STUCK_WARNING_S = 10.0

#: Seconds a task or actor waits for the node's answer when it creates an actor, looks one
#: up (``get_actor``) or kills one (the node lives in the driver, whose pump thread answers
#: within milliseconds; creating an actor may wait up to 30 s for the slot of an actor that
#: is ending).  Past it, ``RepartirError`` says the driver may be stuck.
ACTOR_OP_TIMEOUT_S = 60.0

#: The least ``max_workers`` (by default 2 x ``num_cpus``): a node started with
#: ``num_cpus=0`` still runs tasks and actors of ``num_cpus=0``, on workers started on demand.
MIN_MAX_WORKERS = 2

#: The environment variables that size the thread pools of BLAS and OpenMP libraries.  Set in
#: every worker and actor to the number of CPUs of what it runs (as Ray sets
#: ``OMP_NUM_THREADS``), unless the driver's environment sets any of them: then the user's
#: values are left alone, in every process.
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                         "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# ----------------------------------------------------------------- the cluster's wire layer
# (repartir/cluster/, docs/cluster.md)

#: The address an endpoint listens on when none is given: loopback only.  Listening on any
#: other address needs a cluster token.
CLUSTER_HOST = "127.0.0.1"

#: The shortest cluster token accepted (``repartir token`` and ``generate_token()`` make 64
#: hex characters, 256 bits).
CLUSTER_MIN_TOKEN_CHARS = 32

#: The base name of the CurveZMQ key files ``repartir keygen`` writes
#: (``<name>.key``, ``<name>.key_secret``).
CLUSTER_KEY_NAME = "repartir"

#: Senders whose last sequence number a receiving endpoint remembers (least recently heard
#: forgotten first; see docs/cluster.md, "Replay window").
WIRE_MAX_SENDERS = 4096

#: Out-of-band pickle buffers (numpy arrays) at least this large travel as frames of their
#: own, zero-copy; smaller ones stay inside the pickle frame.
WIRE_INBAND_BYTES = 64 * KiB

#: Frames at least this large enter a message's HMAC-SHA256 as their BLAKE3 digest, not byte
#: by byte (hash-then-MAC, docs/cluster.md, "Wire format"): a chunk of an object costs a
#: quarter of the hashing.  Every endpoint of a cluster must use the same value.
WIRE_DIGEST_BYTES = 64 * KiB

#: Largest frame an endpoint accepts, in bytes (ZeroMQ's ``MAXMSGSIZE``: a peer sending a
#: larger one is disconnected before anything is verified); -1: no limit.
WIRE_MAX_FRAME_BYTES = -1

#: Seconds a connecting endpoint's ``send`` waits at most for room to queue a message (no
#: connection yet, or the peer's queue full) before it raises ``WireTimeoutError``.
WIRE_SEND_TIMEOUT_S = 30.0

#: Milliseconds a closed endpoint keeps trying to send what is still queued (0: dropped).
WIRE_LINGER_MS = 0

#: Seconds between two log records of dropped messages of one kind (the others are counted
#: and reported with the next record).
WIRE_LOG_INTERVAL_S = 10.0

#: Refusal replies ("your MAC does not verify") a listening endpoint sends per second at most.
WIRE_REFUSALS_PER_S = 10.0


@dataclasses.dataclass(frozen=True)
class Config:
    num_cpus: int
    object_store_memory: int
    num_gpus: float = 0.0
    memory: int = 0  # bytes of the memory resource (resolve() computes the default)
    resources: tuple = ()  # ((name, amount), ...) sorted by name
    inline_threshold: int = 100 * KiB
    max_workers: int = 0  # 0: 2 x num_cpus, at least MIN_MAX_WORKERS
    max_stuck_workers: int = 64  # (or max_workers, if more)
    spin_us: int = 200
    temp_dir: str = "/tmp/repartir-sessions"
    shm_dir: str = "/dev/shm"
    spill_dir: str = ""  # "": <session dir>/spill
    deque_capacity: int = 8192
    inbox_bytes: int = 8 * MiB
    max_actors: int = 64
    log_to_driver: bool = True


def _default(name: str):
    """The default of a :class:`Config` field: written once, in the class."""
    return Config.__dataclass_fields__[name].default


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(float(raw))
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"environment variable {name}={raw!r} is not 0 or 1")


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 * GiB


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            raw = f.read().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None  # ("max": no limit)


def available_memory() -> int:
    """Bytes of memory available to new processes now, as Ray estimates it: the cgroup's
    limit less its usage when the process runs in a memory-limited cgroup (a container), else
    ``MemAvailable`` of ``/proc/meminfo``; the smaller of the two when both are known."""
    found = []
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        lim, used = _read_int(limit), _read_int(usage)
        if lim is not None and used is not None and lim < (1 << 60):
            found.append(max(lim - used, 0))
            break
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * KiB)
                    break
    except (OSError, ValueError, IndexError):
        pass
    return min(found) if found else _total_memory()


def resource_names(config: "Config") -> list[str]:
    """The node's resource names in the order of a resource vector: ``CPU``, ``GPU``,
    ``memory``, then the custom resources sorted by name."""
    return ["CPU", "GPU", "memory"] + [name for name, _ in config.resources]


def shm_free_bytes(shm_dir: str) -> int:
    st = os.statvfs(shm_dir)
    return st.f_bavail * st.f_frsize


def device_cache_dir() -> str:
    """Where device discovery and the cost model keep what they measured
    (``REPARTIR_DEVICE_CACHE``, default ``~/.cache/repartir``)."""
    return (os.environ.get("REPARTIR_DEVICE_CACHE")
            or os.path.join(os.path.expanduser("~"), ".cache", "repartir"))


def cluster_token_file() -> str:
    """Where the cluster token is kept (``REPARTIR_TOKEN_FILE``, default
    ``~/.config/repartir/token``)."""
    return (os.environ.get("REPARTIR_TOKEN_FILE")
            or os.path.join(os.path.expanduser("~"), ".config", "repartir", "token"))


def cluster_key_dir() -> str:
    """Where ``repartir keygen`` writes CurveZMQ key files by default
    (``~/.config/repartir/keys``)."""
    return os.path.join(os.path.expanduser("~"), ".config", "repartir", "keys")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown-boot"


def detected_gpus(timeout: float = 60.0) -> int:
    """The number of OpenCL GPUs of this machine: 0 at once without pyopencl, else what
    ``python -m repartir.devices.discovery --count`` prints (a subprocess: the driver never
    loads an OpenCL driver itself), remembered per boot in :func:`device_cache_dir`.  A
    discovery that fails or hangs counts as 0 GPUs."""
    if importlib.util.find_spec("pyopencl") is None:
        return 0
    path = os.path.join(device_cache_dir(), "gpus.json")
    boot = _boot_id()
    try:
        with open(path) as f:
            cached = json.load(f)
        if cached.get("boot_id") == boot and cached.get("python") == sys.executable:
            return int(cached["gpus"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        proc = subprocess.run([sys.executable, "-m", "repartir.devices.discovery", "--count"],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        gpus = int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else 0
    except (subprocess.TimeoutExpired, OSError, ValueError, IndexError):
        return 0
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"boot_id": boot, "python": sys.executable, "gpus": gpus}, f)
        os.replace(tmp, path)
    except OSError:
        pass
    return gpus


def resolve(num_cpus: int | None = None, object_store_memory: int | None = None,
            num_gpus: float | None = None, resources: dict | None = None,
            memory: int | None = None) -> Config:
    """Build the configuration from keyword arguments, then the environment, then defaults.

    Raises:
        ValueError: a setting is out of range (e.g. ``num_cpus < 0``, ``memory < 0``).
    """
    shm_dir = os.environ.get("REPARTIR_SHM_DIR") or _default("shm_dir")
    temp_dir = os.environ.get("REPARTIR_TEMP_DIR") or _default("temp_dir")
    if num_cpus is None:
        num_cpus = _env_int("REPARTIR_NUM_CPUS")
        if num_cpus is None:
            num_cpus = os.cpu_count() or 1
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or (
            isinstance(num_cpus, float) and not num_cpus.is_integer()):
        raise ValueError(f"num_cpus is the number of worker processes: a whole number >= 0 "
                         f"(0: a driver that only submits), got {num_cpus!r}")
    num_cpus = int(num_cpus)
    if num_cpus < 0:
        raise ValueError(f"num_cpus must be at least 0 (0: a driver that only submits), "
                         f"got {num_cpus}")
    if object_store_memory is None:
        object_store_memory = _env_int("REPARTIR_OBJECT_STORE_MEMORY")
    if object_store_memory is None:
        object_store_memory = int(0.3 * _total_memory())
        try:
            object_store_memory = min(object_store_memory, int(0.8 * shm_free_bytes(shm_dir)))
        except OSError:
            pass
        object_store_memory = max(object_store_memory, 64 * MiB)
    if object_store_memory < 4 * MiB:
        raise ValueError(f"object_store_memory must be at least 4 MiB, got {object_store_memory}")
    if memory is None:
        memory = _env_int("REPARTIR_MEMORY")
    if memory is None:  # as Ray: what is available, less what the object store will take
        memory = max(available_memory() - object_store_memory, 0)
    if isinstance(memory, bool) or not isinstance(memory, (int, float)) or memory < 0:
        raise ValueError(f"memory is the bytes of the memory resource, a number >= 0, "
                         f"got {memory!r}")
    max_workers = _env_int("REPARTIR_MAX_WORKERS") or max(2 * num_cpus, MIN_MAX_WORKERS)
    if num_gpus is None and os.environ.get("REPARTIR_NUM_GPUS"):
        num_gpus = float(os.environ["REPARTIR_NUM_GPUS"])
    if num_gpus is None:
        num_gpus = float(detected_gpus())
    if num_gpus < 0:
        raise ValueError(f"num_gpus must be >= 0, got {num_gpus}")
    resources = dict(resources or {})
    for name in ("CPU", "GPU"):
        if name in resources:
            raise ValueError(f"pass {name} as num_{name.lower()}s=, not in resources=")
    if "memory" in resources:
        raise ValueError("pass memory as memory=, not in resources=")
    if len(resources) > 6:
        raise ValueError("a node may declare at most 6 custom resources")
    for name, amount in resources.items():
        if not isinstance(name, str) or not isinstance(amount, (int, float)) or amount < 0:
            raise ValueError(f"resources must map names to amounts >= 0, got {name!r}: {amount!r}")
    return Config(
        num_cpus=int(num_cpus),
        object_store_memory=int(object_store_memory),
        num_gpus=float(num_gpus),
        memory=int(memory),
        resources=tuple(sorted((k, float(v)) for k, v in resources.items())),
        inline_threshold=_env_int("REPARTIR_INLINE_THRESHOLD") or _default("inline_threshold"),
        max_workers=max(max_workers, num_cpus),
        max_stuck_workers=(_env_int("REPARTIR_MAX_STUCK_WORKERS")
                           if _env_int("REPARTIR_MAX_STUCK_WORKERS") is not None
                           else max(_default("max_stuck_workers"), max_workers, num_cpus)),
        spin_us=(_env_int("REPARTIR_SPIN_US") if _env_int("REPARTIR_SPIN_US") is not None
                 else _default("spin_us")),
        temp_dir=temp_dir,
        shm_dir=shm_dir,
        spill_dir=os.environ.get("REPARTIR_SPILL_DIR") or _default("spill_dir"),
        deque_capacity=_env_int("REPARTIR_DEQUE_CAPACITY") or _default("deque_capacity"),
        inbox_bytes=_env_int("REPARTIR_INBOX_BYTES") or _default("inbox_bytes"),
        max_actors=_env_int("REPARTIR_MAX_ACTORS") or _default("max_actors"),
        log_to_driver=_env_bool("REPARTIR_LOG_TO_DRIVER", _default("log_to_driver")),
    )


# ----------------------------------------------------------------- the cluster's nodes
# (repartir/cluster/node.py, client.py, commands.py; docs/cluster.md).
# Variables read by the cluster's processes: REPARTIR_NODE_TIMEOUT (seconds, default
# CLUSTER_NODE_TIMEOUT_S), REPARTIR_ADDRESS (the head a driver's init() connects to when
# no address= is given; unset by default) and REPARTIR_CLUSTER_DIR (this machine's cluster
# state: the head's address, the pids `repartir stop` stops; default
# ~/.config/repartir/cluster).

#: The head's port when ``repartir start --head`` is given none (as Ray's 6379, plus one).
CLUSTER_PORT = 6380

#: Seconds between two heartbeats of a node to the head (its free resources, its tasks).
CLUSTER_HEARTBEAT_S = 1.0

#: Seconds without a heartbeat after which the head declares a node dead
#: (``REPARTIR_NODE_TIMEOUT``).
CLUSTER_NODE_TIMEOUT_S = 10.0

#: Seconds ``repartir start`` waits for its node daemon to be up (and a joining node for
#: the head's welcome).
CLUSTER_START_TIMEOUT_S = 60.0

#: Seconds ``repartir stop`` waits after SIGTERM before it sends SIGKILL.
CLUSTER_STOP_GRACE_S = 10.0

#: Tasks a driver sends to one node in one message at most.
CLUSTER_BATCH_TASKS = 512

#: Results whose encoded size is at most this many bytes travel back with the completion;
#: larger ones stay on their node until a driver pulls them (in chunks).
CLUSTER_INLINE_RESULT_BYTES = 256 * KiB

#: Bytes of one chunk of an object pulled from a node, and chunks requested at once (by a
#: driver's ``get``, and by a node pulling a task's argument from another node).  Larger
#: chunks cost fewer messages (each ~50 us of Python and two HMACs of a small header) but
#: more memory queued per pull; more in flight keep the link busy while the receiver verifies
#: and copies (docs/cluster.md, "Measured", tuned with ``stress/cluster_bench.py``).
CLUSTER_CHUNK_BYTES = 4 * MiB
CLUSTER_CHUNKS_IN_FLIGHT = 4

#: Bytes of pickled task arguments a driver keeps as lineage (to re-run the tasks whose
#: results were kept on a node that died), at most; past it the oldest lineage is dropped
#: and those results can no longer be rebuilt.  Lineage is kept only for results kept on a
#: node, while their ref or the lineage of a task that took them lives.
CLUSTER_LINEAGE_BYTES = 256 * MiB

#: Seconds a node waits for another node to answer while it pulls an object from it; past
#: them the tasks waiting for the object fail with ``ObjectLostError``.
CLUSTER_PULL_TIMEOUT_S = 30.0

#: A node hands its local runtime enough tasks for this many seconds of work per CPU (by
#: the shortest service time its tasks showed over the last ``CLUSTER_QUEUE_WINDOW_S``), but
#: at least ``CLUSTER_QUEUE_MIN_PER_CPU`` and at most ``CLUSTER_QUEUE_MAX_PER_CPU`` tasks per
#: CPU; the others wait in its own queue, where idle nodes steal them (docs/cluster.md, "Work
#: stealing").  More keeps its workers fed between completions (tiny tasks need hundreds in
#: flight), at the price of tasks that can no longer be stolen.
CLUSTER_QUEUE_TARGET_S = 0.05
CLUSTER_QUEUE_MIN_PER_CPU = 2
CLUSTER_QUEUE_MAX_PER_CPU = 512
CLUSTER_QUEUE_WINDOW_S = 1.0

#: Tasks a victim hands over in one steal at most (besides steal-half and an even share).
CLUSTER_STEAL_CAP = 256

#: Seconds an idle node waits for a victim's answer, and waits after an empty one before it
#: asks again (the next victim is drawn at random: Blumofe & Leiserson).
CLUSTER_STEAL_TIMEOUT_S = 1.0
CLUSTER_STEAL_BACKOFF_S = 0.05


def cluster_node_timeout() -> float:
    """Seconds after which a silent node is declared dead: ``REPARTIR_NODE_TIMEOUT``, default
    ``CLUSTER_NODE_TIMEOUT_S`` (10).

    Raises:
        ValueError: the variable is not a number of seconds > 0.
    """
    text = os.environ.get("REPARTIR_NODE_TIMEOUT", "").strip()
    if not text:
        return CLUSTER_NODE_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"REPARTIR_NODE_TIMEOUT must be a number of seconds > 0, got {text!r}")
    return value


def cluster_server_key() -> str | None:
    """The public key of an encrypted cluster's head (``REPARTIR_SERVER_KEY``: its 40
    Z85 characters, or the path of its ``.key`` file), or ``None`` when unset: a driver,
    ``repartir status`` and ``repartir start --address`` then connect without encryption
    (unless the head was started on this machine, which recorded its key)."""
    return os.environ.get("REPARTIR_SERVER_KEY", "").strip() or None


def cluster_state_dir() -> str:
    """This machine's cluster state (``REPARTIR_CLUSTER_DIR``, default
    ``~/.config/repartir/cluster``): the head's address, the node daemons started here, their
    logs."""
    return (os.environ.get("REPARTIR_CLUSTER_DIR")
            or os.path.join(os.path.expanduser("~"), ".config", "repartir", "cluster"))
