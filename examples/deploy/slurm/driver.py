"""A driver for ``repartir.sbatch`` (examples/deploy/README.md): it waits until every node
of the Slurm allocation has joined, runs tasks on all of them and prints where they ran.

The batch script sets ``REPARTIR_ADDRESS`` (the head), ``REPARTIR_TOKEN_FILE`` and, with
encryption, ``REPARTIR_SERVER_KEY``: ``repartir.init()`` reads them.  Replace ``work`` with
your own tasks.
"""

from __future__ import annotations

import os
import sys
import time

import repartir

JOIN_TIMEOUT_S = 120  # how long the nodes have to join before the driver gives up


@repartir.remote
def work(i: int) -> tuple[str, int]:
    time.sleep(0.2)
    return repartir.get_runtime_context().get_node_id(), i * i


def main() -> int:
    repartir.init()
    want = int(os.environ.get("SLURM_JOB_NUM_NODES", "1"))
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while (alive := sum(n["Alive"] for n in repartir.nodes())) < want:
        if time.monotonic() > deadline:
            print(f"only {alive} of {want} nodes joined within {JOIN_TIMEOUT_S} s: see the "
                  f"nodes' logs in $REPARTIR_CLUSTER_DIR on each node", file=sys.stderr)
            return 1
        time.sleep(0.5)
    cpus = int(repartir.cluster_resources()["CPU"])
    out = repartir.get([work.remote(i) for i in range(4 * cpus)], timeout=600)
    used = {node for node, _ in out}
    print(f"{len(out)} tasks ran on {len(used)} of {want} nodes; "
          f"sum of squares {sum(v for _, v in out)}")
    repartir.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
