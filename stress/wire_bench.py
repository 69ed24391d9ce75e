"""Cost of the cluster's wire layer (docs/cluster.md, "Measured cost").

::

    python stress/wire_bench.py            # the figures of docs/cluster.md
    python stress/wire_bench.py --quick    # fewer repetitions

Three measurements, in one process:

* **sign + verify**: ``Signer.sign`` then ``Verifier.verify`` of one payload frame of each
  size, no socket: microseconds per message and the rate in GB/s (HMAC-SHA256 over the
  bytes, once to sign and once to verify);
* **encode + sign + verify + decode**: the same with the pickling of a small dict and of a
  numpy array (what ``Endpoint.send`` and ``recv`` add to a socket);
* **loopback TCP**: a DEALER endpoint sends numpy arrays of each size to a ROUTER endpoint
  (a sender thread, the receiver in the main thread, ``--window`` messages in flight at most
  by acknowledging every one); the same with CurveZMQ encryption (``+ curve``); and the same
  transfer with plain pyzmq ``send_multipart(copy=False)`` of the raw array (no header, no
  MAC, no pickle): MB/s of array data; ``ratio`` is endpoints / raw pyzmq.  Each received
  array's length and first and last elements are checked as it arrives (timed, negligible);
  over endpoints, the last array is also compared in full after the clock stops.

Figures depend on the machine (SHA-256 instructions, core count, other load); the page
records where they were taken.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time

import numpy as np
import zmq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from repartir.cluster import (Endpoint, Signer, Verifier, decode, encode,  # noqa: E402
                              generate_keys, generate_token)

MiB = 1 << 20


def best_of(fn, repeat: int, number: int) -> float:
    """Seconds per call of ``fn``: the best of ``repeat`` runs of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def sign_verify(token: str, quick: bool) -> None:
    print("sign + verify (no socket, one payload frame):")
    print(f"  {'payload':>10}  {'us/message':>10}  {'GB/s':>6}")
    for size in (100, 1024, 64 * 1024, MiB, 16 * MiB):
        payload = [os.urandom(size)]
        signer, verifier = Signer(token), Verifier(token)

        def once():
            verifier.verify(signer.sign(payload))

        number = max(3, min(20000, (200 * MiB) // size // (4 if quick else 1)))
        t = best_of(once, 3 if quick else 5, number)
        print(f"  {size:>10,}  {t * 1e6:>10.2f}  {size / t / 1e9:>6.2f}")


def full_path(token: str, quick: bool) -> None:
    print("encode + sign + verify + decode (no socket):")
    signer, verifier = Signer(token), Verifier(token)
    for name, value in (("small dict", {"task": 12345, "args": (1, 2.5, "x"), "ok": True}),
                        ("8 MiB array", np.ones(MiB, dtype=np.float64))):
        def once():
            decode(verifier.verify(signer.sign(encode(value))).frames)

        t = best_of(once, 3 if quick else 5, 2000 if name == "small dict" else 20)
        print(f"  {name:>12}: {t * 1e6:10.2f} us/message")


def _sender_endpoint(address: str, token: str, arrays, window: int, server_key) -> None:
    with Endpoint.connect(address, token=token, server_key=server_key) as out:
        for i, a in enumerate(arrays):
            out.send(a)
            if i >= window:
                out.recv(timeout=60)  # one ack per message beyond the window
        for _ in range(min(window, len(arrays))):
            out.recv(timeout=60)


def over_endpoints(token: str, arrays, window: int, encrypt: bool = False) -> float:
    keys = generate_keys() if encrypt else None
    with Endpoint.listen(token=token, server_keys=keys) as head:
        t = threading.Thread(target=_sender_endpoint,
                             args=(head.address, token, arrays, window,
                                   keys.public if keys else None))
        t0 = time.perf_counter()
        t.start()
        for a in arrays:
            msg = head.recv(timeout=60)
            got = msg.value
            assert got.nbytes == a.nbytes and got[0] == a[0] and got[-1] == a[-1]
            head.send(b"", to=msg.peer)
        t.join()
        dt = time.perf_counter() - t0
        assert np.array_equal(got, arrays[-1])
    return sum(a.nbytes for a in arrays) / dt


def _sender_raw(ctx: zmq.Context, address: str, arrays, window: int) -> None:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 60_000)
    s.connect(address)
    try:
        for i, a in enumerate(arrays):
            s.send_multipart([a], copy=False)
            if i >= window:
                s.recv()
        for _ in range(min(window, len(arrays))):
            s.recv()
    finally:
        s.close()


def over_raw_zmq(arrays, window: int) -> float:
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.LINGER, 0)
    r.setsockopt(zmq.RCVTIMEO, 60_000)
    port = r.bind_to_random_port("tcp://127.0.0.1")
    try:
        t = threading.Thread(target=_sender_raw,
                             args=(ctx, f"tcp://127.0.0.1:{port}", arrays, window))
        t0 = time.perf_counter()
        t.start()
        for a in arrays:
            peer, frame = r.recv_multipart(copy=False)
            got = np.frombuffer(frame.buffer, dtype=a.dtype)
            assert got.nbytes == a.nbytes and got[0] == a[0] and got[-1] == a[-1]
            r.send_multipart([peer, b""])
        t.join()
        dt = time.perf_counter() - t0
    finally:
        r.close()
        ctx.term()
    return sum(a.nbytes for a in arrays) / dt


def loopback(token: str, quick: bool, window: int) -> None:
    print(f"loopback TCP, numpy arrays, {window} in flight at most (MB/s of array data):")
    print(f"  {'array':>8}  {'messages':>8}  {'endpoints':>9}  {'+ curve':>9}  {'raw pyzmq':>9}"
          f"  {'ratio':>5}")
    for size in (64 * 1024, MiB, 16 * MiB, 64 * MiB):
        total = (256 if quick else 1024) * MiB
        n = max(4, total // size)
        rng = np.random.default_rng(size)
        base = rng.random(size // 8)
        arrays = [base + i for i in range(min(n, 8))]  # a few distinct arrays, reused
        arrays = [arrays[i % len(arrays)] for i in range(n)]
        runs = 2 if quick else 3
        best_ep = max(over_endpoints(token, arrays, window) for _ in range(runs))
        best_curve = max(over_endpoints(token, arrays, window, True) for _ in range(runs))
        best_raw = max(over_raw_zmq(arrays, window) for _ in range(runs))
        print(f"  {size // 1024:>6} K  {n:>8}  {best_ep / 1e6:>9.0f}  {best_curve / 1e6:>9.0f}"
              f"  {best_raw / 1e6:>9.0f}  {best_ep / best_raw:>5.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--window", type=int, default=4,
                        help="messages in flight at most on loopback (default 4)")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, pyzmq {zmq.__version__} "
          f"(libzmq {zmq.zmq_version()}), numpy {np.__version__}")
    token = generate_token()
    sign_verify(token, args.quick)
    full_path(token, args.quick)
    loopback(token, args.quick, args.window)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
