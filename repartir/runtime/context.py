"""Which runtime client this process uses (the driver's, or the worker's own)."""

from __future__ import annotations

from typing import Any

_client: Any = None


def current_client() -> Any:
    return _client


def set_client(client: Any) -> None:
    global _client
    _client = client
