"""``num_returns=0``, as in Ray: ``.remote()`` returns ``None`` and the task still runs; what
it returns is dropped.  An error it ends with has no ref to raise it, so the driver logs it
(logger ``repartir``, level ERROR) instead of losing it silently: an exception the task
raised, and a worker crash once ``max_retries`` are spent.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import repartir
from rtsupport import wait_file, wait_until

pytestmark = pytest.mark.timeout(120)


@repartir.remote(num_returns=0)
def touch(path: str):
    Path(path).write_text(str(os.getpid()))
    return "dropped"


@repartir.remote(num_returns=0, max_retries=0)
def fail(message: str):
    raise ValueError(message)


@repartir.remote(num_returns=0, max_retries=0)
def crash():
    os._exit(3)


@repartir.remote
def one(x):
    return x


def test_remote_returns_none_and_the_task_runs(rt, tmp_path):
    path = tmp_path / "ran"
    assert touch.remote(str(path)) is None
    assert wait_file(str(path), 60)
    assert int(path.read_text()) != os.getpid()  # in a worker


def test_options_num_returns_zero(rt, tmp_path):
    path = tmp_path / "ran"
    assert one.options(num_returns=0).remote(1) is None
    # and back: the value dropped under num_returns=0 is the task's result again
    assert rt.get(touch.options(num_returns=1).remote(str(path)), timeout=60) == "dropped"


def repartir_errors(caplog, text: str) -> list:
    return [r for r in caplog.records
            if r.name == "repartir" and r.levelno == logging.ERROR and text in r.getMessage()]


def test_an_exception_is_logged(rt, caplog):
    caplog.set_level(logging.ERROR, logger="repartir")
    assert fail.remote("boom-7f3a") is None
    assert wait_until(lambda: repartir_errors(caplog, "boom-7f3a"), timeout=60)
    (record,) = repartir_errors(caplog, "boom-7f3a")
    text = record.getMessage()
    assert "fail" in text and "num_returns=0" in text and "ValueError" in text
    assert "raise ValueError(message)" in text  # the remote traceback


def test_a_crash_is_logged(rt, caplog):
    caplog.set_level(logging.ERROR, logger="repartir")
    assert crash.remote() is None
    assert wait_until(lambda: repartir_errors(caplog, "crash"), timeout=60)
    assert any("WorkerCrashedError" in r.getMessage() and "exit code 3" in r.getMessage()
               for r in repartir_errors(caplog, "crash"))
    assert rt.get(one.remote(5), timeout=60) == 5  # a new worker took its place


@pytest.mark.parametrize("bad", [-1, 1.5, True, "two"])
def test_bad_num_returns_are_refused(bad):
    with pytest.raises(ValueError, match="num_returns"):
        one.options(num_returns=bad)


@repartir.remote
class Log:
    def __init__(self):
        self.seen = []

    @repartir.method(num_returns=0)
    def note(self, x):
        self.seen.append(x)
        return "dropped"

    def all(self):
        return self.seen


def test_an_actor_method_with_num_returns_zero_runs_in_order_and_returns_none(rt):
    log = Log.remote()
    assert [log.note.remote(i) for i in range(3)] == [None, None, None]
    assert log.note.options(num_returns=0).remote(3) is None
    assert repartir.get(log.all.remote(), timeout=60) == [0, 1, 2, 3]
