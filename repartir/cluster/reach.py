"""A plain TCP connect to a head before the ZeroMQ handshake (docs/cluster.md, "Connect a
driver"): ZeroMQ connects in the background and retries for ever, so an address where
nothing listens would only show as a timeout (``CLUSTER_START_TIMEOUT_S``).  A driver,
``repartir start --address`` and ``repartir status`` first open (and at once close) one TCP
connection, which says within ``timeout`` seconds whether anything listens there.
"""

from __future__ import annotations

import errno
import socket

from ..errors import RepartirError
from .state import host_port

__all__ = ["probe", "PROBE_TIMEOUT_S"]

#: How long the probe's TCP connect may take (seconds).
PROBE_TIMEOUT_S = 5.0


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Check that something accepts TCP connections at ``address`` (``HOST:PORT``).

    Raises:
        ValueError: ``address`` is not ``HOST:PORT``.
        RepartirError: the connection is refused (nothing listens there), the host does
            not resolve, or no connection is made within ``timeout`` seconds (an
            unroutable address, a firewall that drops it); the message says which.
    """
    host, port = host_port(address)
    hint = (f"is `repartir start --head` running there (it prints its address), and is "
            f"{host} reachable from here?")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        raise RepartirError(f"nothing listens at {address} (the TCP connection was "
                            f"refused): {hint}") from None
    except socket.gaierror as exc:
        raise RepartirError(f"the host of {address} does not resolve ({exc.strerror}): "
                            f"give the head's address, HOST:PORT") from None
    except (socket.timeout, TimeoutError):
        raise RepartirError(f"no TCP connection to {address} within {timeout:g} s (an "
                            f"unroutable address, or a firewall drops it): {hint}") from None
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            raise RepartirError(f"{address} cannot be reached ({exc.strerror}): "
                                f"{hint}") from None
        raise RepartirError(f"cannot connect to {address}: {exc}. {hint}") from None
    sock.close()
