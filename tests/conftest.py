"""Shared fixtures and process/shared-memory hygiene checks for the repartir test suite.

Every test module that needs a running node asks for the module-scoped ``rt`` fixture
(``repartir.init(num_cpus=2)`` … ``repartir.shutdown()``).  Independently of that, an
autouse module-scoped fixture checks at the end of *every* module, after ``shutdown()``,
that

- no child process of this pytest process with ``repartir.runtime.worker`` in its command
  line is left (polled for up to 5 s; zombies count as gone), and
- no ``/dev/shm`` entry that a repartir session of this process used is left.

Which ``/dev/shm`` entries belong to *this* pytest process is recorded after every test by
reading ``/proc/<pid>/maps`` and ``/proc/<pid>/fd`` of the driver (this process) and of its
worker processes, so that another repartir session running concurrently on the same
machine (another developer's test run) cannot make this check fail.  Entries that appeared
during the module and that no live process outside this process tree holds are also
reported.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

import repartir
from rtsupport import Tracker, assert_nothing_left
from sessionsupport import Sessions

settings.register_profile(
    "repartir",
    deadline=None,
    max_examples=30,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
settings.load_profile(os.environ.get("REPARTIR_HYPOTHESIS_PROFILE", "repartir"))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _leaves_nothing_behind():
    """At the end of each module: shut down, then no worker process and no /dev/shm entry."""
    tracker = Tracker()
    yield tracker
    if repartir.is_initialized():
        tracker.record()
        repartir.shutdown()
    assert_nothing_left(tracker)


@pytest.fixture(autouse=True)
def _record_session_resources(_leaves_nothing_behind):
    """After every test, remember the worker pids and /dev/shm names in use."""
    yield
    if repartir.is_initialized():
        _leaves_nothing_behind.record()


@pytest.fixture(scope="module")
def rt(_leaves_nothing_behind):
    """A local node with two worker processes for the whole module."""
    if repartir.is_initialized():
        repartir.shutdown()
    repartir.init(num_cpus=2)
    _leaves_nothing_behind.record()
    yield repartir
    _leaves_nothing_behind.record()
    repartir.shutdown()


@pytest.fixture(scope="module")
def node(_leaves_nothing_behind):
    """Sessions a module starts and stops itself (``node(**init_kwargs)``), closed at
    the module's end (tests/sessionsupport.py)."""
    sessions = Sessions(_leaves_nothing_behind)
    yield sessions
    sessions.close()


@pytest.fixture
def no_session(_leaves_nothing_behind):
    """No session before the test, and none after it (for init/shutdown tests)."""
    if repartir.is_initialized():
        _leaves_nothing_behind.record()
        repartir.shutdown()
    yield
    if repartir.is_initialized():
        _leaves_nothing_behind.record()
        repartir.shutdown()
