"""CurveZMQ keys: what ``--encrypt`` adds to the token (docs/cluster.md, "Security model").

A key pair is two Z85 strings of 40 characters (``zmq.curve_keypair``).  Key files are in the
format of ``zmq.auth.create_certificates`` (read back with ``zmq.auth.load_certificate``):
``<name>.key`` holds the public key (mode 0644, give it to the clients) and
``<name>.key_secret`` both keys (mode 0600, created so; a secret key file that group or
others can read is refused).  ``repartir keygen`` writes a pair.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import stat

import zmq
import zmq.auth

from ..config import CLUSTER_KEY_NAME, cluster_key_dir
from ..errors import TokenError

__all__ = ["CurveKeys", "generate_keys", "write_key_files", "load_key_file", "public_key"]

_BANNER = """#   ****  Generated on {now} by repartir keygen  ****
#   ZeroMQ CURVE {kind} Certificate
#   {advice}

"""


@dataclasses.dataclass(frozen=True)
class CurveKeys:
    """A CurveZMQ key pair: ``public`` and ``secret`` are 40-byte Z85 keys (``secret`` is
    ``None`` for a public key alone, as a client knows its server's)."""

    public: bytes
    secret: bytes | None = None

    def __repr__(self) -> str:  # never print a secret key
        return f"CurveKeys(public={self.public!r}, secret={'...' if self.secret else None})"


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise RuntimeError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE "
                           f"security: install pyzmq's wheel (pip install pyzmq), which has it")


def generate_keys() -> CurveKeys:
    """A new key pair (``zmq.curve_keypair``).

    Raises:
        RuntimeError: libzmq was built without CURVE.
    """
    _require_curve()
    public, secret = zmq.curve_keypair()
    return CurveKeys(public, secret)


def _write(path: str, mode: int, text: str, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise FileExistsError(f"key file {path} exists already: keep it, or pass "
                              f"overwrite=True (repartir keygen --force)") from None
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def write_key_files(directory: str | None = None, name: str = CLUSTER_KEY_NAME, *,
                    overwrite: bool = False) -> tuple[str, str]:
    """Generate a key pair and write ``<directory>/<name>.key`` (public, mode 0644) and
    ``<name>.key_secret`` (both keys, mode 0600 from creation on).  ``directory`` defaults
    to ``~/.config/repartir/keys`` and is made with mode 0700 when missing.  Returns the two
    paths (public, secret).

    Raises:
        FileExistsError: a key file exists and ``overwrite`` is false.
        ValueError: ``name`` is empty or holds a path separator.
    """
    if not name or os.sep in name or name in (".", ".."):
        raise ValueError(f"name is a file name without directory, got {name!r}")
    keys = generate_keys()
    directory = directory or cluster_key_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    now = datetime.datetime.now().isoformat(timespec="seconds")
    public_path = os.path.join(directory, f"{name}.key")
    secret_path = os.path.join(directory, f"{name}.key_secret")
    body = f'metadata\ncurve\n    public-key = "{keys.public.decode()}"\n'
    _write(secret_path, 0o600,
           _BANNER.format(now=now, kind="**Secret**",
                          advice="DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its "
                                 "permissions.")
           + body + f'    secret-key = "{keys.secret.decode()}"\n', overwrite)
    _write(public_path, 0o644,
           _BANNER.format(now=now, kind="Public",
                          advice="Give this file to the clients of this server.")
           + body, overwrite)
    return public_path, secret_path


def load_key_file(path: str) -> CurveKeys:
    """The keys of a key file (``zmq.auth.load_certificate``): a ``.key`` file gives the
    public key alone, a ``.key_secret`` file both.

    Raises:
        FileNotFoundError: no such file.
        TokenError: a file holding a secret key is readable or writable by group or others
            (``chmod 600`` it).
        ValueError: the file holds no public key.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no key file {path} (write a pair with `repartir keygen`)")
    public, secret = zmq.auth.load_certificate(path)
    if secret is not None:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            raise TokenError(f"secret key file {path} has mode {mode:04o}: group or others can "
                             f"read or change it, so it is refused; run `chmod 600 {path}` "
                             f"(and make new keys if others may have read it)")
    return CurveKeys(public, secret)


def public_key(key: str | bytes) -> bytes:
    """A server's public key given as a Z85 string (40 characters) or as the path of a key
    file.

    Raises:
        ValueError: neither a 40-character key nor an existing key file.
    """
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw) == 40 and not os.path.exists(raw):
        return raw
    if os.path.exists(raw):
        return load_key_file(os.fsdecode(raw)).public
    raise ValueError(f"a server public key is a 40-character Z85 string or a key file, got "
                     f"{key!r}")
