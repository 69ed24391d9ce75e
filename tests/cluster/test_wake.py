"""The pipe that wakes the connected driver's loop (``repartir/cluster/wake.py``): a signal
from another thread ends a long poll at once, signals between drains leave one byte, a signal
after a drain wakes the next poll, and nothing is written once it is closed."""

from __future__ import annotations

import os
import threading

import pytest
import zmq

from repartir.cluster.wake import Wake


def readable(wake: Wake, timeout_ms: int = 0) -> bool:
    poller = zmq.Poller()
    poller.register(wake.fd, zmq.POLLIN)
    return bool(dict(poller.poll(timeout_ms)))


def test_a_signal_from_another_thread_ends_a_long_poll():
    wake = Wake()
    woken = []
    t = threading.Thread(target=lambda: woken.append(readable(wake, 60_000)))
    t.start()
    wake.signal()
    t.join(30)  # the poll's own timeout is 60 s
    assert not t.is_alive() and woken == [True]
    wake.close()


def test_signals_between_drains_leave_one_byte_and_a_drain_rearms():
    wake = Wake()
    assert not readable(wake)
    for _ in range(1000):
        wake.signal()
    assert os.read(wake.fd, 4096) == b"w"  # one byte for all of them
    assert not readable(wake)
    wake.drain()  # rearms
    wake.signal()
    assert readable(wake)
    wake.drain()
    assert not readable(wake)
    wake.close()
    wake.close()
    wake.signal()  # closed: nothing happens


def test_closing_releases_both_ends():
    wake = Wake()
    r, w = wake.fd, wake._w
    os.fstat(r), os.fstat(w)
    wake.close()
    for fd in (r, w):
        with pytest.raises(OSError):
            os.fstat(fd)
