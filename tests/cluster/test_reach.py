"""The address probe (``repartir/cluster/reach.py``; docs/cluster.md, "Join a node" and
"Connect a driver"): a refused connection is tried again for ``PROBE_REFUSED_S``, so a head
that starts listening meanwhile (started at the same time as its nodes) is found, and an
address where nothing ever listens is reported after that grace, not at the start timeout."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from repartir.cluster.reach import probe
from repartir.errors import RepartirError

pytestmark = pytest.mark.timeout(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_head_that_listens_late_is_found():
    port = _free_port()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def listen_late():
        time.sleep(1.0)
        srv.bind(("127.0.0.1", port))
        srv.listen(4)

    t = threading.Thread(target=listen_late)
    t.start()
    try:
        t0 = time.monotonic()
        probe(f"127.0.0.1:{port}", refused_s=10.0)
        assert 0.9 < time.monotonic() - t0 < 10.0
    finally:
        t.join()
        srv.close()


@pytest.mark.parametrize("refused_s", [0.0, 1.0])
def test_nothing_listening_is_reported_after_the_grace(refused_s):
    port = _free_port()
    t0 = time.monotonic()
    with pytest.raises(RepartirError, match=rf"nothing listens at 127.0.0.1:{port} .*refused "
                                            rf"for {refused_s:g} s"):
        probe(f"127.0.0.1:{port}", refused_s=refused_s)
    assert refused_s <= time.monotonic() - t0 < refused_s + 5.0


def test_an_address_that_does_not_resolve_is_reported_at_once():
    t0 = time.monotonic()
    with pytest.raises(RepartirError, match="does not resolve"):
        probe("no-such-host.invalid:6380")
    assert time.monotonic() - t0 < 10.0
