"""Endpoints: a ZeroMQ socket that sends and receives verified messages (docs/cluster.md).

The cluster uses ROUTER/DEALER: the head listens on a ROUTER (it replies to a peer by its
routing id), nodes and drivers connect with a DEALER.  An :class:`Endpoint` wraps either::

    head = Endpoint.listen("tcp://127.0.0.1:*", token=token)   # ROUTER, port chosen by the OS
    node = Endpoint.connect(head.address, token=token)          # DEALER
    node.send({"hello": 1})
    msg = head.recv(timeout=5)          # Message(peer, sender, seq, value)
    head.send("welcome", to=msg.peer)

A message that fails verification (malformed, bad MAC, replayed, reflected, undecodable) is
dropped, counted in :attr:`Endpoint.dropped` and logged (at most one record per kind every
``WIRE_LOG_INTERVAL_S``) on the ``repartir.cluster`` logger; it never raises out of
:meth:`Endpoint.recv`.  A listening endpoint answers a peer whose MAC does not verify with an
unsigned refusal, so that a peer holding the wrong token learns it (:class:`TokenError` from
its :meth:`~Endpoint.recv`) instead of waiting.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import time
from typing import Any, Callable, NamedTuple

import zmq

from ..config import (CLUSTER_HOST, WIRE_INBAND_BYTES, WIRE_LINGER_MS, WIRE_LOG_INTERVAL_S,
                      WIRE_MAX_FRAME_BYTES, WIRE_MAX_SENDERS, WIRE_REFUSALS_PER_S,
                      WIRE_SEND_TIMEOUT_S)
from ..errors import EncryptionError, TokenError, WireError, WireTimeoutError
from .curve import CurveKeys, generate_keys, public_key
from .handshakes import HandshakeMonitor
from .tokens import check_token, find_token
from .wire import REFUSED, Signer, Verifier, decode, encode

__all__ = ["Endpoint", "Message", "is_local_address", "default_address"]

log = logging.getLogger("repartir.cluster")

_SOCKET_TYPES = {"router": zmq.ROUTER, "dealer": zmq.DEALER}
_TOKEN_HINT = ("both ends must use the same cluster token: set REPARTIR_TOKEN, or the same "
               "token file (REPARTIR_TOKEN_FILE), or pass the same token= to both")


def default_address() -> str:
    """Where :meth:`Endpoint.listen` listens by default: ``tcp://127.0.0.1:*`` (loopback,
    a port chosen by the OS)."""
    return f"tcp://{CLUSTER_HOST}:*"


def _host(address: str) -> str | None:
    """The host of a ``tcp://host:port`` address (``None`` for other transports)."""
    transport, sep, rest = address.partition("://")
    if not sep:
        raise ValueError(f"a ZeroMQ address is transport://where (tcp://127.0.0.1:5555, "
                         f"inproc://name), got {address!r}")
    if transport != "tcp":
        return None
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    if ";" in host:  # tcp://source;destination: the destination counts
        host = host.rsplit(";", 1)[1]
    return host.strip("[]")


def is_local_address(address: str) -> bool:
    """Whether only this machine can reach ``address``: ``inproc://``, ``ipc://`` and
    ``tcp://`` on a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``).  ``*``,
    ``0.0.0.0``, interface names and every other host are not."""
    host = _host(address)
    if host is None:
        return address.startswith(("inproc://", "ipc://"))
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Message(NamedTuple):
    """A verified, decoded message."""

    #: the ROUTER's routing id of the peer (reply with ``to=peer``); ``None`` on a DEALER
    peer: bytes | None
    sender: bytes  #: the sender's 16-byte id (signed)
    seq: int  #: its sequence number (signed)
    value: Any  #: the value sent (numpy arrays: read-only, zero-copy views of the frames)


class _DropLog:
    """Counts dropped messages by reason; logs at most one record per reason per interval."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.counts: collections.Counter[str] = collections.Counter()
        self._next: dict[str, float] = {}
        self._unlogged: collections.Counter[str] = collections.Counter()

    def drop(self, reason: str, text: str) -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        if now < self._next.get(reason, 0.0):
            self._unlogged[reason] += 1
            return
        more = self._unlogged.pop(reason, 0)
        self._next[reason] = now + self.interval
        log.warning("%s%s", text,
                    f" ({more} more dropped for the same reason since the last record)"
                    if more else "")


class Endpoint:
    """A ROUTER or DEALER socket that sends signed messages and receives verified ones.

    Make one with :meth:`listen` (bind) or :meth:`connect`.  One thread at a time (ZeroMQ
    sockets are not thread-safe).  Close it (or use ``with``): :meth:`close` closes the
    socket, and the context too when the endpoint made it.

    Attributes:
        address: the address bound (its real port when ``*`` was asked) or connected to.
        socket_type: ``"router"`` or ``"dealer"``.
        sender: this endpoint's 16-byte sender id.
        dropped: ``collections.Counter`` of dropped messages by reason (``"malformed"``,
            ``"bad_mac"``, ``"replay"``, ``"reflected"``, ``"undecodable"``).
        authenticated: whether a token keys the MACs (``False``: loopback without a token).
        refused_handshakes: ``collections.Counter`` of failed handshakes by reason, when
            made with ``watch_handshakes=True`` (see :mod:`.handshakes`).
    """

    def __init__(self, socket_type: str, *, token: str | bytes | None = None,
                 context: zmq.Context | None = None, max_senders: int = WIRE_MAX_SENDERS,
                 inband_bytes: int = WIRE_INBAND_BYTES,
                 max_frame_bytes: int = WIRE_MAX_FRAME_BYTES,
                 log_interval: float = WIRE_LOG_INTERVAL_S) -> None:
        """Use :meth:`listen` or :meth:`connect`; this makes an unbound socket.

        Args:
            socket_type: ``"router"`` or ``"dealer"``.
            token: the cluster token (``str`` or ``bytes``); ``None``: :func:`find_token`
                (``REPARTIR_TOKEN``, then the token file), and if there is none the
                endpoint is unauthenticated and may only bind or connect to loopback.
            context: a ``zmq.Context`` to make the socket in (required for ``inproc://``
                between endpoints); default: a context of its own, terminated by
                :meth:`close`.
            max_senders: senders whose sequence numbers are remembered (default 4096).
            inband_bytes: buffers smaller than this stay in the pickle frame (64 KiB).
            max_frame_bytes: a peer sending a larger frame is disconnected by ZeroMQ before
                anything is verified (-1, the default: no limit).
            log_interval: seconds between log records of one kind of drop (10 s).

        Raises:
            ValueError: an unknown ``socket_type``.
            TokenError: an unusable token (too short; unsafe token file).
        """
        if socket_type not in _SOCKET_TYPES:
            raise ValueError(f"socket_type is 'router' (listening side) or 'dealer' "
                             f"(connecting side), got {socket_type!r}")
        if token is None:
            token = find_token()
        elif isinstance(token, str):
            token = check_token(token, "token=")
        elif isinstance(token, (bytes, bytearray)) and len(token) < 16:
            raise TokenError(f"token= of {len(token)} bytes is too short for a cluster "
                             f"token: use `repartir token` or secrets.token_hex(32)")
        self.authenticated = token is not None
        self.socket_type = socket_type
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._context.socket(_SOCKET_TYPES[socket_type])
        self._socket.setsockopt(zmq.LINGER, WIRE_LINGER_MS)
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        self._signer = Signer(token)
        self.sender = self._signer.sender
        self._verifier = Verifier(token, own_sender=self.sender, max_senders=max_senders)
        self._inband = inband_bytes
        self._drops = _DropLog(log_interval)
        self.dropped = self._drops.counts
        self._refusal_budget = WIRE_REFUSALS_PER_S
        self._refusal_time = time.monotonic()
        self.address = ""
        self._curve_client = False
        self._monitor: HandshakeMonitor | None = None
        self._handshakes = _DropLog(log_interval)
        self.refused_handshakes = self._handshakes.counts
        self._closed = False
        if not self.authenticated:
            log.warning("no cluster token (REPARTIR_TOKEN, token file or token=): messages "
                        "are not authenticated, so this endpoint is limited to loopback and "
                        "any process of this machine that reaches it can run code as this "
                        "user; make one with `repartir token`")

    # ------------------------------------------------------------------ making one

    def _check_reach(self, address: str, verb: str) -> None:
        if not self.authenticated and not is_local_address(address):
            host = _host(address) or address
            raise TokenError(
                f"refusing to {verb} {host} without a token: anyone who can reach "
                f"{address} could send this process pickles that run code as this user. "
                f"Make a token with `repartir token` (or set REPARTIR_TOKEN) on every node, "
                f"or {verb} 127.0.0.1 only")

    def _watch(self, encrypted: bool, listening: bool) -> None:
        self._monitor = HandshakeMonitor(self._socket, encrypted=encrypted,
                                         listening=listening, address=self.address)
        self._watch_poller = zmq.Poller()
        self._watch_poller.register(self._socket, zmq.POLLIN)
        self._watch_poller.register(self._monitor.socket, zmq.POLLIN)

    @classmethod
    def listen(cls, address: str | None = None, *, socket_type: str = "router",
               token: str | bytes | None = None, server_keys: CurveKeys | None = None,
               context: zmq.Context | None = None, watch_handshakes: bool = False,
               **options: Any) -> "Endpoint":
        """Bind a new endpoint to ``address`` (default ``tcp://127.0.0.1:*``: loopback, a
        free port; :attr:`address` then holds the real one).

        Args:
            server_keys: a CurveZMQ key pair with its secret (``load_key_file`` of a
                ``.key_secret`` file, or ``generate_keys()``): the socket is a CURVE server,
                every connection encrypted; clients must give its public key.
            watch_handshakes: log (rate-limited) and count in :attr:`refused_handshakes`
                the connections whose handshake fails: a client without encryption to an
                encrypting endpoint, or the other way round, or one holding another server
                key (default ``False``).  Checked by :meth:`recv` and
                :meth:`check_handshakes`.
            token, context, options: as for the constructor.

        Raises:
            TokenError: a non-loopback address (``0.0.0.0``, ``*``, a LAN address) and no
                token: "refusing to listen on ... without a token".
            ValueError: ``server_keys`` without a secret key.
            zmq.ZMQError: the address cannot be bound (in use, unknown interface).
        """
        ep = cls(socket_type, token=token, context=context, **options)
        address = address or default_address()
        try:
            ep._check_reach(address, "listen on")
            if server_keys is not None:
                if server_keys.secret is None:
                    raise ValueError("server_keys needs the secret key too: load the "
                                     ".key_secret file written by `repartir keygen`")
                ep._socket.curve_secretkey = server_keys.secret
                ep._socket.curve_publickey = server_keys.public
                ep._socket.curve_server = True
            if watch_handshakes:
                ep._watch(server_keys is not None, listening=True)
            if socket_type == "router":
                # a peer that connects again under its routing id (a driver's, after a cut
                # link, whose old connection this side never saw close) takes it over: else
                # the new connection is ignored and replies go to the dead one
                ep._socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
            ep._socket.bind(address)
            ep.address = ep._socket.getsockopt_string(zmq.LAST_ENDPOINT) or address
            if ep._monitor is not None:
                ep._monitor.address = ep.address
        except BaseException:
            ep.close()
            raise
        return ep

    @classmethod
    def connect(cls, address: str, *, socket_type: str = "dealer",
                token: str | bytes | None = None, server_key: str | bytes | None = None,
                client_keys: CurveKeys | None = None, context: zmq.Context | None = None,
                watch_handshakes: bool = False, routing_id: bytes | None = None,
                **options: Any) -> "Endpoint":
        """Connect a new endpoint to ``address`` (ZeroMQ connects in the background and
        reconnects by itself: this returns at once, before the peer is reached).

        Args:
            server_key: the CURVE server's public key (40-character Z85, or the path of its
                ``.key`` file): the connection is encrypted and the server authenticated by
                its key; a server with another key never answers (the handshake fails).
            client_keys: this client's key pair (default: a new one per endpoint).
            watch_handshakes: make :meth:`recv` raise :class:`EncryptionError` as soon as
                the handshake fails (one side encrypts and the other does not, or the server
                key is not the server's) instead of waiting for its timeout (default
                ``False``).
            routing_id: the id a ROUTER knows this connection by (1 to 255 bytes; default:
                one ZeroMQ makes): a process that connects to several ROUTERs with the same
                id can be reached by each of them under that id.  A listening endpoint hands
                the id over to the newest connection that claims it (``ROUTER_HANDOVER``).
            token, context, options: as for the constructor.

        Raises:
            TokenError: a non-loopback address and no token.
        """
        ep = cls(socket_type, token=token, context=context, **options)
        try:
            ep._check_reach(address, "connect to")
            if server_key is not None:
                keys = client_keys or generate_keys()
                ep._socket.curve_serverkey = public_key(server_key)
                ep._socket.curve_publickey = keys.public
                ep._socket.curve_secretkey = keys.secret
                ep._curve_client = True
            elif client_keys is not None:
                raise ValueError("client_keys without server_key: CURVE needs the server's "
                                 "public key")
            ep.address = address
            if routing_id is not None:
                ep._socket.setsockopt(zmq.ROUTING_ID, routing_id)
            if watch_handshakes:
                ep._watch(ep._curve_client, listening=False)
            ep._socket.connect(address)
        except BaseException:
            ep.close()
            raise
        return ep

    # ------------------------------------------------------------------ messages

    def send(self, value: Any, *, to: bytes | None = None) -> None:
        """Send ``value`` as one signed message.  Large numpy arrays (and other out-of-band
        pickle buffers of at least 64 KiB) go as frames of their own without a copy: do not
        modify them until the message is gone (see :func:`repartir.cluster.wire.encode`).

        Args:
            to: on a ROUTER, the routing id of the peer (``Message.peer``); ``None`` on a
                DEALER.

        Raises:
            ValueError: ``to`` missing on a ROUTER, or given on a DEALER.
            SerializationError: ``value`` cannot be pickled.
            WireTimeoutError: (DEALER) the message could not be queued within
                ``WIRE_SEND_TIMEOUT_S``: the peer is gone and its queue full, or the
                connection failed for good.
            EncryptionError: (DEALER made with ``watch_handshakes``) meanwhile, the
                handshake failed (a socket whose handshake failed has no connection left,
                and a plain send on it would block for ever).
            zmq.ZMQError: the socket is closed.
        """
        if (to is None) == (self.socket_type == "router"):
            raise ValueError("a ROUTER endpoint sends to a peer: pass to=message.peer"
                             if to is None else "a DEALER endpoint has one peer: leave out to=")
        frames = self._signer.sign(encode(value, self._inband))
        if to is not None:  # a ROUTER drops what it cannot route: it never blocks
            frames.insert(0, to)
            self._socket.send_multipart(frames, copy=False)
            return
        try:
            self._socket.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            self._send_when_writable(frames)

    def _send_when_writable(self, frames: list) -> None:
        """A DEALER's send that could not be queued at once (no connection, or a full
        queue): wait until it can, at most ``WIRE_SEND_TIMEOUT_S``, watching the handshake.
        (libzmq queues the parts of a message all or none.)"""
        deadline = time.monotonic() + WIRE_SEND_TIMEOUT_S
        while True:
            self.check_handshakes()
            if self._socket.poll(50, zmq.POLLOUT):
                try:
                    self._socket.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
                    return
                except zmq.Again:
                    pass
            if time.monotonic() >= deadline:
                raise WireTimeoutError(
                    f"could not send to {self.address} for {WIRE_SEND_TIMEOUT_S:g} s "
                    f"(WIRE_SEND_TIMEOUT_S): no connection to it (is it up and reachable, "
                    f"with the same encryption settings?) or its queue is full")

    def poll(self, timeout: float | None = None) -> bool:
        """Whether a message is waiting, after waiting up to ``timeout`` seconds (``None``:
        for ever).  A waiting message may still be dropped by :meth:`recv`."""
        ms = None if timeout is None else max(int(timeout * 1000), 0)
        return bool(self._socket.poll(ms, zmq.POLLIN))

    def recv(self, timeout: float | None = None, *,
             place: Callable[[list[int]], dict[int, memoryview] | None] | None = None
             ) -> Message:
        """The next verified message, waiting up to ``timeout`` seconds (``None``: for
        ever).  Messages that fail verification are dropped on the way (see
        :attr:`dropped`).

        ``place`` (default none) receives large frames straight into the caller's memory:
        called with the sizes of each message's payload frames (before anything is
        verified), it returns ``{payload frame index: writable byte view of that size}``
        (or ``None``); those frames are copied there while they are hashed and verified
        where they lie (:meth:`repartir.cluster.wire.Verifier.verify`), and the value
        decoded refers to that memory.  A message that is refused may have written its
        bytes there: give only memory that nothing uses until a message is accepted.

        Raises:
            WireTimeoutError: nothing verified came within ``timeout``; the message names
                the drops meanwhile and what to check (the token, the server key).
            TokenError: (DEALER) the peer refused our messages: its token differs.
            EncryptionError: (DEALER made with ``watch_handshakes``) the handshake failed:
                one side encrypts and the other does not, or the server key is wrong.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        dropped_before = sum(self.dropped.values())
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if (left is not None and left <= 0) or not self._wait(left):
                raise self._timeout_error(timeout, sum(self.dropped.values()) - dropped_before)
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                continue
            msg = self._accept(frames, place)
            if msg is not None:
                return msg

    def _wait(self, timeout: float | None) -> bool:
        """:meth:`poll`, also woken (and checked) by a failed handshake when watched."""
        if self._monitor is None or self._socket.poll(0, zmq.POLLIN):
            return self.poll(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            events = dict(self._watch_poller.poll(None if left is None else int(left * 1000)))
            if self._monitor.socket in events:
                self.check_handshakes()
            if self._socket in events:
                return True
            if left is not None and left <= 0:
                return False

    def check_handshakes(self) -> int:
        """Read the handshake failures reported since the last check (see
        ``watch_handshakes``); a listening endpoint logs them (at most one record per
        kind every ``log_interval``) and returns how many there were.

        Raises:
            EncryptionError: (connecting endpoint) its handshake failed; the message says
                which side encrypts and what to pass.
        """
        if self._monitor is None:
            return 0
        failures = self._monitor.failures()
        for f in failures:
            if self.socket_type == "dealer" and f.reason != "other":
                raise EncryptionError(f.text)
            if f.reason == "other":  # a peer gone mid-handshake, say: counted, not logged
                self.refused_handshakes["other"] += 1
            else:
                self._handshakes.drop(f.reason, f.text)
        return len(failures)

    def _accept(self, frames: list, place: Callable | None = None) -> Message | None:
        peer = None
        if self.socket_type == "router":
            peer, frames = frames[0].bytes, frames[1:]
        who = f"peer {peer.hex()}" if peer is not None else self.address
        if (self.socket_type == "dealer" and len(frames) == 2
                and len(frames[0]) == len(REFUSED) and frames[0].bytes == REFUSED):
            reason = frames[1].bytes[:500].decode("utf-8", "replace")
            raise TokenError(f"{self.address} refused our message: {reason}")
        into = place([len(f) for f in frames[:-2]]) if place is not None \
            and len(frames) >= 3 else None
        try:
            verified = self._verifier.verify(frames, into)
        except WireError as exc:
            self._drops.drop(exc.reason, f"dropped a message from {who}: {exc}"
                             + (f"; {_TOKEN_HINT}" if exc.reason == "bad_mac" else ""))
            if exc.reason == "bad_mac" and peer is not None:
                self._refuse(peer)
            return None
        try:
            value = decode(verified.frames)
        except Exception as exc:  # a token holder sent what this process cannot unpickle
            self._drops.drop("undecodable", f"dropped a verified message from {who} (sender "
                             f"{verified.sender.hex()}): unpickling failed: "
                             f"{type(exc).__name__}: {exc}")
            return None
        return Message(peer, verified.sender, verified.seq, value)

    def _refuse(self, peer: bytes) -> None:
        now = time.monotonic()
        self._refusal_budget = min(WIRE_REFUSALS_PER_S, self._refusal_budget
                                   + (now - self._refusal_time) * WIRE_REFUSALS_PER_S)
        self._refusal_time = now
        if self._refusal_budget < 1:
            return
        self._refusal_budget -= 1
        text = (f"its MAC does not verify with the cluster token of {self.address}; "
                f"{_TOKEN_HINT}")
        try:
            self._socket.send_multipart([peer, REFUSED, text.encode()], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _timeout_error(self, timeout: float | None, dropped: int) -> WireTimeoutError:
        what = (f"; {dropped} message(s) dropped meanwhile ({dict(self.dropped)} in all)"
                if dropped else "")
        curve = ", and with encryption that the server key given is the server's public key"
        return WireTimeoutError(
            f"no verified message on {self.address} within {timeout} s{what}. If the peer is "
            f"up, {_TOKEN_HINT}"
            + (curve if self._curve_client else ""))

    # ------------------------------------------------------------------ the end

    def close(self, linger_ms: int | None = None) -> None:
        """Close the socket (what is still queued is dropped after ``linger_ms``, default
        ``WIRE_LINGER_MS`` = 0) and terminate the context if the endpoint made it.
        Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        if self._monitor is not None:
            self._monitor.close()
        self._socket.close(WIRE_LINGER_MS if linger_ms is None else linger_ms)
        if self._own_context:
            self._context.term()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def socket(self) -> zmq.Socket:
        """The ZeroMQ socket, to register in a ``zmq.Poller`` with other endpoints' (then
        call :meth:`recv` on the endpoints it reports).  Sending or receiving on it directly
        bypasses signing and verification."""
        return self._socket

    def __enter__(self) -> "Endpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.address or "unbound"
        return f"Endpoint({self.socket_type}, {state})"
