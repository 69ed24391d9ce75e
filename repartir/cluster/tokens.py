"""The cluster token: the shared secret that keys every message's MAC (docs/cluster.md,
"Security model").

A token is made by :func:`generate_token` (``secrets.token_hex(32)``: 64 hex characters, 256
bits), kept in a file only its owner can read (mode 0600, created so from the start), and
found by :func:`find_token`: ``REPARTIR_TOKEN`` first, then the token file
(``REPARTIR_TOKEN_FILE``, default ``~/.config/repartir/token``).  ``repartir token`` writes
one.
"""

from __future__ import annotations

import os
import secrets
import stat

from ..config import CLUSTER_MIN_TOKEN_CHARS, cluster_token_file
from ..errors import TokenError

__all__ = ["generate_token", "write_token_file", "load_token_file", "find_token",
           "check_token"]


def generate_token() -> str:
    """A new cluster token: 64 hex characters (``secrets.token_hex(32)``, 256 bits)."""
    return secrets.token_hex(32)


def check_token(token: str, where: str = "the token") -> str:
    """``token`` stripped of surrounding white space, if it is long enough.

    Raises:
        TokenError: fewer than ``CLUSTER_MIN_TOKEN_CHARS`` (32) characters, or not printable
            ASCII; the message names ``where`` and says how to make a good one.
    """
    if not isinstance(token, str):
        raise TypeError(f"a cluster token is a str, got {type(token).__name__}")
    token = token.strip()
    if len(token) < CLUSTER_MIN_TOKEN_CHARS or not (token.isascii() and token.isprintable()):
        raise TokenError(
            f"{where} is not a usable cluster token ({len(token)} characters; at least "
            f"{CLUSTER_MIN_TOKEN_CHARS} printable ASCII characters are needed): make one with "
            f"`repartir token` or `python -c 'import secrets; print(secrets.token_hex(32))'`")
    return token


def write_token_file(path: str | None = None, token: str | None = None, *,
                     overwrite: bool = False) -> str:
    """Write a token to ``path`` (default: ``REPARTIR_TOKEN_FILE`` or
    ``~/.config/repartir/token``), created with mode 0600 (``os.open(..., 0o600)``: never
    readable by others, not even for a moment); a missing parent directory is made with mode
    0700.  Returns the token written (``token``, or a new one from :func:`generate_token`).

    Raises:
        FileExistsError: the file exists and ``overwrite`` is false.
        TokenError: ``token`` is too short (see :func:`check_token`).
    """
    path = path or cluster_token_file()
    token = generate_token() if token is None else check_token(token)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise FileExistsError(f"token file {path} exists already: keep it, or pass "
                              f"overwrite=True (repartir token --force)") from None
    try:
        os.fchmod(fd, 0o600)  # an overwritten file keeps its old mode otherwise
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    return token


def load_token_file(path: str | None = None) -> str:
    """The token in ``path`` (default: ``REPARTIR_TOKEN_FILE`` or
    ``~/.config/repartir/token``).

    Raises:
        FileNotFoundError: no such file.
        TokenError: the file is readable or writable by group or others (``chmod 600`` it),
            belongs to another user, or holds no usable token.
    """
    path = path or cluster_token_file()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)  # the file opened, not a name that may change meanwhile
        if not stat.S_ISREG(st.st_mode):
            raise TokenError(f"token file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise TokenError(
                f"token file {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others "
                f"can read or change it, so it is refused; run `chmod 600 {path}` (and make "
                f"a new token if others may have read it)")
        if st.st_uid != os.getuid():
            raise TokenError(f"token file {path} belongs to user id {st.st_uid}, not to this "
                             f"user ({os.getuid()}): refused")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    return check_token(text, f"the content of token file {path}")


def find_token() -> str | None:
    """The cluster token of this process: ``REPARTIR_TOKEN`` if set and not empty, else the
    token file (``REPARTIR_TOKEN_FILE``, default ``~/.config/repartir/token``) if it exists,
    else ``None``.

    Raises:
        TokenError: the variable or the file holds an unusable token, or the file's mode is
            unsafe (see :func:`load_token_file`).
    """
    env = os.environ.get("REPARTIR_TOKEN", "")
    if env.strip():
        return check_token(env, "REPARTIR_TOKEN")
    try:
        return load_token_file()
    except FileNotFoundError:
        return None
