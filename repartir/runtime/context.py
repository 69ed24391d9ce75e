"""Which runtime client this process uses (the driver's, or the worker's own), and how to
start one when there is none yet (the driver registers its implicit ``init``: this module
sits below it, so that refs can reach a client without importing the driver)."""

from __future__ import annotations

from typing import Any

_client: Any = None
_starter: Any = None  # () -> client: the driver's client(), which may call init()


def current_client() -> Any:
    return _client


def set_client(client: Any) -> None:
    global _client
    _client = client


def set_starter(starter: Any) -> None:
    global _starter
    _starter = starter


def client_or_start() -> Any:
    """This process's client; without one, the driver's implicit ``init`` starts a node."""
    if _client is not None:
        return _client
    if _starter is None:
        raise RuntimeError("repartir is not initialized: call repartir.init()")
    return _starter()
