"""The cluster's wire layer: signed ZeroMQ messages, tokens and CurveZMQ keys
(docs/cluster.md).

Nothing else in repartir uses it yet; the cluster (a head node, worker nodes, drivers
connecting to the head) will be built on it.

- :mod:`.wire`: the frames of a message, signing (:class:`Signer`) and verification
  (:class:`Verifier`) with HMAC-SHA256 keyed by the cluster token, replay checks, and the
  payload's encoding (pickle 5, out-of-band buffers as frames of their own);
- :mod:`.sockets`: :class:`Endpoint`, a ROUTER or DEALER socket that sends and receives
  verified messages;
- :mod:`.tokens`: the cluster token (generate, write with mode 0600, load, ``REPARTIR_TOKEN``);
- :mod:`.curve`: CurveZMQ key pairs and key files (``repartir keygen``).
"""

from __future__ import annotations

from .curve import CurveKeys, generate_keys, load_key_file, public_key, write_key_files
from .sockets import Endpoint, Message, default_address, is_local_address
from .tokens import check_token, find_token, generate_token, load_token_file, write_token_file
from .wire import Signer, Verified, Verifier, decode, encode

__all__ = ["Endpoint", "Message", "default_address", "is_local_address", "Signer", "Verifier",
           "Verified", "encode", "decode", "generate_token", "write_token_file",
           "load_token_file", "find_token", "check_token", "CurveKeys", "generate_keys",
           "write_key_files", "load_key_file", "public_key"]
