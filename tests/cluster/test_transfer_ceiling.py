"""The ceiling of ``transfer`` (``stress/transfer_ceiling.py``) at a small size: each way moves
the array from host B to host C through C's link, checks what arrived, and measures a rate and
the CPU both sides used; the costs measured apart run each step (verifying into place raises if
a chunk does not verify).  The figures themselves are in docs/cluster.md, not asserted here."""

from __future__ import annotations

import pytest

from stress import netns, transfer_ceiling

@pytest.mark.netns
@pytest.mark.timeout(180)
@pytest.mark.parametrize("way", transfer_ceiling.WAYS)
def test_each_way_moves_the_array_from_b_to_c(way):
    mib, reps = 8, 1
    with netns.Cluster(3) as cluster:
        before = cluster.link_bytes(2)
        r = transfer_ceiling.measure(cluster, way, mib, reps)
        received = cluster.link_bytes(2)[0] - before[0]
    assert received >= (reps + 1) * (mib << 20)  # warm-up and the timed round, into C
    assert r["GBps"] > 0 and len(r["rounds"]) == reps and r["cpu_s_per_GB"] >= 0


@pytest.mark.timeout(60)
def test_the_costs_apart_are_measured_for_each_step():
    costs = transfer_ceiling.apart(mib=8, reps=1)
    assert set(costs) - {"blake3"} == {"ghash", "sign", "ghash, copy", "copy+ghash",
                                       "verify in place"}
    assert all(c >= 0 for c in costs.values())
