"""Signals that raise are put off while a shared-memory mutex is held (``repartir/sync.py``;
``docs/architecture.md``, "Cancellation and time-outs").  Run in a subprocess, since
:func:`count_held_mutexes` changes the mutex class for the life of the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent("""
    import mmap, os, signal, threading
    from repartir.sync import (RobustMutex, address_of, count_held_mutexes, defer_signal,
                               mutexes_held)

    count_held_mutexes()
    m = mmap.mmap(-1, 4096)
    a, b = RobustMutex(address_of(m, 0)), RobustMutex(address_of(m, 64))
    a.initialize(); b.initialize()
    seen = []

    def handler(signum, frame):
        if mutexes_held():
            seen.append("deferred")
            defer_signal(signum)
            return
        seen.append("handled")
        raise KeyboardInterrupt

    signal.signal(signal.SIGUSR1, handler)
    assert not mutexes_held()
    # nested sections: the stop waits for the outer one to end, then is raised
    try:
        with a:
            with b:
                os.kill(os.getpid(), signal.SIGUSR1)
                for _ in range(1000):
                    pass
                seen.append("inner body done")
            seen.append("outer body done")
        seen.append("not reached")
    except KeyboardInterrupt:
        seen.append("raised")
    assert seen == ["deferred", "inner body done", "outer body done", "handled", "raised"], seen
    assert not mutexes_held()
    assert a.try_acquire() and b.try_acquire()  # neither was left held
    b.release()
    a.release()
    # acquire/release and a failed try_acquire keep the count right
    a.acquire(); assert mutexes_held(); a.release(); assert not mutexes_held()
    t = threading.Thread(target=lambda: (a.acquire(), ev.wait(), a.release()))
    ev = threading.Event(); t.start()
    import time; time.sleep(0.1)
    assert not a.try_acquire() and mutexes_held()  # held by the other thread
    # a signal while another thread holds a mutex is handled once it is released
    seen.clear()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(1000):
            pass
        ev.set(); t.join()
        for _ in range(100000):
            pass
        seen.append("not reached")
    except KeyboardInterrupt:
        seen.append("raised")
    assert seen == ["deferred", "handled", "raised"], seen
    assert not mutexes_held()
    print("ok")
""")


def test_a_raising_handler_waits_for_the_last_mutex_to_be_released():
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
