"""Failed ZeroMQ handshakes, told in words (docs/cluster.md, "Encryption").

A CurveZMQ server and a client without encryption (or the other way round) never exchange
a message: ZeroMQ drops the connection during its handshake, and without more both sides
would only wait.  ZeroMQ reports such failures on a socket's monitor (``zmq_socket_monitor``)
to both ends::

      client (DEALER)                                   server (ROUTER)
      greeting: NULL  ─────────────────────────────►  greeting: CURVE
      HANDSHAKE_FAILED_PROTOCOL (mechanism mismatch)   HANDSHAKE_FAILED_PROTOCOL (mismatch)

      greeting: CURVE, wrong server key ──────────►  HELLO box does not open
      HANDSHAKE_FAILED_NO_DETAIL                       HANDSHAKE_FAILED_PROTOCOL (cryptographic)

Either side of a mismatch may see only ``HANDSHAKE_FAILED_NO_DETAIL``: the other closed
the connection first.  A client then reconnects every 100 ms or so (it stops once it sees
the mismatch itself), so it takes ``UNCLEAR_FAILURES`` such failures in a row, with no
handshake succeeding between them, as a refusal, named by what it most likely is; a server
logs each one as such (rate-limited), since the client may never come back.

A :class:`HandshakeMonitor` reads those events from an inproc PAIR socket and turns each
into a sentence that says which side encrypts and what to change.  An
:class:`~repartir.cluster.sockets.Endpoint` made with ``watch_handshakes=True`` owns one:
a connecting endpoint raises :class:`~repartir.errors.EncryptionError` from ``recv``; a
listening one logs the refusal (rate-limited) and counts it.
"""

from __future__ import annotations

from typing import NamedTuple

import zmq
from zmq.utils.monitor import parse_monitor_message

__all__ = ["HandshakeMonitor", "HandshakeFailure"]

#: The events watched: every way a handshake fails, and its success (which resets the count
#: of unclear failures).
EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
          | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)

#: Failed handshakes in a row without detail after which a client reports a refusal
#: (about 0.3 s of reconnections); fewer could be a server that went away mid-handshake.
UNCLEAR_FAILURES = 3

_SERVER_KEY_HINT = ("give the head's public key, printed by `repartir start --head "
                    "--encrypt` (a node: repartir start --address HOST:PORT --server-key KEY; "
                    "a driver or `repartir status`: REPARTIR_SERVER_KEY=KEY)")


class HandshakeFailure(NamedTuple):
    """One failed handshake: ``reason`` is ``"plaintext_peer"`` (we encrypt, the peer does
    not), ``"encrypted_peer"`` (the peer encrypts, we do not), ``"wrong_key"`` (the
    client's server key is not the server's), ``"unclear"`` (a server's failure without
    detail, or a client's ``UNCLEAR_FAILURES``-th in a row: most likely one of those) or
    ``"other"``; ``text`` says it in words."""

    reason: str
    text: str


class HandshakeMonitor:
    """The handshake failures of one socket.

    Args:
        socket: the socket watched (a ROUTER that listens or a DEALER that connects).
        encrypted: whether ``socket`` uses CurveZMQ (as server or client).
        listening: whether it is the listening side.
        address: the address to name in the messages.

    Call :meth:`close` before closing ``socket``.
    """

    def __init__(self, socket: zmq.Socket, *, encrypted: bool, listening: bool,
                 address: str) -> None:
        self.encrypted = encrypted
        self.listening = listening
        self.address = address
        self._watched = socket
        self._unclear = 0
        self.socket: zmq.Socket = socket.get_monitor_socket(EVENTS)

    def failures(self) -> list[HandshakeFailure]:
        """The failures reported since the last call (never waits)."""
        out = []
        while self.socket.poll(0):
            try:
                event = parse_monitor_message(self.socket.recv_multipart(zmq.NOBLOCK))
            except (zmq.Again, ValueError):
                break
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._unclear = 0
                continue
            out.append(self._explain(event["event"], event["value"]))
        return out

    def _explain(self, event: int, value: int) -> HandshakeFailure:
        mismatch = (event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        crypto = (event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  and value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
        where = self.address
        if mismatch and self.listening and self.encrypted:
            return HandshakeFailure("plaintext_peer", (
                f"refused a connection to {where}: the peer does not use CurveZMQ "
                f"encryption, which this cluster requires (started with --encrypt); the "
                f"peer must {_SERVER_KEY_HINT}"))
        if mismatch and self.listening:
            return HandshakeFailure("encrypted_peer", (
                f"refused a connection to {where}: the peer uses CurveZMQ encryption, and "
                f"this cluster does not (started without --encrypt); the peer must leave out "
                f"--server-key and REPARTIR_SERVER_KEY"))
        if mismatch and self.encrypted:
            return HandshakeFailure("plaintext_peer", (
                f"the handshake with {where} failed: it does not use CurveZMQ encryption "
                f"(its cluster was started without --encrypt), and this side does: leave out "
                f"--server-key and REPARTIR_SERVER_KEY, or start the head with --encrypt"))
        if mismatch:
            return HandshakeFailure("encrypted_peer", (
                f"the handshake with {where} failed: it requires CurveZMQ encryption (its "
                f"cluster was started with --encrypt), and this side does not encrypt: "
                f"{_SERVER_KEY_HINT}"))
        if crypto and self.listening:
            return HandshakeFailure("wrong_key", (
                f"refused a connection to {where}: the peer's CurveZMQ handshake does not "
                f"decrypt, so it holds another server public key than this one's"))
        if self.listening:  # most often the client saw the mismatch first and hung up
            what = ("it does not use CurveZMQ encryption, which this cluster requires "
                    "(started with --encrypt), or it holds another server public key"
                    if self.encrypted else "it uses CurveZMQ encryption, which this cluster "
                    "does not (started without --encrypt)")
            return HandshakeFailure("unclear", (
                f"a peer closed its connection to {where} during the handshake: most "
                f"likely {what}; or a plain TCP check of this address (a repartir driver, "
                f"node or status makes one when the head is slow to answer)"))
        self._unclear += 1
        if self._unclear >= UNCLEAR_FAILURES and self.encrypted:
            return HandshakeFailure("unclear", (
                f"the CurveZMQ handshake with {where} failed {self._unclear} times in a "
                f"row: it may not be a repartir head or node at all (check the address "
                f"and port), or the server key given is not its public key, or it does not "
                f"use encryption (its cluster was started without --encrypt); "
                f"{_SERVER_KEY_HINT}"))
        if self._unclear >= UNCLEAR_FAILURES:
            return HandshakeFailure("unclear", (
                f"the handshake with {where} failed {self._unclear} times in a row: it "
                f"accepts the connection and closes it during the handshake. It may not be "
                f"a repartir head or node at all (check the address and port: another "
                f"service listens there), or it requires CurveZMQ encryption (its cluster "
                f"was started with --encrypt) and this side does not encrypt: "
                f"{_SERVER_KEY_HINT}"))
        return HandshakeFailure("other", (
            f"a handshake on {where} failed (ZeroMQ event {event:#x}, value {value:#x})"))

    def close(self) -> None:
        """Stop watching and close the monitor socket.  Safe to call twice."""
        if self.socket.closed:
            return
        try:
            self._watched.disable_monitor()
        except zmq.ZMQError:
            pass
        self.socket.close(0)
