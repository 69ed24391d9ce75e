"""Is anything listening at a head's address? (docs/cluster.md, "Connect a driver").

ZeroMQ connects in the background and retries for ever, so an address where nothing
listens would only show as a timeout (``CLUSTER_START_TIMEOUT_S``).  A driver, ``repartir
start --address`` and ``repartir status`` that have had no answer from the head within
``PROBE_AFTER_S`` open (and at once close) one plain TCP connection to its address, which
says within ``PROBE_TIMEOUT_S`` whether anything listens there.  Only then: a head that
answers in time never sees the probe (a connection closed before its handshake, which its
handshake monitor would log as a failed one).
"""

from __future__ import annotations

import errno
import socket
import time
from typing import Any, NoReturn

from ..errors import EncryptionError, RepartirError, TokenError, WireTimeoutError
from .state import host_port

__all__ = ["probe", "recv_or_probe", "PROBE_TIMEOUT_S", "PROBE_AFTER_S", "PROBE_REFUSED_S"]

#: How long the probe's TCP connect may take (seconds).
PROBE_TIMEOUT_S = 5.0
#: How long to wait for the head's first answer before probing its address (seconds).
PROBE_AFTER_S = 2.0
#: How long the probe keeps trying while its connections are refused (seconds): a head
#: started at the same time as its nodes (a batch job's steps, a Kubernetes Deployment)
#: may not listen yet.
PROBE_REFUSED_S = 5.0
#: Seconds between two tries of a refused probe.
PROBE_RETRY_S = 0.2


def recv_or_probe(ep: Any, address: str, timeout: float) -> Any:
    """``ep.recv(timeout)``, but after ``PROBE_AFTER_S`` without an answer, or on a failed
    handshake, :func:`probe` ``address`` once (which raises if nothing listens there).

    Raises:
        RepartirError: as :func:`probe` (``ep`` is closed then).
        WireTimeoutError, TokenError, EncryptionError: as ``Endpoint.recv``.
    """
    first = min(PROBE_AFTER_S, timeout)
    try:
        try:
            return ep.recv(timeout=first)
        except WireTimeoutError:
            if first >= timeout:
                raise
        except EncryptionError:  # ZeroMQ reports some failures to connect (an
            probe(address)       # unroutable address) as failed handshakes too
            raise
        probe(address)
    except RepartirError as exc:
        if not isinstance(exc, (TokenError, WireTimeoutError)):  # the probe's
            ep.close()
        raise
    return ep.recv(timeout=timeout - first)


def probe(address: str, timeout: float = PROBE_TIMEOUT_S,
          refused_s: float = PROBE_REFUSED_S) -> None:
    """Check that something accepts TCP connections at ``address`` (``HOST:PORT``).  A
    refused connection is tried again every ``PROBE_RETRY_S`` for ``refused_s`` seconds
    (default ``PROBE_REFUSED_S``, 5 s): the head may be starting.

    Raises:
        ValueError: ``address`` is not ``HOST:PORT``.
        RepartirError: the connection is refused (nothing listens there) for
            ``refused_s`` seconds, the host does not resolve, or no connection is made
            within ``timeout`` seconds (an unroutable address, a firewall that drops it);
            the message says which.
    """
    host, port = host_port(address)
    hint = (f"is `repartir start --head` running there (it prints its address), and is "
            f"{host} reachable from here?")
    give_up = time.monotonic() + refused_s
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            break
        except ConnectionRefusedError:
            if time.monotonic() < give_up:
                time.sleep(PROBE_RETRY_S)
                continue
            raise RepartirError(f"nothing listens at {address} (the TCP connection was "
                                f"refused for {refused_s:g} s): {hint}") from None
        except OSError as exc:
            _unreachable(address, exc, timeout, hint)
    sock.close()


def _unreachable(address: str, exc: OSError, timeout: float, hint: str) -> NoReturn:
    """Raise the :class:`RepartirError` that says why :func:`probe` could not connect."""
    if isinstance(exc, socket.gaierror):
        raise RepartirError(f"the host of {address} does not resolve ({exc.strerror}): "
                            f"give the head's address, HOST:PORT") from None
    if isinstance(exc, (socket.timeout, TimeoutError)):
        raise RepartirError(f"no TCP connection to {address} within {timeout:g} s (an "
                            f"unroutable address, or a firewall drops it): {hint}") from None
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        raise RepartirError(f"{address} cannot be reached ({exc.strerror}): "
                            f"{hint}") from None
    raise RepartirError(f"cannot connect to {address}: {exc}. {hint}") from None
