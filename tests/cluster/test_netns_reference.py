"""The reference scenarios of the cluster benchmarks (``stress/netns_reference.py``) at small
sizes: they run between namespaces, check what they moved, and return figures in the shape of
the harness's workloads. The figures themselves are in docs/benchmarks.md, not asserted here."""

from __future__ import annotations

import importlib.util

import pytest

from stress import netns, netns_reference

pytestmark = pytest.mark.netns


def test_tcp_stream_moves_every_byte_between_two_hosts():
    with netns.Cluster(2) as cluster:
        before = cluster.link_bytes(1)
        figures = netns_reference.tcp_stream(cluster, 0, 1, mib=4, reps=2)
        received = cluster.link_bytes(1)[0] - before[0]
    assert set(figures) == {"transfer"}
    gbps, extra = figures["transfer"]
    assert gbps > 0 and len(extra["rounds_GBps"]) == 2
    assert extra["bytes"] == 4 << 20 and extra["checked"].startswith("crc32")
    assert (extra["from"], extra["to"]) == (cluster.hosts[0].addr, cluster.hosts[1].addr)
    assert received >= 3 * (4 << 20)  # warm-up and two rounds, through host 1's eth0


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                    reason="dask distributed is not installed (pip install '.[bench]')")
@pytest.mark.timeout(180)
def test_dask_reference_runs_tasks_and_moves_the_array_worker_to_worker():
    with netns.Cluster(3) as cluster:
        figures = netns_reference.dask_reference(cluster, tiny_tasks=300, mib=4, reps=1)
        b, c = cluster.hosts[1], cluster.hosts[2]
    assert set(figures) == {"remote_tiny", "transfer"}
    rate, tiny = figures["remote_tiny"]
    assert rate > 0 and tiny["tasks"] == 300 and tiny["workers"] == [b.addr, c.addr]
    gbps, transfer = figures["transfer"]
    assert gbps > 0 and transfer["bytes"] == 4 << 20
    assert [a.split("://")[1].rsplit(":", 1)[0] for a in transfer["ran_on"]] == [c.addr]
    assert transfer["B_sent_bytes"] >= 2 * (4 << 20) > transfer["scheduler_host_received_bytes"]
