"""The cluster chaos scenario (``stress/cluster_chaos.py``; docs/cluster.md, "Failures"): a
head and two nodes, a driver streaming tasks; mid-run one node is cut off (its link down on
namespace hosts; SIGSTOP on loopback) then back, and the other is SIGKILLed.  Every result
arrives or fails with a clear error, nothing hangs, nothing is left (the scenario checks
processes, /dev/shm and namespaces itself and lists what went wrong in ``failures``)."""

from __future__ import annotations

import pytest

from stress import cluster_chaos


def _check(report: dict) -> None:
    assert report["failures"] == [], report
    assert report["cut_node_rejoined"]
    assert report["counts"]["chained"]["ok"] > 0 and report["counts"]["kept"]["ok"] > 0
    assert report["sessions_checked"] == 3 and report["workers_checked"] >= 3


@pytest.mark.timeout(300)  # a failing run ends by its own deadlines, within about 200 s
def test_chaos_on_loopback():
    _check(cluster_chaos.run("loopback", duration=14.0, node_timeout=2.0, inflight=10,
                             seed=1))


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_chaos_on_namespace_hosts():
    _check(cluster_chaos.run("netns", duration=14.0, node_timeout=2.0, inflight=10, seed=2))
