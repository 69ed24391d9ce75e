"""Fixtures of the cluster tests: several hosts on one machine (``stress/netns.py``).

Tests marked ``netns`` skip, with the reason, where network namespaces cannot be made (not
root, no ``ip`` binary, no permission) and run everywhere else (CI runs as root, with
iproute2). After each of them, no namespace of this pytest process may be left.
"""

from __future__ import annotations

import sys

import pytest

from rtsupport import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from stress import netns  # noqa: E402


@pytest.fixture(autouse=True)
def _netns_or_skip(request):
    """Skip a ``netns`` test where namespaces cannot be made; after it, none of ours left."""
    if request.node.get_closest_marker("netns") is None:
        yield
        return
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)
    yield
    left = netns.owned_namespaces()
    if left:
        netns.delete_namespaces(left)
    assert not left, f"network namespaces left behind: {left}"


@pytest.fixture
def hosts():
    """Two hosts (``netns.Cluster(2)``) for one test, deleted after it."""
    with netns.Cluster(2) as cluster:
        yield cluster
