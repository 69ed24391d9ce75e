"""Resources and priorities (``docs/architecture.md``, "Scheduler":
"Resources and priorities"), end to end through a node.

- ``num_cpus`` (fractions allowed), ``num_gpus`` and custom ``resources`` are reserved while
  a task runs: whole-CPU tasks never run more than ``num_cpus`` at once, fractional ones run
  more than ``num_cpus`` at once, a custom resource of 1 serialises its tasks;
  ``available_resources()`` shows what running tasks hold.
- ``priority=``: with the only worker busy, queued ``high`` tasks run before ``normal`` ones,
  and those before ``low`` ones, whatever the submission order.
- A request no node can satisfy raises ``InfeasibleTaskError`` (also a ``ValueError``) at
  ``.remote()``, naming the resource; the session stays usable.

Concurrency is measured, not guessed: tasks record ``(start, end)`` on the system-wide
monotonic clock and wait for each other (a rendezvous with a deadline), see
:mod:`sessionsupport`.  No assertion depends on how fast the machine is.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import repartir
from rtsupport import wait_until
from sessionsupport import Sessions, max_overlap, rendezvous

pytestmark = pytest.mark.timeout(120)

MAIN = dict(num_cpus=2, num_gpus=1, resources={"licence": 1, "slots": 4})
ONE = dict(num_cpus=1)


@pytest.fixture(scope="module")
def node(_leaves_nothing_behind):
    """Sessions for this module (``node(**MAIN)``, ``node(**ONE)``); shut down at its end,
    after which the conftest checks that nothing is left."""
    sessions = Sessions(_leaves_nothing_behind)
    yield sessions
    sessions.close()


@repartir.remote
def meet(directory: str, name: str, k: int, wait_s: float):
    return rendezvous(directory, name, k, wait_s)


@repartir.remote
def noop(i=0):
    return i


def run_together(fn, n: int, directory: Path, wait_s: float, k: int | None = None):
    """Submit ``n`` rendezvous tasks (each waits for ``k``, default ``n``, to have started)
    and return their ``(start, end, pid)`` intervals."""
    refs = [fn.remote(str(directory), str(i), k or n, wait_s) for i in range(n)]
    return repartir.get(refs, timeout=90)


# --------------------------------------------------------------------------- CPUs


def test_cluster_and_available_resources(node):
    rt = node(**MAIN)
    total = rt.cluster_resources()
    assert total["CPU"] == 2.0
    assert total["GPU"] == 1.0
    assert total["licence"] == 1.0 and total["slots"] == 4.0
    assert total["object_store_memory"] > 0
    assert wait_until(lambda: rt.available_resources()["CPU"] == 2.0, timeout=10)
    avail = rt.available_resources()
    assert avail["GPU"] == 1.0 and avail["licence"] == 1.0 and avail["slots"] == 4.0


def test_whole_cpu_tasks_never_exceed_num_cpus(node, tmp_path):
    node(**MAIN)
    intervals = run_together(meet, 4, tmp_path, wait_s=1.0)
    assert max_overlap(intervals) <= 2, intervals


def test_task_needing_more_than_half_the_cpus_runs_alone(node, tmp_path):
    node(**MAIN)
    intervals = run_together(meet.options(num_cpus=1.5), 2, tmp_path, wait_s=1.0)
    assert max_overlap(intervals) == 1, intervals


@pytest.fixture(scope="module")
def quarter_cpu_run(node, tmp_path_factory):
    """Four tasks of ``num_cpus=0.5`` on a 2-CPU node, each waiting (up to 6 s) for all
    four to have started."""
    node(**MAIN)
    directory = tmp_path_factory.mktemp("fractional")
    return run_together(meet.options(num_cpus=0.5), 4, directory, wait_s=6.0)


def test_fractional_cpus_run_more_tasks_than_cpus(quarter_cpu_run):
    assert max_overlap(quarter_cpu_run) > 2, quarter_cpu_run


def test_fractional_cpus_fill_the_node(quarter_cpu_run):
    assert max_overlap(quarter_cpu_run) == 4, quarter_cpu_run


def test_zero_cpu_tasks_run(node):
    rt = node(**MAIN)
    f = noop.options(num_cpus=0)
    assert rt.get([f.remote(i) for i in range(4)], timeout=60) == [0, 1, 2, 3]


# ------------------------------------------------------------------- custom resources and GPUs


def test_custom_resource_of_one_serialises_tasks(node, tmp_path):
    node(**MAIN)
    lic = meet.options(resources={"licence": 1})
    intervals = run_together(lic, 4, tmp_path, wait_s=0.5, k=2)
    assert max_overlap(intervals) == 1, intervals


def test_fractional_custom_resource_shares(node, tmp_path):
    node(**MAIN)
    half = meet.options(resources={"licence": 0.5})
    intervals = run_together(half, 2, tmp_path, wait_s=4.0)
    assert max_overlap(intervals) == 2, intervals


def test_custom_resource_does_not_block_other_tasks(node, tmp_path):
    rt = node(**MAIN)
    d = str(tmp_path)
    refs = [meet.options(resources={"licence": 1}).remote(d, "lic", 2, 4.0),
            meet.remote(d, "plain", 2, 4.0)]
    intervals = rt.get(refs, timeout=60)
    assert max_overlap(intervals) == 2, intervals


def test_gpu_tasks_serialise_on_one_gpu(node, tmp_path):
    node(**MAIN)
    intervals = run_together(meet.options(num_gpus=1), 3, tmp_path, wait_s=0.5, k=2)
    assert max_overlap(intervals) == 1, intervals


def test_half_gpu_tasks_share_one_gpu(node, tmp_path):
    node(**MAIN)
    intervals = run_together(meet.options(num_gpus=0.5), 2, tmp_path, wait_s=4.0)
    assert max_overlap(intervals) == 2, intervals


@repartir.remote
def hold_until(flag: str, deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while not Path(flag).exists():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_available_resources_show_what_running_tasks_hold(node, tmp_path):
    rt = node(**MAIN)
    flag = tmp_path / "go"
    ref = hold_until.options(num_cpus=0.5, num_gpus=1, resources={"licence": 1, "slots": 2.5}
                             ).remote(str(flag), 30.0)
    try:
        assert wait_until(lambda: rt.available_resources()["licence"] == 0.0, timeout=20)
        avail = rt.available_resources()
        assert avail["GPU"] == 0.0
        assert avail["slots"] == pytest.approx(1.5)
        assert avail["CPU"] == pytest.approx(1.5)
    finally:
        flag.touch()
    assert rt.get(ref, timeout=30) is True
    expected = {"CPU": 2.0, "GPU": 1.0, "licence": 1.0, "slots": 4.0}
    assert wait_until(
        lambda: {k: rt.available_resources()[k] for k in expected} == expected, timeout=10), \
        rt.available_resources()


def test_resources_are_released_when_a_task_raises(node):
    rt = node(**MAIN)

    @repartir.remote(resources={"licence": 1})
    def fails():
        raise RuntimeError("boom")

    for _ in range(3):  # would hang on the second one if the licence leaked
        with pytest.raises(RuntimeError, match="boom"):
            rt.get(fails.remote(), timeout=30)
    assert wait_until(lambda: rt.available_resources()["licence"] == 1.0, timeout=10)


# --------------------------------------------------------------------------- infeasible


@pytest.mark.parametrize("options, names", [
    (dict(num_cpus=3), "CPU"),
    (dict(num_gpus=2), "GPU"),
    (dict(resources={"licence": 2}), "licence"),
    (dict(resources={"no_such_thing": 1}), "no_such_thing"),
    (dict(num_cpus=1, resources={"slots": 5}), "slots"),
])
def test_infeasible_request_fails_at_submission(node, options, names):
    rt = node(**MAIN)
    f = noop.options(**options)
    t0 = time.monotonic()
    with pytest.raises(repartir.InfeasibleTaskError) as info:
        f.remote()
    assert time.monotonic() - t0 < 10, "raised at once, not after a wait"
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, repartir.RepartirError)
    assert names in str(info.value), str(info.value)
    assert rt.get(noop.remote(7), timeout=30) == 7  # still usable


def test_infeasible_from_decorator_options(node):
    rt = node(**MAIN)

    @repartir.remote(num_gpus=4)
    def wants_gpus():
        return 1

    with pytest.raises(repartir.InfeasibleTaskError, match="GPU"):
        wants_gpus.remote()
    assert rt.get(wants_gpus.options(num_gpus=1).remote(), timeout=30) == 1


def test_gpu_request_on_a_node_without_gpus(node):
    rt = node(**ONE)
    assert "GPU" not in rt.cluster_resources()
    with pytest.raises(repartir.InfeasibleTaskError, match="GPU"):
        noop.options(num_gpus=1).remote()
    with pytest.raises(repartir.InfeasibleTaskError, match="licence"):
        noop.options(resources={"licence": 1}).remote()
    assert rt.get(noop.remote(7), timeout=30) == 7


@pytest.mark.parametrize("options", [
    dict(priority="urgent"), dict(num_cpus=-1), dict(num_gpus=-0.5),
    dict(resources={"licence": -1}), dict(resources={"CPU": 1}),
])
def test_invalid_options_raise_value_error(node, options):
    node(**MAIN)
    with pytest.raises(ValueError):
        noop.options(**options).remote()


# --------------------------------------------------------------------------- priorities


@repartir.remote
def stamp(tag: str):
    return time.monotonic_ns(), tag


def test_priorities_high_before_normal_before_low(node, tmp_path):
    rt = node(**ONE)
    flag = tmp_path / "go"
    blocker = hold_until.remote(str(flag), 60.0)
    try:
        # the only worker is busy with the blocker: everything below queues
        assert wait_until(lambda: rt.available_resources()["CPU"] == 0.0, timeout=20)
        refs = [stamp.options(priority="low").remote(f"low{i}") for i in range(5)]
        refs += [stamp.remote(f"normal{i}") for i in range(5)]
        refs += [stamp.options(priority="high").remote(f"high{i}") for i in range(5)]
        refs += [stamp.options(priority="low").remote(f"low{i}") for i in range(5, 8)]
        refs += [stamp.options(priority="high").remote(f"high{i}") for i in range(5, 8)]
    finally:
        flag.touch()
    assert rt.get(blocker, timeout=60) is True
    order = [tag.rstrip("0123456789") for _, tag in sorted(rt.get(refs, timeout=60))]
    assert order == ["high"] * 8 + ["normal"] * 5 + ["low"] * 8, order


def test_priority_from_decorator(node, tmp_path):
    rt = node(**ONE)

    @repartir.remote(priority="high")
    def urgent():
        return time.monotonic_ns(), "high"

    flag = tmp_path / "go"
    blocker = hold_until.remote(str(flag), 60.0)
    try:
        assert wait_until(lambda: rt.available_resources()["CPU"] == 0.0, timeout=20)
        refs = [stamp.options(priority="low").remote("low") for _ in range(3)]
        refs += [urgent.remote() for _ in range(3)]
    finally:
        flag.touch()
    rt.get(blocker, timeout=60)
    order = [tag for _, tag in sorted(rt.get(refs, timeout=60))]
    assert order == ["high"] * 3 + ["low"] * 3, order
