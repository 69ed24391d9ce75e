"""Forwarding of the worker and actor processes' output to the driver's console.

The node starts every worker and actor process with its stdout and its stderr each on a pipe
of their own (``os.pipe``: both ends non-inheritable, so only the write end reaches the child,
as its fd 1 or 2, and no other child gets a read end).  One thread of the driver,
``repartir-output``, waits on all the read ends at once with a ``selectors`` selector and
writes every line it reads to the driver's ``sys.stdout`` or ``sys.stderr``, prefixed with
``(worker pid=N) `` or ``(ClassName pid=N) `` as in Ray.  The workers never wait for the
driver: their writes go into the pipe's buffer, and only a driver whose own console blocks
for longer than that buffer lasts slows them down, as it would slow children that share its
console.

A process's last :data:`TAIL_LINES` lines are kept in memory: they replace the log file in
the error a ``get`` raises when workers fail to start.  When a process dies, its pipes are
read to their end, a last line without its newline is forwarded too, and the read ends are
closed (a read end stays open only while a process the dead one started still holds the
write end, until that one closes it or the node stops).

Only this thread reads, registers or closes the read ends; other threads hand it commands
through a list and a wake-up pipe.
"""

from __future__ import annotations

import collections
import os
import selectors
import sys
import threading

__all__ = ["OutputForwarder", "TAIL_LINES"]

TAIL_LINES = 50  # lines of each process kept for error messages
READ_BYTES = 65536
MAX_LINE = 65536  # a line without its end this long is forwarded as it is
MAX_READS = 64  # reads of one pipe per wake-up, so that one chatty process cannot starve the rest


class _Process:
    """One worker or actor process: its prefix, its two streams and its last lines."""

    __slots__ = ("prefix", "streams", "tail")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.streams: list[_Stream] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)


class _Stream:
    """The read end of one process's stdout or stderr pipe."""

    __slots__ = ("fd", "to_stderr", "proc", "partial")

    def __init__(self, fd: int, to_stderr: bool, proc: _Process) -> None:
        self.fd = fd
        self.to_stderr = to_stderr
        self.proc = proc
        self.partial = b""


class OutputForwarder:
    """Forwards the lines of many pipes to the driver's ``sys.stdout`` / ``sys.stderr``."""

    #: Called with ``(to_stderr, text)`` for every batch of prefixed lines, from the
    #: forwarding thread (a cluster's node daemon sends them on to its drivers).
    sink = None

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._commands: list[tuple] = []
        self._closed = False
        self._procs: dict[object, _Process] = {}  # by key, until finish() or close()
        self._thread = threading.Thread(target=self._run, daemon=True, name="repartir-output")
        self._thread.start()

    # -- called by the node's threads --------------------------------------------------

    def add(self, key: object, prefix: str, out_fd: int, err_fd: int) -> None:
        """Forward the pipes ``out_fd`` and ``err_fd`` (read ends; this object closes them)
        of the process known as ``key`` with ``prefix`` before each line."""
        with self._lock:
            if not self._closed:
                self._commands.append(("add", key, prefix, out_fd, err_fd))
                out_fd = err_fd = -1
        for fd in (out_fd, err_fd):  # the forwarder has stopped: nobody will read them
            if fd >= 0:
                os.close(fd)
        self._wake()

    def finish(self, key: object, timeout: float = 5.0) -> str | None:
        """The process ``key`` has exited: forward all it wrote (a last line without its
        newline too), close its pipes, and return its last lines (``None`` when the forwarder
        has stopped, or is held up by the console for longer than ``timeout``)."""
        done = threading.Event()
        result: list[str] = []
        with self._lock:
            if self._closed:
                return None
            self._commands.append(("finish", key, done, result))
        self._wake()
        if not done.wait(timeout):
            return None
        return result[0] if result else None

    def close(self, timeout: float = 5.0) -> None:
        """Forward what is left in every pipe, close them all and end the thread (waits for
        it up to ``timeout``; a thread held up by the console closes them when it can)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._commands.append(("stop",))
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):  # full: a wake-up is pending anyway
            pass

    # -- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                events = self._sel.select()
            except (OSError, ValueError):
                events = []
            for key, _ in events:
                stream = key.data
                if stream is None:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except OSError:
                        pass
                elif stream.fd >= 0:
                    self._read(stream, MAX_READS)
            with self._lock:
                commands, self._commands = self._commands, []
            for cmd in commands:
                if cmd[0] == "add":
                    self._add(*cmd[1:])
                elif cmd[0] == "finish":
                    _, key, done, result = cmd
                    proc = self._procs.pop(key, None)
                    if proc is not None:
                        self._drain(proc)
                        result.append("\n".join(proc.tail))
                    done.set()
                else:  # stop
                    self._stop(commands)
                    return

    def _add(self, key: object, prefix: str, out_fd: int, err_fd: int) -> None:
        proc = _Process(prefix)
        self._procs[key] = proc
        for fd, to_stderr in ((out_fd, False), (err_fd, True)):
            stream = _Stream(fd, to_stderr, proc)
            proc.streams.append(stream)
            try:
                os.set_blocking(fd, False)
                self._sel.register(fd, selectors.EVENT_READ, stream)
            except (OSError, ValueError):
                self._close_stream(stream)

    def _stop(self, commands: list[tuple]) -> None:
        for cmd in commands:  # finish() calls that came with the stop
            if cmd[0] == "finish":
                cmd[2].set()
        for proc in self._procs.values():
            self._drain(proc)
        self._procs.clear()
        for key in list(self._sel.get_map().values()):  # pipes of dead processes' children
            if key.data is not None:
                self._drain_stream(key.data)
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _drain(self, proc: _Process) -> None:
        """Forward what a dead process left in its pipes; close those at end-of-file."""
        for stream in proc.streams:
            if stream.fd >= 0:
                self._read(stream, None)
            self._flush_partial(stream)

    def _drain_stream(self, stream: _Stream) -> None:
        if stream.fd >= 0:
            self._read(stream, None)
        self._flush_partial(stream)
        self._close_stream(stream)

    def _read(self, stream: _Stream, max_reads: int | None) -> None:
        """Read what the pipe holds now (up to ``max_reads`` chunks) and forward its complete
        lines; at end-of-file, forward the last partial line and close the pipe."""
        chunks = []
        n = 0
        eof = False
        while max_reads is None or n < max_reads:
            try:
                data = os.read(stream.fd, READ_BYTES)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                eof = True
                break
            chunks.append(data)
            n += 1
        if chunks:
            data = stream.partial + b"".join(chunks)
            lines = data.split(b"\n")
            stream.partial = lines.pop()
            if len(stream.partial) >= MAX_LINE:
                lines.append(stream.partial)
                stream.partial = b""
            self._emit(stream, lines)
        if eof:
            self._flush_partial(stream)
            self._close_stream(stream)

    def _flush_partial(self, stream: _Stream) -> None:
        if stream.partial:
            line, stream.partial = stream.partial, b""
            self._emit(stream, [line])

    def _close_stream(self, stream: _Stream) -> None:
        if stream.fd < 0:
            return
        try:
            self._sel.unregister(stream.fd)
        except (KeyError, ValueError, OSError):
            pass
        try:
            os.close(stream.fd)
        except OSError:
            pass
        stream.fd = -1

    def _emit(self, stream: _Stream, lines: list[bytes]) -> None:
        if not lines:
            return
        texts = [line.decode(errors="replace") for line in lines]
        stream.proc.tail.extend(texts)
        prefix = stream.proc.prefix
        out = "".join(f"{prefix}{t}\n" for t in texts)
        sink = self.sink
        if sink is not None:  # a cluster's node daemon: relayed to its drivers too
            try:
                sink(stream.to_stderr, out)
            except Exception:  # noqa: BLE001 -- never stop the pipes for it
                pass
        console = sys.stderr if stream.to_stderr else sys.stdout
        if console is None:
            return
        try:
            try:
                console.write(out)
            except UnicodeEncodeError:
                enc = getattr(console, "encoding", None) or "ascii"
                console.write(out.encode(enc, errors="replace").decode(enc))
            console.flush()
        except Exception:  # a closed or broken console: drop the lines, keep the pipes flowing
            pass
