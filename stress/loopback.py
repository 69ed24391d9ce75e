"""A loopback cluster for the ``stress/`` scripts that need no network namespaces
(``cluster_deps_bench.py``, ``cluster_inner_bench.py``): a head and, if asked, one node,
started with the CLI in a state directory and token file of their own, and this process
connected to them as a driver."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Iterator, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(env: dict, *args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "repartir", *args], capture_output=True,
                       text=True, env=env, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"repartir {' '.join(args)} failed: {r.stderr}")


@contextlib.contextmanager
def loopback_cluster(head: Sequence[str], node: Sequence[str] | None = None,
                     join_s: float = 30.0) -> Iterator[None]:
    """Start ``repartir start --head --port 0 *head`` and, unless ``node`` is None,
    ``repartir start --address HEAD *node``, connect this process (``repartir.init``) and
    wait until every node is alive; on leaving, disconnect and ``repartir stop`` them.  The
    daemons and their workers import the project from ``ROOT`` (``PYTHONPATH``), so
    functions of ``stress/`` modules run there.

    Raises:
        SystemExit: a ``repartir`` command failed, or a node did not join within ``join_s``
            seconds.
    """
    import repartir

    with tempfile.TemporaryDirectory(prefix="repartir-stress-") as tmp:
        env = dict(os.environ, REPARTIR_CLUSTER_DIR=os.path.join(tmp, "state"),
                   REPARTIR_TOKEN_FILE=os.path.join(tmp, "token"))
        env.pop("REPARTIR_ADDRESS", None)
        env.pop("REPARTIR_TOKEN", None)
        env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [env.get("PYTHONPATH")])])
        os.environ.update({k: env[k] for k in ("REPARTIR_CLUSTER_DIR", "REPARTIR_TOKEN_FILE")})
        os.environ.pop("REPARTIR_TOKEN", None)
        _cli(env, "start", "--head", "--port", "0", *head)
        try:
            if node is not None:
                with open(os.path.join(tmp, "state", "address.json")) as f:
                    address = json.load(f)["address"]
                _cli(env, "start", "--address", address, *node)
            repartir.init(address="auto")
            want = 1 if node is None else 2
            deadline = time.monotonic() + join_s
            while sum(n["Alive"] for n in repartir.nodes()) < want:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the node did not join in {join_s:g} s")
            yield
        finally:
            try:
                repartir.shutdown()
            finally:
                _cli(env, "stop")
