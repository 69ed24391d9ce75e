"""Signed messages: the frames of the cluster's wire layer (docs/cluster.md, "Wire format").

A message is a list of ZeroMQ frames::

    payload frame 0 (pickle) | payload frames 1.. (out-of-band buffers) | header | mac

- the **payload**: frame 0 is a pickle (protocol 5, cloudpickle) of the value; every
  out-of-band buffer of at least ``WIRE_INBAND_BYTES`` (a numpy array's data) is a frame of
  its own, sent and received without a copy;
- the **header** (:data:`HEADER`, 36 bytes, little-endian): magic ``b"RPW1"``, version
  (u8), flags (u8, 0), reserved (u16, 0), sequence number (u64, per sender, from 1, strictly
  increasing), sender id (16 random bytes per sender), number of payload frames (u32);
- the **mac**: HMAC-SHA256, keyed by the cluster token, over ``u32 n | n x u64 length |``
  then the ``n`` frames before it (payload and header), so the frame boundaries are
  authenticated too.  A frame of at least ``WIRE_DIGEST_BYTES`` (64 KiB) goes into the HMAC
  as its 16-byte GHASH tag instead of its bytes (:func:`large_frame_tag`): hash-then-MAC
  with a keyed universal hash, whose key is derived from the token and whose tag never
  leaves the process, so forging such a frame means guessing an unknown 128-bit key.
  SHA-256 hashes about 1.2 GB/s on one core of the machines we measure on, BLAKE3 (wire
  version 2) about 4.3 GB/s, GHASH (AES-GCM's, through OpenSSL's carry-less multiply) about
  11-18 GB/s, and every byte of a large object is hashed once on each side
  (docs/cluster.md, "Wire format").

A receiver checks the structure, then the MAC in constant time (``hmac.compare_digest``),
then the sequence number against the last one accepted from that sender, and only then
unpickles the payload: nothing an unauthenticated peer sends is ever unpickled.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import io
import itertools
import os
import pickle
import struct
import threading
from typing import Any, NamedTuple, Sequence

import cloudpickle
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..config import WIRE_DIGEST_BYTES, WIRE_INBAND_BYTES, WIRE_MAX_SENDERS
from ..errors import SerializationError, WireError

__all__ = ["MAGIC", "VERSION", "HEADER", "MAC_BYTES", "SENDER_ID_BYTES", "REFUSED", "Signer",
           "Verifier", "Verified", "mac_key", "large_frame_tag", "encode", "decode"]

MAGIC = b"RPW1"
#: 2: frames of at least ``WIRE_DIGEST_BYTES`` entered the MAC as their BLAKE3 digest;
#: 3: as their GHASH tag (:func:`large_frame_tag`)
VERSION = 3
#: magic, version, flags, reserved, sequence number, sender id, number of payload frames
HEADER = struct.Struct("<4sBBHQ16sI")
MAC_BYTES = 32
SENDER_ID_BYTES = 16
#: First frame of the (unsigned) reply a listening endpoint sends to a peer whose MAC did not
#: verify; the second frame says why.  Never unpickled.
REFUSED = b"RPW1 refused"


def mac_key(token: str | bytes | None) -> bytes:
    """The HMAC key of a cluster token (``str``: its UTF-8 bytes).  ``None`` gives the empty
    key: messages are framed and checked for corruption but not authenticated (allowed on
    loopback only, see :class:`repartir.cluster.Endpoint`)."""
    if token is None:
        return b""
    if isinstance(token, str):
        return token.encode()
    if isinstance(token, (bytes, bytearray)):
        return bytes(token)
    raise TypeError(f"a cluster token is a str or bytes, got {type(token).__name__}")


def _view(frame: Any) -> memoryview:
    """A flat byte view of a frame (bytes, memoryview, zmq.Frame, PickleBuffer)."""
    buf = getattr(frame, "buffer", frame)  # zmq.Frame
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
    return view


#: The info string from which the key of the large frames' GHASH is derived (HMAC-SHA256 of
#: it keyed by the token): the token itself is never an AES key.
GHASH_KEY_INFO = b"repartir wire v3: the GHASH key of large frames"
#: The fixed AES-GCM nonce of :func:`large_frame_tag`.  GCM needs a fresh nonce per message
#: when its tag is *sent*: there a repeated nonce reveals the hash key.  Here the tag is never
#: sent nor shown: it is only fed to the HMAC, which reveals nothing of its input, so the
#: mask the nonce gives is not needed and a fixed one loses nothing (hash-then-PRF,
#: Carter and Wegman 1979; Shoup 1996).
_NONCE = bytes(12)


def ghash_key(key: bytes) -> bytes:
    """The 32-byte AES key of the large frames' GHASH for a MAC key (:func:`mac_key`)."""
    return hmac.new(key, GHASH_KEY_INFO, hashlib.sha256).digest()


def large_frame_tag(aes: AESGCM, data: Any) -> bytes:
    """The 16-byte tag that stands for a large frame's ``data`` in a message's MAC: the
    AES-GCM tag of no plaintext with ``data`` as its associated data (GMAC), under ``aes``
    (:func:`ghash_key`) and the fixed nonce :data:`_NONCE`.  GHASH is a polynomial in an
    unknown 128-bit key, so two frames of at most ``L`` 16-byte blocks get the same tag with
    probability at most ``(L + 1) / 2**128`` (McGrew and Viega, "The Galois/Counter Mode of
    Operation", 2004): about 2**-110 for a 4 MiB chunk."""
    return aes.encrypt(_NONCE, b"", data)


class _Mac:
    """HMAC-SHA256 keyed by one key, over frames: the MAC of ``frames`` is the HMAC of
    ``u32 n | n x u64 length | frame 0 | frame 1 | ...`` (the lengths bind the frame
    boundaries), where a frame of at least ``digest_bytes`` is replaced by its 16-byte tag
    (:func:`large_frame_tag`; the lengths still say which frames were).  Each message starts
    from a copy of a keyed state (no key schedule per message) and is fed frame by frame:
    frames are never joined or copied."""

    def __init__(self, key: bytes, digest_bytes: int = WIRE_DIGEST_BYTES) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)
        self._ghash_key = ghash_key(key)
        self._aes = AESGCM(self._ghash_key)
        self._digest_bytes = digest_bytes

    def __call__(self, frames: Sequence[Any],
                 into: dict[int, memoryview] | None = None) -> bytes:
        """The MAC of ``frames``.  ``into`` (``{index: writable byte view of that frame's
        size}``) copies those frames there as they are hashed, piece by piece, and hashes
        the copy (read back while still in the cache): what the tag covers is then what
        lies in the destination."""
        views = [_view(f) for f in frames]
        h = self._keyed.copy()
        h.update(struct.pack(f"<I{len(views)}Q", len(views), *(v.nbytes for v in views)))
        big = self._digest_bytes
        for i, v in enumerate(views):
            dst = into.get(i) if into else None
            if dst is not None:
                h.update(_copy_and_tag(self._ghash_key, v, dst) if v.nbytes >= big
                         else _copy(v, dst))
            else:
                h.update(large_frame_tag(self._aes, v) if v.nbytes >= big else v)
        return h.digest()


#: Bytes copied then hashed at a time by :func:`_copy_and_tag`: small enough that the piece
#: just written is still in the core's cache when GHASH reads it back.
FUSE_BYTES = 1024 * 1024


def _copy_and_tag(ghash_key: bytes, src: memoryview, dst: memoryview) -> bytes:
    """Copy ``src`` into ``dst`` (same size) and return the :func:`large_frame_tag` of
    ``dst``'s bytes, a piece of :data:`FUSE_BYTES` at a time: one pass over the bytes fewer
    than hashing the source and then copying it."""
    gcm = Cipher(algorithms.AES(ghash_key), modes.GCM(_NONCE)).encryptor()
    for off in range(0, src.nbytes, FUSE_BYTES):
        piece = dst[off:off + FUSE_BYTES]
        piece[:] = src[off:off + FUSE_BYTES]
        gcm.authenticate_additional_data(piece)
    gcm.finalize()
    return gcm.tag


def _copy(src: memoryview, dst: memoryview) -> memoryview:
    dst[:] = src
    return dst


class Signer:
    """Appends the header and MAC to the frames of each message a sender sends.

    Args:
        token: the cluster token (``str`` or ``bytes``; ``None``: unauthenticated, see
            :func:`mac_key`).
        sender: this sender's id, 16 bytes (default: 16 random bytes).

    One signer is one sender: its sequence numbers start at 1 and increase by one per
    message, whichever peer the message goes to.  Thread-safe.
    """

    def __init__(self, token: str | bytes | None, sender: bytes | None = None) -> None:
        self._mac = _Mac(mac_key(token))
        self.sender = os.urandom(SENDER_ID_BYTES) if sender is None else bytes(sender)
        if len(self.sender) != SENDER_ID_BYTES:
            raise ValueError(f"a sender id is {SENDER_ID_BYTES} bytes, got {len(self.sender)}")
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def sign(self, frames: Sequence[Any], seq: int | None = None) -> list:
        """``frames`` + [header, mac] with the next sequence number (or ``seq``, for tests
        that forge messages).  The frames themselves are not copied."""
        n = len(frames)
        with self._lock:
            number = next(self._seq) if seq is None else seq
        header = HEADER.pack(MAGIC, VERSION, 0, 0, number, self.sender, n)
        return [*frames, header, self._mac([*frames, header])]


class Verified(NamedTuple):
    """A message whose MAC and sequence number were accepted."""

    sender: bytes  #: the sender's 16-byte id
    seq: int  #: its sequence number
    frames: list  #: the payload frames (zmq.Frame, bytes or memoryview, as received)


class Verifier:
    """Checks received messages: structure, MAC (constant time), sequence number.

    Args:
        token: the cluster token (must be the senders' token).
        own_sender: this endpoint's own sender id: a message carrying it is one of ours
            sent back (reflected), and refused.
        max_senders: senders whose last accepted sequence number is remembered (default
            ``WIRE_MAX_SENDERS``); beyond it the least recently heard is forgotten.

    :meth:`verify` raises :class:`WireError` for a message it refuses; nothing is unpickled
    here.  Not thread-safe (one receiving socket, one thread).
    """

    def __init__(self, token: str | bytes | None, *, own_sender: bytes | None = None,
                 max_senders: int = WIRE_MAX_SENDERS) -> None:
        if max_senders < 1:
            raise ValueError(f"max_senders must be at least 1, got {max_senders}")
        self._mac = _Mac(mac_key(token))
        self._own = own_sender
        self._max = max_senders
        self._last: collections.OrderedDict[bytes, int] = collections.OrderedDict()

    def last_seq(self, sender: bytes) -> int:
        """The last sequence number accepted from ``sender`` (0: none remembered)."""
        return self._last.get(sender, 0)

    def verify(self, frames: Sequence[Any],
               into: dict[int, memoryview] | None = None) -> Verified:
        """Accept ``frames`` (payload, header, mac) or raise :class:`WireError` with
        ``reason`` ``"malformed"``, ``"bad_mac"``, ``"reflected"`` or ``"replay"``.  The
        sequence number is recorded only for an accepted message.

        ``into`` (``{payload frame index: writable byte view}``, default none) lands those
        payload frames straight where the caller wants them: each is copied into its view
        while it is hashed, and the MAC is computed over the copy, so an accepted message's
        frame *is* that view (in :attr:`Verified.frames`, read-only) and was checked where
        it lies.  A view whose size differs from its frame's is ignored (the frame stays as
        received).  The views are written before the MAC is checked: a refused message
        leaves its bytes there, so pass only memory that nothing uses until a message is
        accepted."""
        if len(frames) < 3:
            raise WireError("malformed", f"{len(frames)} frame(s): a message has at least 3 "
                                         f"(payload, header, mac)")
        mac, header = _view(frames[-1]), _view(frames[-2])
        if mac.nbytes != MAC_BYTES or header.nbytes != HEADER.size:
            raise WireError("malformed", f"header of {header.nbytes} bytes and mac of "
                                         f"{mac.nbytes} (expected {HEADER.size} and "
                                         f"{MAC_BYTES})")
        magic, version, _flags, _res, seq, sender, n = HEADER.unpack(header)
        if magic != MAGIC:
            raise WireError("malformed", f"magic {bytes(magic)!r}, not {MAGIC!r}: not a "
                                         f"repartir wire message")
        if version != VERSION:
            raise WireError("malformed", f"wire version {version}; this endpoint speaks "
                                         f"version {VERSION} (run the same repartir "
                                         f"version on every node)")
        if into:
            into = {i: _view(d) for i, d in into.items()
                    if 0 <= i < len(frames) - 2 and _view(d).nbytes == _view(frames[i]).nbytes}
        expected = self._mac(frames[:-1], into)
        if not hmac.compare_digest(expected, bytes(mac)):
            raise WireError("bad_mac", "its MAC does not verify: the sender's cluster token "
                                       "differs from this endpoint's (or the message was "
                                       "altered on the way)")
        # authenticated from here on
        if n != len(frames) - 2:
            raise WireError("malformed", f"the header announces {n} payload frame(s), the "
                                         f"message has {len(frames) - 2}")
        if sender == self._own:
            raise WireError("reflected", "it carries this endpoint's own sender id (one of "
                                         "its own messages sent back)")
        last = self._last.get(sender, 0)
        if seq <= last:
            raise WireError("replay", f"sequence number {seq} of sender {sender.hex()} is "
                                      f"not above the last accepted, {last}")
        self._last[sender] = seq
        self._last.move_to_end(sender)
        while len(self._last) > self._max:
            self._last.popitem(last=False)
        payload = list(frames[:-2])
        for i, dst in (into or {}).items():
            payload[i] = dst.toreadonly()
        return Verified(sender, seq, payload)


def encode(value: Any, inband_bytes: int = WIRE_INBAND_BYTES) -> list:
    """The payload frames of ``value``: a pickle (protocol 5, cloudpickle, so functions and
    classes travel too), then each out-of-band buffer of at least ``inband_bytes`` bytes as a
    frame of its own -- a ``memoryview`` of the value's memory, not a copy (do not modify
    the arrays sent until the message is gone; a change before then makes the receiver drop
    the message, its MAC no longer matching).

    Raises:
        SerializationError: ``value`` cannot be pickled.
    """
    buffers: list[memoryview] = []

    def out_of_band(pb: pickle.PickleBuffer) -> bool:
        try:
            raw = pb.raw()
        except BufferError:  # not contiguous: pickled in-band
            return True
        if raw.nbytes < inband_bytes:
            return True
        buffers.append(raw)
        return False

    f = io.BytesIO()
    try:
        cloudpickle.CloudPickler(f, protocol=5, buffer_callback=out_of_band).dump(value)
    except Exception as exc:
        raise SerializationError(f"cannot send a {type(value).__name__}: pickling it "
                                 f"failed: {exc}") from exc
    return [f.getvalue(), *buffers]


def decode(frames: Sequence[Any]) -> Any:
    """The value of verified payload frames (call only after :meth:`Verifier.verify`).  Out
    of band buffers come back as read-only views of the received frames (numpy arrays are
    zero-copy, read-only)."""
    return pickle.loads(_view(frames[0]), buffers=[_view(f).toreadonly() for f in frames[1:]])
