"""A pipe that wakes a thread sleeping in a ``zmq.Poller`` as soon as another thread has work
for it, instead of at the poll's timeout: the connected driver's loop (:mod:`.client_loop`)
polls up to 20 ms at a time when nothing is in flight, and a task queued meanwhile would wait
for the end of that poll before it is sent."""

from __future__ import annotations

import os
import threading

__all__ = ["Wake"]


class Wake:
    """Register :attr:`fd` for ``POLLIN`` in the poller.  :meth:`signal` (any thread) makes
    the poll return at once; :meth:`drain` (the polling thread, when :attr:`fd` is among the
    events) empties the pipe, and the polling thread must then look for work: what was queued
    before a signal is there when the poll returns, and a signal after a drain always wakes
    the next poll.  Signals between two drains write one byte.  :meth:`close` once the
    polling thread no longer polls :attr:`fd`; a signal after it does nothing.

    Raises:
        OSError: no pipe can be made (too many open files).
    """

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)
        self._lock = threading.Lock()
        self._sent = False

    def signal(self) -> None:
        """Wake the poll (a no-op if a byte is already waiting, or once closed)."""
        with self._lock:
            if self._sent or self._w < 0:
                return
            self._sent = True
            try:
                os.write(self._w, b"w")
            except BlockingIOError:  # the pipe is full: the poll has bytes to read anyway
                pass

    def drain(self) -> None:
        """(The polling thread) read what the pipe holds."""
        with self._lock:
            self._sent = False
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Close the pipe (twice is harmless)."""
        with self._lock:
            w, self._w = self._w, -1
        if w >= 0:
            os.close(w)
            os.close(self.fd)
