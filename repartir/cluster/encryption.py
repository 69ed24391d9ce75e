"""Which CurveZMQ keys each process of an encrypted cluster uses (``repartir start --head
--encrypt``; docs/cluster.md, "Encryption").

The model::

    head                           node                          driver, repartir status
    key pair in a key file  ─────► learns the head's public key  learns the head's public key
    (repartir keygen, or           from the operator             from the operator
     made by start)                (--server-key KEY)            (REPARTIR_SERVER_KEY=KEY, or
    public key printed by start    its own key pair: new at      recorded by start on the
                                   each start, in memory only    head's machine)
           ▲                              │ public key in its registry record ("CurveKey")
           └──── registry (signed with the token, encrypted) ───► every driver and node

- **The head** is a CurveZMQ server with a long-term key pair kept in a key file
  (``.key_secret``, mode 0600): ``--key-file``, else ``~/.config/repartir/keys/
  repartir.key_secret``, which ``start`` writes when it is missing (as it writes the token).
  Its public key is not secret but must reach the nodes and drivers authentically: ``start``
  prints it in the commands to copy.
- **Every other node** makes a new key pair when it starts (never written anywhere) and
  listens with it; its public key travels in its registry record, which the head hands to
  drivers and nodes over a connection that is both encrypted and signed with the token, so
  no one without the token can substitute another key.
- **Clients** (a node's connection to the head, drivers, node-to-node) use a new client key
  pair per connection (``Endpoint.connect``'s default): servers do not authenticate clients
  by key; the token does, message by message.

A cluster is encrypted as a whole: a node joins encrypted (its own server encrypted too)
exactly when it was given the head's public key, and a peer that does not match is refused
during the handshake, with a message on both sides (:mod:`.handshakes`).
"""

from __future__ import annotations

import dataclasses
import json
import os

from ..config import CLUSTER_KEY_NAME, cluster_key_dir, cluster_server_key
from ..errors import EncryptionError
from .curve import CurveKeys, generate_keys, load_key_file, public_key, write_key_files
from .state import state_dir

__all__ = ["ClusterKeys", "head_key_pair", "record_head_key", "recorded_head_key"]

_RECORD = "head_key.json"


@dataclasses.dataclass(frozen=True)
class ClusterKeys:
    """The keys of one process of a cluster: ``head``, the head's public key (``None``: the
    cluster is not encrypted), and ``own``, the key pair this process listens with (a node;
    ``None`` for a driver).  Its methods give the keyword arguments of
    :meth:`~.sockets.Endpoint.listen` and :meth:`~.sockets.Endpoint.connect` (handshakes
    watched in every case, so that a mismatch is reported)."""

    head: bytes | None = None
    own: CurveKeys | None = None

    @property
    def encrypted(self) -> bool:
        """Whether the cluster's connections are encrypted."""
        return self.head is not None

    @classmethod
    def for_head(cls, key_file: str | None) -> "ClusterKeys":
        """The head's: its key pair from ``key_file`` (``None``: not encrypted).

        Raises:
            FileNotFoundError, TokenError, ValueError: as :func:`head_key_pair`.
        """
        if key_file is None:
            return cls()
        keys = _load_secret(key_file)
        return cls(keys.public, keys)

    @classmethod
    def for_node(cls, server_key: str | bytes | None) -> "ClusterKeys":
        """A joining node's: the head's public key (``None``: not encrypted) and a new key
        pair of its own.

        Raises:
            ValueError: ``server_key`` is neither a 40-character Z85 key nor a key file.
        """
        if server_key is None:
            return cls()
        return cls(public_key(server_key), generate_keys())

    @classmethod
    def for_driver(cls, address: str) -> "ClusterKeys":
        """A driver's (and ``repartir status``'s) for the head at ``address``:
        ``REPARTIR_SERVER_KEY``, else the key recorded by ``repartir start --head`` on this
        machine for that address, else none (not encrypted).

        Raises:
            ValueError: ``REPARTIR_SERVER_KEY`` is neither a Z85 key nor a key file.
        """
        given = cluster_server_key()
        if given is not None:
            try:
                return cls(public_key(given))
            except ValueError as exc:
                raise ValueError(f"REPARTIR_SERVER_KEY: {exc}") from None
        recorded = recorded_head_key(address)
        return cls(recorded.encode()) if recorded else cls()

    def public(self) -> str | None:
        """This process's public key (Z85 text), for its registry record."""
        return None if self.own is None else self.own.public.decode()

    def listen(self) -> dict:
        """``Endpoint.listen`` keywords for this process's server."""
        out: dict = {"watch_handshakes": True}
        if self.own is not None and self.head is not None:
            out["server_keys"] = self.own
        return out

    def to_head(self) -> dict:
        """``Endpoint.connect`` keywords for a connection to the head."""
        out: dict = {"watch_handshakes": True}
        if self.head is not None:
            out["server_key"] = self.head
        return out

    def to_node(self, record: dict) -> dict:
        """``Endpoint.connect`` keywords for a connection to the node of registry
        ``record``.

        Raises:
            EncryptionError: the cluster is encrypted and the record has no key (a node
                that joined without encryption, which the head refuses).
        """
        out: dict = {"watch_handshakes": True}
        if self.head is None:
            return out
        key = record.get("CurveKey")
        if not key:
            raise EncryptionError(
                f"node {str(record.get('NodeID', '?'))[:12]} at "
                f"{record.get('NodeManagerAddress', '?')} has no CurveZMQ key in the "
                f"registry although the cluster is encrypted: restart it with --server-key")
        out["server_key"] = key.encode() if isinstance(key, str) else key
        return out


def _load_secret(path: str) -> CurveKeys:
    keys = load_key_file(path)
    if keys.secret is None:
        raise ValueError(f"{path} holds a public key only: the head needs its .key_secret "
                         f"file (written by `repartir keygen` next to the .key file)")
    return keys


def head_key_pair(key_file: str | None) -> tuple[str, CurveKeys, bool]:
    """The head's key pair for ``--encrypt``: ``(path of the .key_secret file, keys,
    whether it was made now)``.  ``key_file`` must exist; ``None`` means
    ``~/.config/repartir/keys/repartir.key_secret``, written (mode 0600, with its public
    ``repartir.key`` next to it) when missing.

    Raises:
        FileNotFoundError: ``key_file`` does not exist (make one with ``repartir keygen``).
        TokenError: the secret key file is readable or writable by group or others.
        ValueError: the file holds no secret key.
    """
    created = False
    if key_file is None:
        key_file = os.path.join(cluster_key_dir(), f"{CLUSTER_KEY_NAME}.key_secret")
        if not os.path.exists(key_file):
            key_file = write_key_files(cluster_key_dir())[1]
            created = True
    elif not os.path.exists(key_file):
        raise FileNotFoundError(f"no key file {key_file}: write a key pair with `repartir "
                                f"keygen DIR` and pass DIR/repartir.key_secret")
    return key_file, _load_secret(key_file), created


def record_head_key(address: str, key: bytes | None) -> None:
    """Record (or, with ``key=None``, forget) the public key of the head started on this
    machine at ``address``, for drivers and ``repartir status`` here."""
    path = os.path.join(state_dir(True), _RECORD)
    if key is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"address": address, "key": key.decode()}, f)
    os.replace(tmp, path)


def recorded_head_key(address: str) -> str | None:
    """The public key recorded for the head at ``address`` on this machine, or ``None``."""
    try:
        with open(os.path.join(state_dir(), _RECORD)) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec.get("key") if rec.get("address") == address else None
