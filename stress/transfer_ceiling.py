"""What moving an object between two network-namespace hosts costs without repartir: the
ceiling of the ``transfer`` workload (docs/cluster.md, "Measured").

``python stress/transfer_ceiling.py [--mib 256] [--reps 5]`` (root and iproute2) makes three
hosts (:mod:`stress.netns`) and moves ``mib`` MiB from host B to host C, ``1 + reps`` times
(the first a warm-up), four ways, and prints for each the median GB/s (1e9 B/s) and the CPU
seconds that the sender and the receiver used per GB moved during the timed rounds (their
``user + sys``, every thread: the kernel's TCP work done in their threads is in it):

- ``zmq``: a ROUTER on B answers requests for 4 MiB chunks (``CLUSTER_CHUNK_BYTES``) of an
  array with zero-copy frames, a DEALER on C keeps 4 (``CLUSTER_CHUNKS_IN_FLIGHT``) asked
  and receives them without a copy: the sockets of a pull, and nothing else;
- ``zmq+ghash``: the same, B hashing each chunk with GHASH before it sends it
  (``repartir.cluster.wire.large_frame_tag``) and C copying each into one buffer while
  hashing the copy (``repartir.cluster.wire._copy_and_tag``), which is what a pull's signing
  and verifying add per byte (the HMAC of 16-byte tags and the pickles are left out);
- ``endpoints``: the same through repartir's signed endpoints (``repartir.cluster.Endpoint``
  with a token), each chunk received in its place as a pull receives it
  (``Endpoint.recv(place=)``): the pickles, the HMAC and the sequence numbers on top of
  ``zmq+ghash``;
- ``tcp``: one plain TCP stream (``sendall``, ``recv_into`` a buffer), the bench's ``tcp``;
- ``tcp+ghash``: the same, B hashing each 4 MiB before it sends it, C each MiB received.

When the two hosts' processes share the machine's cores, the CPU seconds per GB times the
GB/s say how many cores the transfer kept busy.  ``--apart`` prints instead, without hosts,
the CPU seconds per GB of hashing 4 MiB chunks, of signing them as chunk messages, of
hashing them then copying them into place, of copying them into place while hashing, and of
verifying them into place and decoding them (:func:`apart`).  The subcommands ``_serve`` and
``_pull`` are the processes inside the hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PORT = 5300
CHUNK = 4 << 20
IN_FLIGHT = 4
PIECE = 1 << 20  # tcp+ghash: bytes received then hashed at a time
WAYS = ("zmq", "zmq+ghash", "endpoints", "tcp", "tcp+ghash")


def _cpu(pid: int | str = "self") -> float:
    """CPU seconds (user + system, every thread) that process ``pid`` used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve(way: str, addr: str, nbytes: int, rounds: int) -> None:
    import numpy as np
    import zmq
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from repartir.cluster.wire import ghash_key, large_frame_tag, mac_key

    view = memoryview(np.ones(nbytes // 8)).cast("B")
    hashing = way.endswith("+ghash")
    aes = AESGCM(ghash_key(mac_key(os.environ.get("REPARTIR_TOKEN"))))
    if way == "endpoints":
        import pickle

        from repartir.cluster import Endpoint

        with Endpoint.listen(f"tcp://{addr}:{PORT}") as ep:  # the token: REPARTIR_TOKEN
            print("ready", os.getpid(), flush=True)
            while True:
                msg = ep.recv()
                if msg.value == "stop":
                    break
                off, n = msg.value
                ep.send((off, pickle.PickleBuffer(view[off:off + n])), to=msg.peer)
    elif way.startswith("zmq"):
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(f"tcp://{addr}:{PORT}")
        print("ready", os.getpid(), flush=True)
        while True:
            rid, req = sock.recv_multipart()
            if req == b"stop":
                break
            off, n = map(int, req.split())
            piece = view[off:off + n]
            digest = large_frame_tag(aes, piece) if hashing else b""
            sock.send_multipart([rid, digest, piece], copy=False)
        sock.close()
        ctx.term()
    else:
        listener = socket.create_server((addr, PORT))
        print("ready", os.getpid(), flush=True)
        conn, _ = listener.accept()
        for _ in range(rounds):
            conn.recv(1)
            for off in range(0, nbytes, CHUNK):
                if hashing:
                    large_frame_tag(aes, view[off:off + CHUNK])
                conn.sendall(view[off:off + CHUNK])
        conn.recv(1)
        conn.close()


def _pull(way: str, addr: str, nbytes: int, rounds: int, server: int) -> None:
    import zmq
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from repartir.cluster.wire import _NONCE, _copy_and_tag, ghash_key, mac_key

    dst = memoryview(bytearray(nbytes))
    dst[:] = b"\0" * nbytes  # the pages exist before the clock starts, as an arena's do
    hashing = way.endswith("+ghash")
    key = ghash_key(mac_key(os.environ.get("REPARTIR_TOKEN")))
    seconds: list[float] = []
    cpu: list[float] = []

    def clock() -> None:  # CPU of both sides at the end of the warm-up and of the last round
        if len(seconds) in (1, rounds):
            cpu.append(_cpu() + _cpu(server))

    if way == "endpoints":
        from repartir.cluster import Endpoint

        with Endpoint.connect(f"tcp://{addr}:{PORT}") as ep:
            for _ in range(rounds):
                t = time.perf_counter()
                todo = [(off, min(CHUNK, nbytes - off))
                        for off in range(0, nbytes, CHUNK)][::-1]
                asked = []
                for _ in range(min(IN_FLIGHT, len(todo))):
                    asked.append(todo.pop())
                    ep.send(asked[-1])

                def place(sizes: list[int]) -> dict | None:
                    off, n = asked[0]
                    return {1: dst[off:off + n]} if sizes[1:] == [n] else None

                while asked:
                    off, data = ep.recv(timeout=60, place=place).value
                    if (off, memoryview(data).nbytes) != asked.pop(0):
                        raise RuntimeError(f"chunk {off} came out of order")
                    if todo:
                        asked.append(todo.pop())
                        ep.send(asked[-1])
                seconds.append(time.perf_counter() - t)
                clock()
            ep.send("stop")
    elif way.startswith("zmq"):
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.connect(f"tcp://{addr}:{PORT}")
        for _ in range(rounds):
            t = time.perf_counter()
            todo = [(off, min(CHUNK, nbytes - off)) for off in range(0, nbytes, CHUNK)][::-1]
            asked = []
            for _ in range(min(IN_FLIGHT, len(todo))):
                asked.append(todo.pop())
                sock.send(b"%d %d" % asked[-1])
            while asked:
                _, frame = sock.recv_multipart(copy=False)
                off, n = asked.pop(0)
                if todo:
                    asked.append(todo.pop())
                    sock.send(b"%d %d" % asked[-1])
                if hashing:
                    _copy_and_tag(key, frame.buffer, dst[off:off + n])
            seconds.append(time.perf_counter() - t)
            clock()
        sock.send(b"stop")
        sock.close()
        ctx.term()
    else:
        conn = socket.create_connection((addr, PORT))
        for _ in range(rounds):
            t = time.perf_counter()
            conn.send(b"g")
            got = hashed = 0
            h = Cipher(algorithms.AES(key), modes.GCM(_NONCE)).encryptor()
            while got < nbytes:
                got += conn.recv_into(dst[got:min(got + PIECE, nbytes)])
                if hashing and (got - hashed >= PIECE or got == nbytes):
                    h.authenticate_additional_data(dst[hashed:got])
                    hashed = got
            if hashing:
                h.finalize()
            seconds.append(time.perf_counter() - t)
            clock()
        conn.send(b"e")
        conn.close()
    import numpy as np

    # what arrived (outside the clock): the sender's array of ones, where it was copied
    checked = way != "zmq" and bool((np.frombuffer(dst, dtype=np.float64) == 1.0).all())
    print(json.dumps({"seconds": seconds, "cpu_s": cpu[1] - cpu[0], "checked": checked}),
          flush=True)


def measure(cluster, way: str, mib: int, reps: int) -> dict:
    """One way's figures: ``{"GBps": median, "rounds": [...], "cpu_s_per_GB": sender +
    receiver}``, the warm-up round left out of both.  Every way but ``zmq`` (which keeps no
    copy) checks, outside the clock, that the buffer received holds the array sent.

    Raises:
        RuntimeError: a side did not start, or the bytes received differ.
    """
    b, c = cluster.hosts[1], cluster.hosts[2]
    nbytes, rounds = mib << 20, reps + 1
    args = [way, b.addr, str(nbytes), str(rounds)]
    env = dict(os.environ, REPARTIR_TOKEN=secrets.token_hex(32), PYTHONPATH=ROOT)
    srv = cluster.run_in(b, [sys.executable, __file__, "_serve", *args],
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        ready = srv.stdout.readline().split()
        if ready[:1] != ["ready"]:
            raise RuntimeError(f"the {way} sender did not start")
        pull = cluster.run_in(c, [sys.executable, __file__, "_pull", *args, ready[1]],
                              stdout=subprocess.PIPE, text=True, env=env)
        got = json.loads(pull.communicate(timeout=300)[0].strip().splitlines()[-1])
        srv.wait(timeout=60)
    finally:
        cluster.stop(srv)
    if way != "zmq" and not got["checked"]:
        raise RuntimeError(f"{way}: the bytes received are not the bytes sent")
    gbps = [nbytes / s / 1e9 for s in got["seconds"][1:]]
    return {"GBps": statistics.median(gbps), "rounds": [round(g, 2) for g in gbps],
            "cpu_s_per_GB": got["cpu_s"] / (nbytes * reps / 1e9)}


def apart(mib: int = 64, reps: int = 5) -> dict[str, float]:
    """CPU seconds per GB of the hashing alone and of repartir's signing and verifying of a
    chunk message (4 MiB chunks of ``mib`` MiB, best of ``reps``; one process, no socket):
    ``{"blake3": ..., "ghash": ..., "sign": ..., "ghash, copy": ..., "copy+ghash": ...,
    "verify in place": ...}`` ("blake3": the hash of wire version 2, when ``blake3`` is
    installed; "ghash, copy": hashing a received chunk then copying it into place, as a pull
    did before it received chunks in place; "copy+ghash": copying it while hashing the copy,
    as now)."""
    import pickle

    import numpy as np
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from repartir.cluster.wire import (Signer, Verifier, _copy_and_tag, decode, encode,
                                       ghash_key, large_frame_tag, mac_key)

    token, n = secrets.token_hex(32), mib << 20
    view = memoryview(np.ones(n // 8)).cast("B")
    dst = memoryview(bytearray(n))
    dst[:] = view  # the pages exist, as an arena's do
    signer = Signer(token)
    key = ghash_key(mac_key(token))
    aes = AESGCM(key)

    def message(off: int) -> list:
        return signer.sign(encode((off, pickle.PickleBuffer(view[off:off + CHUNK]))))

    sent = [message(off) for off in range(0, n, CHUNK)]

    def hash_then_copy(src: memoryview, to: memoryview) -> None:  # before in-place receipt
        large_frame_tag(aes, src)
        to[:] = src

    def verify(off: int) -> None:
        frames = sent[off // CHUNK]
        decode(Verifier(token).verify(frames, into={1: dst[off:off + CHUNK]}).frames)

    ways = {"ghash": lambda off: large_frame_tag(aes, view[off:off + CHUNK]),
            "sign": message,
            "ghash, copy": lambda off: hash_then_copy(sent[off // CHUNK][1],
                                                      dst[off:off + CHUNK]),
            "copy+ghash": lambda off: _copy_and_tag(key, sent[off // CHUNK][1],
                                                    dst[off:off + CHUNK]),
            "verify in place": verify}
    try:
        import blake3
    except ImportError:
        pass
    else:
        ways = {"blake3": lambda off: blake3.blake3(view[off:off + CHUNK]).digest(), **ways}
    out = {}
    for name, fn in ways.items():
        best = float("inf")
        for _ in range(reps):
            t = time.process_time()
            for off in range(0, n, CHUNK):
                fn(off)
            best = min(best, time.process_time() - t)
        out[name] = best / (n / 1e9)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_serve"]:
        _serve(argv[1], argv[2], int(argv[3]), int(argv[4]))
        return 0
    if argv[:1] == ["_pull"]:
        _pull(argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--apart", action="store_true",
                   help="only the CPU cost of hashing, signing and verifying, no hosts")
    args = p.parse_args(argv)
    if args.apart:
        for name, cpu in apart().items():
            print(f"{name:<16} {cpu:.3f} CPU-s/GB")
        return 0
    from stress import netns

    with netns.Cluster(3) as cluster:
        for way in WAYS:
            r = measure(cluster, way, args.mib, args.reps)
            print(f"{way:<11} {r['GBps']:5.2f} GB/s  {r['cpu_s_per_GB']:.2f} CPU-s/GB  "
                  f"(x GB/s: {r['GBps'] * r['cpu_s_per_GB']:.2f} cores)  rounds {r['rounds']}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
