"""The benchmark harness of repartir: the workloads of ``docs/benchmarks.md``, beside the peers.

::

    parent (python stress/bench.py ...)                      one child per system
    ┌───────────────────────────────┐  argv: --_child SYSTEM  ┌─────────────────────────────┐
    │ pick systems, workloads, sizes│ ──────────────────────▶ │ import, start (timed: init) │
    │ watch each child's event file │                         │ run each workload from      │
    │  (per-workload + per-system   │ ◀────────────────────── │  REGISTRY[SYSTEM]           │
    │   timeouts: kill, restart     │   JSON lines: start,    │ stop (repartir.shutdown())  │
    │   with the workloads left)    │   record, error, skip   └─────────────────────────────┘
    │ table on stdout, --json FILE  │
    └───────────────────────────────┘

The harness is four modules: this one (command line, the child runner, the parent that launches,
watches and restarts the children, the table and the JSON records); :mod:`stress.adapters` (one
adapter per system, the run's sizes in ``Config``); :mod:`stress.workloads` (the registry, one
function per workload and system, units, goals and what each system does in each workload);
and :mod:`stress.tasks`, what runs inside the workers.

**Systems.** ``repartir`` always; ``multiprocessing`` (``multiprocessing.Pool``, ``spawn`` start
method unless ``--mp-start``); ``ray``, ``dask`` (``distributed.LocalCluster`` with processes,
``threads_per_worker=1``) and ``loky`` (``get_reusable_executor``) when importable; ``memcpy``, the
physical reference for ``put`` (added whenever ``put`` is measured). Every system gets the same
number of workers (``--workers``, default ``os.cpu_count()``), runs in its own process group, and is
killed when one workload exceeds ``--workload-timeout`` or the system exceeds ``--timeout``; the
child is then restarted with the workloads left, so one hang costs one cell, not the run.

**Workloads** (``docs/benchmarks.md`` defines what each one times, its sizes and its goal;
the table prints under it what each system does):
``init``, ``tiny_async``, ``tiny_rtt``, ``actor_sync``, ``actor_async``, ``put``, ``get``,
``bigarg``, ``fib``, ``unbalanced``, ``ctrl_c``. A workload that does not apply to a system
(``put`` without an object store, actors without actors, ``fib`` without tasks that submit
tasks) is ``–`` in the table.

**Output.** A table on stdout (rows: workloads, columns: systems) and with ``--json FILE`` a list of
records ``{"system", "workload", "value", "unit", "extra"}`` for every value measured (failed or
skipped cells are not records; they are shown in the table and on stderr). Exit status 0, or 1 when
a repartir workload failed or timed out. Child logs and event files stay in ``--logdir``; without
it, in a temporary directory that is removed at the end unless a cell failed (its path is
printed then).

Self-test of the harness: ``REPARTIR_BENCH_FAULT=multiprocessing/tiny_rtt=crash,loky/init=hang``
(``crash``: ``os._exit(3)``, ``hang``: sleep, anything else: raise) at the start of that workload.

Examples::

    python stress/bench.py --quick                      # < 1 min: repartir + multiprocessing
    python stress/bench.py --json bench.json            # all installed systems, full sizes
    python stress/bench.py --systems repartir,ray --workloads tiny_async,tiny_rtt
    python stress/bench.py --workloads fib,unbalanced,actor_sync,actor_async
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS_FILE = os.path.abspath(__file__)
if ROOT not in sys.path:                # ``python stress/bench.py`` puts only stress/ on the path
    sys.path.insert(0, ROOT)

from stress.adapters import (ADAPTERS, MIB, SYSTEM_MODULE, SYSTEM_ORDER,  # noqa: E402
                             SYSTEM_TITLE, Config)
from stress.tasks import rendezvous  # noqa: E402
from stress.workloads import (CELL_SUFFIX, FOOTNOTES, GOALS, REGISTRY, WORKLOADS,  # noqa: E402
                              WorkloadSkipped, does)
import stress.devices_bench  # noqa: E402,F401  (registers gpu_vec, gpu_sgemm, tensor_cpu)
import stress.cluster_workloads  # noqa: E402,F401  (registers remote_tiny, transfer, tcp)


# ---------------------------------------------------------------------------------------------
# Child: one system, events as JSON lines in --_out.
# ---------------------------------------------------------------------------------------------

def child_main(system: str, workloads: list[str], cfg: Config, out_path: str) -> int:
    """Run ``workloads`` on ``system`` in this process; every event goes to ``out_path`` at once."""
    out = open(out_path, "a", buffering=1)

    def emit(**ev: Any) -> None:
        ev["t"] = time.time()
        out.write(json.dumps(ev) + "\n")
        out.flush()

    s = ADAPTERS[system](cfg)
    reg = REGISTRY[system]
    emit(event="start", workload="__start__")
    try:
        s.prepare()
        gc.collect()
        meeting = tempfile.mkdtemp(prefix="repartir-bench-init-")
        try:
            t0 = time.perf_counter()
            s.start()
            if s.has_tasks:                 # INIT_DEFINITION: every worker runs a task at once
                pids = s.get_all([s.submit(rendezvous, meeting, s.workers)
                                  for _ in range(s.workers)])
            s.init_time = time.perf_counter() - t0
        finally:
            shutil.rmtree(meeting, ignore_errors=True)
        if s.has_tasks and len(set(pids)) != s.workers:
            raise AssertionError(f"init: {len(set(pids))} distinct workers ran the "
                                 f"{s.workers} rendezvous tasks")
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then exit
        emit(event="fatal", workload="__start__", error=_one_line(e), tb=traceback.format_exc())
        try:
            s.stop()
        except BaseException:  # noqa: BLE001
            pass
        return 2
    status = 0
    try:
        for w in workloads:
            fn = reg.get(w)
            if fn is None:
                emit(event="skip", workload=w, reason="not applicable")
                continue
            emit(event="start", workload=w)
            try:
                _inject_fault(system, w)
                res = fn(s, cfg)
                value, extra = res if isinstance(res, tuple) else (res, {})
                emit(event="record", workload=w, value=float(value), extra=extra or {})
            except WorkloadSkipped as e:
                emit(event="skip", workload=w, reason=str(e))
            except Exception as e:  # noqa: BLE001 - one workload's failure is one cell
                status = 1
                emit(event="error", workload=w, error=_one_line(e), tb=traceback.format_exc())
            gc.collect()
    finally:
        emit(event="start", workload="__stop__")
        s.stop()
        emit(event="stopped", workload="__stop__")
    return status


def _inject_fault(system: str, w: str) -> None:
    """Self-test of the harness: ``REPARTIR_BENCH_FAULT=system/workload=crash|hang|raise``."""
    for spec in filter(None, os.environ.get("REPARTIR_BENCH_FAULT", "").split(",")):
        where, _, what = spec.partition("=")
        if where == f"{system}/{w}":
            if what == "crash":
                os._exit(3)
            if what == "hang":
                time.sleep(1e9)
            raise RuntimeError(f"injected fault in {where}")


def _one_line(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip().replace("\n", " ")
    return msg if len(msg) <= 200 else msg[:197] + "..."


# ---------------------------------------------------------------------------------------------
# Parent: launch, watch, restart, tabulate.
# ---------------------------------------------------------------------------------------------

@dataclass
class Cell:
    """The outcome of one (system, workload): a value, or a status with a reason."""

    status: str                   # "ok", "skip", "error", "timeout", "crash", "missing"
    value: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _wait_group(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until no process of the child's group is left; True when it emptied in time."""
    end = time.monotonic() + timeout
    proc.poll()                                 # reap the leader: a zombie still counts
    while _group_alive(proc.pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
        proc.poll()
    return True


def _kill_group(proc: subprocess.Popen, term_grace: float = 5.0) -> None:
    """End the child's own process group (it was started with ``start_new_session``).

    SIGTERM to the group, then SIGKILL to whatever is left after ``term_grace`` seconds. The
    group outlives its leader for a moment while resource trackers unlink semaphores and workers
    notice their parent is gone, so the leader's exit alone is not waited for.
    """
    pgid = proc.pid
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not _wait_group(proc, term_grace):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _read_events(path: str, pos: int) -> tuple[list[dict[str, Any]], int]:
    with open(path) as f:
        f.seek(pos)
        data = f.read()
    lines = data.split("\n")
    complete, rest = lines[:-1], lines[-1]
    events = [json.loads(line) for line in complete if line.strip()]
    return events, pos + len(data) - len(rest)


def run_system(system: str, workloads: list[str], cfg: Config, workload_timeout: float,
               system_timeout: float, logdir: str, verbose: bool) -> dict[str, Cell]:
    """Run ``workloads`` on ``system`` in child processes; returns one :class:`Cell` per
    workload."""
    cells: dict[str, Cell] = {}
    runnable = [w for w in workloads if w in REGISTRY[system]]
    for w in workloads:
        if w not in REGISTRY[system]:
            cells[w] = Cell("skip", reason="not applicable")
    deadline = time.monotonic() + system_timeout
    remaining = list(runnable)
    attempt = 0
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("RAY_DEDUP_LOGS", "0")
    while remaining:
        attempt += 1
        if attempt > 3:
            for w in remaining:
                cells[w] = Cell("error", reason="not run: the child failed 3 times")
            break
        out_path = os.path.join(logdir, f"{system}.{attempt}.events")
        log_path = os.path.join(logdir, f"{system}.{attempt}.log")
        open(out_path, "w").close()
        cmd = [sys.executable, THIS_FILE, "--_child", system, "--workloads", ",".join(remaining),
               "--_cfg", json.dumps(cfg.__dict__), "--_out", out_path]
        log = open(log_path, "w")
        out = None if verbose else log
        proc = subprocess.Popen(cmd, stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, env=env, cwd=ROOT, start_new_session=True)
        pos = 0
        current, current_t0 = "__start__", time.monotonic()
        killed_for = ""
        while True:
            try:
                rc: int | None = proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                rc = None
            events, pos = _read_events(out_path, pos)
            for ev in events:
                w = ev["workload"]
                kind = ev["event"]
                if kind == "start":
                    current, current_t0 = w, time.monotonic()
                    if w not in ("__start__", "__stop__"):
                        _log(f"{system}: {w} ...")
                elif kind == "record":
                    cells[w] = Cell("ok", ev["value"], ev.get("extra", {}))
                    _log(f"{system}: {w} = {_fmt(ev['value'])} {WORKLOADS[w][1]}")
                    current = "__between__"
                elif kind == "skip":
                    cells[w] = Cell("skip", reason=ev.get("reason", ""))
                    if cells[w].reason != "not applicable":
                        _note(system, f"{w} skipped: {cells[w].reason}")
                elif kind in ("error", "fatal"):
                    _log(f"{system}: {w} failed: {ev['error']}\n{ev.get('tb', '')}")
                    if kind == "error":
                        cells[w] = Cell("error", reason=ev["error"])
                        current = "__between__"
                    else:
                        for r in remaining:
                            cells.setdefault(
                                r, Cell("error", reason="start failed: " + ev["error"]))
                        remaining = []
                elif kind == "stopped":
                    current = "__stopped__"
            if rc is not None:
                break
            now = time.monotonic()
            limit = workload_timeout if current not in ("__start__", "__stop__") else max(
                workload_timeout, 120.0)
            if now - current_t0 > limit:
                killed_for = f"{current} exceeded {limit:.0f} s"
            elif now > deadline:
                killed_for = f"system timeout ({system_timeout:.0f} s) during {current}"
            if killed_for:
                _log(f"{system}: {killed_for}; killing the child's process group")
                _kill_group(proc)
                break
        # stragglers of the group (workers, raylets, nannies, resource trackers): let them finish
        # their own clean-up first, then end them
        if not _wait_group(proc, 10.0):
            _note(system, "processes of the child's group were still alive 10 s after it ended; "
                  "the harness ended them")
            _kill_group(proc)
        log.close()
        if current == "__stop__":
            _note(system, f"stop ({'shutdown' if system == 'repartir' else 'teardown'}) "
                  + (f"hung: {killed_for}" if killed_for else f"failed, exit {proc.returncode}")
                  + f"; log tail:\n{_tail(log_path, 8)}")
        if system == "repartir":
            _check_shm_leaks(proc.pid)
        remaining = [w for w in remaining if w not in cells]
        if current in remaining:
            status = "timeout" if killed_for else "crash"
            why = killed_for or f"child exited with {proc.returncode} during {current}"
            cells[current] = Cell(status, reason=why)
            remaining.remove(current)
            if not killed_for:
                _log(f"{system}: {why}; log tail:\n{_tail(log_path)}")
        elif remaining and not killed_for:
            why = f"child exited with {proc.returncode} ({current})"
            _log(f"{system}: {why}; log tail:\n{_tail(log_path)}")
        if killed_for and time.monotonic() > deadline:
            for w in remaining:
                cells[w] = Cell("timeout", reason="not run: " + killed_for)
            remaining = []
        if current == "__start__" and remaining:
            for w in remaining:
                cells[w] = Cell("crash" if not killed_for else "timeout",
                                reason="start failed: " + (killed_for or f"exit {proc.returncode}"))
            _log(f"{system}: start failed; log tail:\n{_tail(log_path)}")
            remaining = []
    return cells


#: Harness-level observations (leaks, hung shutdowns), printed under the table.
NOTES: list[str] = []


def _note(system: str, msg: str) -> None:
    NOTES.append(f"{system}: {msg}")
    _log(f"{system}: {msg}")


def _check_shm_leaks(driver_pid: int, wait: float = 5.0) -> None:
    """Note what the repartir session of ``driver_pid`` left in /dev/shm (``docs/architecture.md``,
    "Processes": nothing)."""
    def left() -> list[str]:
        try:
            names = os.listdir("/dev/shm")
        except OSError:
            return []
        return [n for n in names if "repartir" in n and f"_{driver_pid}" in n]
    end = time.monotonic() + wait
    while left() and time.monotonic() < end:
        time.sleep(0.2)
    names = left()
    if names:
        size = sum(os.path.getsize(os.path.join("/dev/shm", n)) for n in names
                   if os.path.exists(os.path.join("/dev/shm", n)))
        _note("repartir", f"{len(names)} /dev/shm entries of session pid {driver_pid} left "
              f"{wait:.0f} s after the child ended ({size / MIB:.0f} MiB): {names[:4]}")


def _tail(path: str, n: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def _available(system: str) -> bool:
    mod = SYSTEM_MODULE.get(system)
    if mod is None:
        return True
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def _fmt(v: float) -> str:
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _cell_text(w: str, c: Cell | None) -> str:
    if c is None:
        return ""
    if c.status == "ok":
        assert c.value is not None
        text = _fmt(c.value)
        key, form = CELL_SUFFIX.get(w, ("", ""))
        if c.extra.get(key) is not None:
            text += " (" + form.format(c.extra[key]) + ")"
        return text
    return {"skip": "–", "missing": "n/a"}.get(c.status, c.status.upper())


def render_table(results: dict[str, dict[str, Cell]], workloads: list[str], cfg: Config) -> str:
    systems = ([s for s in SYSTEM_ORDER if s in results]
               + [s for s in results if s not in SYSTEM_ORDER])
    header = ["workload (unit)"] + [SYSTEM_TITLE.get(s, s) for s in systems] + ["goal"]
    rows = []
    for w in workloads:
        row = [f"{w} ({WORKLOADS[w][1]})"]
        row += [_cell_text(w, results[s].get(w)) for s in systems]
        row.append(GOALS.get(w, ""))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(r[0].ljust(widths[0]) if i == 0 else
                         (r[i].ljust(widths[i]) if i == len(r) - 1 else r[i].rjust(widths[i]))
                         for i in range(len(r))).rstrip()

    sizes = (f"workers={cfg.workers}, tiny={cfg.tiny_tasks:,}, rtt={cfg.rtt_trips:,}, "
             f"array={cfg.array_mib} MiB, bigarg={cfg.bigarg_tasks} tasks"
             + "".join(text for ws, text in (
                 (("actor_sync", "actor_async"),
                  f", actor calls={cfg.actor_sync_calls:,}/{cfg.actor_async_calls:,}"),
                 (("fib",), f", fib({cfg.fib_n}) leaf<={cfg.fib_leaf}"),
                 (("unbalanced",), f", unbalanced={cfg.unbalanced_tasks} tasks"))
                 if any(x in workloads for x in ws))
             + (" [--quick]" if cfg.quick else ""))
    out = [sizes, line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    notes = []
    for s in systems:
        for w in workloads:
            c = results[s].get(w)
            if c is not None and c.status not in ("ok", "skip"):
                notes.append(f"  {s}/{w}: {c.status}: {c.reason}")
    if notes:
        out += ["failures:"] + notes
    if NOTES:
        out += ["notes:"] + ["  " + n.split("\n")[0] for n in NOTES]
    out.append("what each system does (definitions: docs/benchmarks.md):")
    for w in workloads:
        lines = [(s, does(w, s)) for s in systems]
        lines = [(s, t) for s, t in lines if t]
        if len({t for _, t in lines}) == 1 and len(lines) > 1:
            out.append(f"  {w}: {lines[0][1]}")
        else:
            out += [f"  {w}, {SYSTEM_TITLE.get(s, s)}: {t}" for s, t in lines]
    for w, note in FOOTNOTES.items():
        key = CELL_SUFFIX[w][0]
        shown = ("memcpy" in results if w == "put" else      # put: whenever memcpy was measured
                 any(c.get(w) is not None and c[w].status == "ok" and key in c[w].extra
                     for c in results.values()))
        if w in workloads and shown:
            out.append(note)
    return "\n".join(out)


def records(results: dict[str, dict[str, Cell]], cfg: Config) -> list[dict[str, Any]]:
    out = []
    for s, cells in results.items():
        for w, c in cells.items():
            if c.status == "ok":
                extra = {"workers": cfg.workers, "quick": cfg.quick, **c.extra}
                out.append({"system": s, "workload": w, "value": c.value, "unit": WORKLOADS[w][0],
                            "extra": extra})
    return out


def _add_memcpy_fractions(results: dict[str, dict[str, Cell]]) -> None:
    ref = results.get("memcpy", {}).get("put")
    if ref is None or ref.status != "ok" or not ref.value:
        return
    for s, cells in results.items():
        c = cells.get("put")
        if s != "memcpy" and c is not None and c.status == "ok" and c.value is not None:
            c.extra["fraction_of_memcpy"] = round(c.value / ref.value, 4)
            c.extra["memcpy_GBps"] = round(ref.value, 3)


def _split(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small sizes, repartir + multiprocessing only (under a minute)")
    p.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEM_ORDER)} "
                   "(default: repartir and every installed peer; quick: repartir,multiprocessing)")
    p.add_argument("--workloads", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="workers for every system (default: os.cpu_count())")
    p.add_argument("--json", metavar="FILE", help="write the records as a JSON list to FILE")
    p.add_argument("--tiny-tasks", type=int)
    p.add_argument("--rtt-trips", type=int)
    p.add_argument("--array-mib", type=int)
    p.add_argument("--bigarg-tasks", type=int)
    p.add_argument("--fib-n", type=int)
    p.add_argument("--unbalanced-tasks", type=int)
    p.add_argument("--actor-sync-calls", type=int)
    p.add_argument("--actor-async-calls", type=int)
    p.add_argument("--mp-start", default="spawn", choices=("spawn", "forkserver", "fork"),
                   help="multiprocessing start method (default spawn, like repartir's workers)")
    p.add_argument("--timeout", type=float, help="seconds per system (default 1200; quick 120)")
    p.add_argument("--workload-timeout", type=float,
                   help="seconds per workload before the child is killed (default 300; quick 45)")
    p.add_argument("--no-memcpy", action="store_true", help="do not measure the memcpy reference")
    p.add_argument("--verbose", action="store_true", help="let the children print to this terminal")
    p.add_argument("--logdir", help="keep child logs and event files here (default: a temp dir)")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_cfg", help=argparse.SUPPRESS)
    p.add_argument("--_out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    workloads = _split(a.workloads) or list(WORKLOADS)
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; known: {list(WORKLOADS)}")

    if a._child:
        return child_main(a._child, workloads, Config(**json.loads(a._cfg)), a._out)

    kw = {"mp_start": a.mp_start}
    cfg = Config.quick_sizes(a.workers, **kw) if a.quick else Config(workers=a.workers, **kw)
    over = {k: getattr(a, k) for k in ("tiny_tasks", "rtt_trips", "array_mib", "bigarg_tasks",
                                       "fib_n", "unbalanced_tasks", "actor_sync_calls",
                                       "actor_async_calls")
            if getattr(a, k) is not None}
    if over:
        cfg = Config(**{**cfg.__dict__, **over})

    explicit = _split(a.systems)
    if explicit:
        bad = [s for s in explicit if s not in ADAPTERS]
        if bad:
            p.error(f"unknown system(s) {bad}; known: {list(SYSTEM_ORDER)}")
        systems = list(explicit)
    elif a.quick:
        systems = ["repartir", "multiprocessing"]
    else:
        systems = [s for s in SYSTEM_ORDER if s != "memcpy" and (s == "repartir" or _available(s))]
    if "put" in workloads and "memcpy" not in systems and not a.no_memcpy:
        systems.insert(1 if systems and systems[0] == "repartir" else 0, "memcpy")
    if "transfer" in workloads and "tcp" not in systems:
        systems.append("tcp")  # the physical reference of transfer
    systems = ([s for s in SYSTEM_ORDER if s in systems]
               + [s for s in systems if s not in SYSTEM_ORDER])

    system_timeout = a.timeout or (120.0 if a.quick else 1200.0)
    workload_timeout = a.workload_timeout or (45.0 if a.quick else 300.0)
    logdir = a.logdir or tempfile.mkdtemp(prefix="repartir-bench-")
    os.makedirs(logdir, exist_ok=True)
    _log(f"systems={','.join(systems)} workloads={','.join(workloads)} workers={cfg.workers} "
         f"logs={logdir}")

    results: dict[str, dict[str, Cell]] = {}
    for s in systems:
        if not _available(s):
            _log(f"{s}: not installed ({SYSTEM_MODULE[s]} is not importable)")
            results[s] = {w: Cell("missing", reason="not installed") for w in workloads}
            if s == "repartir":
                for w in workloads:
                    results[s][w] = Cell("error", reason="repartir is not importable")
            continue
        t0 = time.monotonic()
        results[s] = run_system(s, workloads, cfg, workload_timeout, system_timeout, logdir,
                                a.verbose)
        _log(f"{s}: done in {time.monotonic() - t0:.1f} s")
    _add_memcpy_fractions(results)

    print(render_table(results, workloads, cfg), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(records(results, cfg), f, indent=1, ensure_ascii=False)
            f.write("\n")
        _log(f"wrote {a.json}")
    failed = [w for w, c in results.get("repartir", {}).items() if c.status not in ("ok", "skip")]
    broken = any(c.status not in ("ok", "skip", "missing") for cells in results.values()
                 for c in cells.values())
    if a.logdir is None and not broken:  # nothing to look into: the temporary logs go
        shutil.rmtree(logdir, ignore_errors=True)
    elif broken:
        _log(f"the children's logs are in {logdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
