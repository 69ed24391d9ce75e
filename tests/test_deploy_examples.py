"""examples/deploy/ (its README.md): a Slurm batch script and a Kubernetes manifest, checked
as far as can be done without Slurm or Kubernetes.

- The Slurm script passes ``bash -n``, and runs as a two-node allocation on this machine
  with stand-ins for ``srun`` and ``scontrol`` that run each job step here: the driver's
  tasks run on both nodes, and afterwards no process, object store entry or job directory
  is left.
- The manifest parses; its Service, ports, Secret volume and ``/dev/shm`` fit together.
- Every ``repartir`` command line in them parses with repartir's own argument parser, every
  ``REPARTIR_*`` variable they use is one repartir reads, their default ports are repartir's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from repartir import cli
from repartir.cluster import commands
from repartir.cluster.state import host_port
from repartir.config import CLUSTER_PORT
from rtsupport import REPO_ROOT

DEPLOY = Path(REPO_ROOT) / "examples" / "deploy"
SBATCH = DEPLOY / "slurm" / "repartir.sbatch"
MANIFEST = DEPLOY / "kubernetes" / "repartir.yaml"
#: Values for the shell variables of the script's command lines, as on a real allocation.
SHELL_VALUES = {"HEAD_IP": "10.1.0.11", "HEAD_PORT": "6380", "CPUS": "8", "NWORKERS": "2",
                "HEAD_HOST": "node011", "JOB_DIR": "/home/u/.repartir/slurm-77",
                "REPARTIR_TOKEN_FILE": "/home/u/.repartir/slurm-77/token",
                "SLURM_JOB_ID": "77", "DRIVER": "driver.py", "WORKERS_PID": "4242"}


def parse_repartir(argv: list[str]) -> None:
    """Parse ``repartir ARGV...`` as the ``repartir`` command would; fail the test with
    argparse's message if it does not parse."""
    is_cluster = argv[0] in ("start", "stop") or (argv[0] == "status" and "--address" in argv)
    parser = commands.parser() if is_cluster else cli.parser()
    parser.exit_on_error = False
    try:
        args = parser.parse_args(argv)
    except (SystemExit, Exception) as exc:
        pytest.fail(f"`repartir {shlex.join(argv)}` does not parse: {exc!r}")
    if getattr(args, "address", None):
        host_port(args.address)
    if args.command == "start":
        assert args.head != (args.address is not None), argv
        if getattr(args, "resources", None):
            json.loads(args.resources)


def shell_commands(text: str) -> list[list[str]]:
    """The ``repartir`` command lines of a shell script, continuation lines joined, each
    cut at the first shell operator, its ``$VAR``/``${VAR}`` replaced by SHELL_VALUES."""
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not re.search(r"(^|\s)repartir\s", line):
            continue
        tokens = shlex.split(line, comments=True)
        start = tokens.index("repartir")
        argv = []
        for tok in tokens[start + 1:]:
            if tok in ("&", "&&", "||", ";", "|", ")"):
                break
            for name in re.findall(r"\$\{?(\w+)\}?", tok):
                assert name in SHELL_VALUES, f"no sample value for ${name} in: {line}"
            argv.append(re.sub(r"\$\{?(\w+)\}?", lambda m: SHELL_VALUES[m.group(1)], tok))
        found.append(argv)
    return found


def manifest() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def containers(docs: list[dict]) -> dict[str, dict]:
    return {c["name"]: c for d in docs if d["kind"] == "Deployment"
            for c in d["spec"]["template"]["spec"]["containers"]}


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# --------------------------------------------------------------------------- both


def test_every_repartir_command_line_parses():
    lines = shell_commands(SBATCH.read_text())
    assert {a[0] for a in lines} == {"token", "keygen", "start", "stop"}, lines
    starts = [a for a in lines if a[0] == "start"]
    assert sum("--head" in a for a in starts) == 2 and sum("--address" in a for a in starts) == 1
    assert all("--block" in a for a in starts if "--address" in a)  # under srun
    for argv in lines:
        parse_repartir(argv)
    c = containers(manifest())
    k8s = [c["head"]["command"], c["worker"]["command"],
           c["head"]["readinessProbe"]["exec"]["command"]]
    for argv in k8s:
        assert argv[0] == "repartir", argv
        parse_repartir(argv[1:])
    assert all("--block" in a for a in k8s[:2])  # a container's main process


def test_the_variables_they_use_are_repartirs():
    config = (Path(REPO_ROOT) / "repartir" / "config.py").read_text()
    known = set(re.findall(r"REPARTIR_[A-Z_]+", config))
    for path in (SBATCH, DEPLOY / "slurm" / "driver.py", MANIFEST, DEPLOY / "README.md"):
        used = set(re.findall(r"REPARTIR_[A-Z_]+", path.read_text()))
        assert used and used <= known, f"{path.name}: not read by repartir: {used - known}"
    env = {e["name"] for c in containers(manifest()).values() for e in c["env"]}
    assert {"REPARTIR_TOKEN", "REPARTIR_SERVER_KEY"} <= env


# --------------------------------------------------------------------------- Slurm


def test_the_slurm_script_passes_bash_n():
    r = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"HEAD_PORT=${{HEAD_PORT:-{CLUSTER_PORT}}}" in SBATCH.read_text()


SCONTROL = """#!/bin/bash
# scontrol show hostnames LIST: this machine once per node of the allocation
[ "$1 $2" = "show hostnames" ] || { echo "fake scontrol: only 'show hostnames'" >&2; exit 2; }
for _ in $(seq "$SLURM_JOB_NUM_NODES"); do echo localhost; done
"""
SRUN = """#!/bin/bash
# srun [OPTIONS] CMD...: CMD --ntasks times on this machine, in parallel
n=1
while [ $# -gt 0 ]; do
    case "$1" in
        --ntasks=*) n=${1#--ntasks=}; shift ;;
        --nodes=*|--ntasks-per-node=*|--exclude=*|--overlap) shift ;;
        *) [ "${1#-}" = "$1" ] || { echo "fake srun: unknown option $1" >&2; exit 2; }; break ;;
    esac
done
pids=()
for i in $(seq 0 $((n - 1))); do SLURM_PROCID=$i "$@" & pids+=($!); done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("encrypt", ["1", "0"])
def test_the_slurm_script_runs_a_two_node_allocation_here(tmp_path, encrypt):
    """The whole script, its job steps run here by a stand-in ``srun``: every node of the
    allocation is 127.0.0.1, each with one CPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    for d in ("home", "tmp"):
        (tmp_path / d).mkdir()
    shm = tempfile.mkdtemp(prefix="repartir-deploy-test-", dir="/dev/shm")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPARTIR_", "SLURM_"))}
    env.update(PATH=f"{bin_dir}:{Path(sys.executable).parent}:{env['PATH']}",
               HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"),
               SLURM_JOB_ID="77", SLURM_JOB_NODELIST="fake[1-2]", SLURM_JOB_NUM_NODES="2",
               SLURM_CPUS_PER_TASK="1", HEAD_PORT=str(_free_port()), ENCRYPT=encrypt,
               REPARTIR_SHM_DIR=shm, REPARTIR_TEMP_DIR=str(tmp_path / "sessions"))
    state = tmp_path / "tmp" / "repartir-77"
    try:
        r = subprocess.run(["bash", str(SBATCH)], cwd=REPO_ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        assert "8 tasks ran on 2 of 2 nodes; sum of squares 140" in out
        assert ("Encryption (CurveZMQ) is on" in out) is (encrypt == "1")
        pids = [int(p) for p in re.findall(r"stopped the (?:head|node) \(pid (\d+)", out)]
        assert len(pids) == 2, out
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in pids) or os.listdir(shm):
            assert time.monotonic() < deadline, (pids, os.listdir(shm))
            time.sleep(0.1)
        assert not (tmp_path / "home" / ".repartir" / "slurm-77").exists()
        assert json.loads((state / "processes.json").read_text()) == []
    finally:
        try:  # whatever a failed run left: the daemons it recorded, its shared memory
            for row in json.loads((state / "processes.json").read_text()):
                if _alive(row["pid"]):
                    os.kill(row["pid"], signal.SIGKILL)
        except (OSError, ValueError):
            pass
        subprocess.run(["rm", "-rf", shm])


# --------------------------------------------------------------------------- Kubernetes


def test_the_kubernetes_manifest_fits_together():
    docs = manifest()
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    assert len(by_kind["Service"]) == 1 and len(by_kind["Deployment"]) == 2
    service = by_kind["Service"][0]
    head_dep = [d for d in by_kind["Deployment"] if d["metadata"]["name"] == "repartir-head"][0]
    for dep in by_kind["Deployment"]:
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert head_dep["spec"]["replicas"] == 1
    assert service["spec"]["selector"].items() \
        <= head_dep["spec"]["template"]["metadata"]["labels"].items()
    c = containers(docs)
    head, worker = c["head"]["command"], c["worker"]["command"]
    port = service["spec"]["ports"][0]
    assert port["port"] == int(option(head, "--port")) == CLUSTER_PORT
    named = {p["name"]: p["containerPort"] for p in c["head"]["ports"]}
    assert named[port["targetPort"]] == CLUSTER_PORT
    assert option(worker, "--address") == f"{service['metadata']['name']}:{port['port']}"
    assert option(head, "--bind") == option(worker, "--bind") == "0.0.0.0"
    # the head's key file is in the Secret volume mounted there, readable by its user only
    key_file = option(head, "--key-file")
    volumes = {v["name"]: v for v in head_dep["spec"]["template"]["spec"]["volumes"]}
    mount = [m for m in c["head"]["volumeMounts"] if key_file.startswith(m["mountPath"] + "/")]
    assert len(mount) == 1
    secret = volumes[mount[0]["name"]]["secret"]
    assert secret["defaultMode"] & 0o077 == 0
    assert key_file[len(mount[0]["mountPath"]) + 1:] in [i["path"] for i in secret["items"]]
    # the token and the head's public key from Secrets; /dev/shm holds the object store
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["worker"]["env"]}
    assert refs["REPARTIR_TOKEN"]["name"] == "repartir-token"
    assert refs["REPARTIR_SERVER_KEY"] == {"name": secret["secretName"], "key": "public"}
    readme = (DEPLOY / "README.md").read_text()
    assert "kubectl create secret generic repartir-token --from-file=token=" in readme
    assert f"kubectl create secret generic {secret['secretName']}" in readme
    for dep, name in ((head_dep, "head"), (by_kind["Deployment"][1], "worker")):
        spec = dep["spec"]["template"]["spec"]
        shm_mount = [m for m in c[name]["volumeMounts"] if m["mountPath"] == "/dev/shm"][0]
        shm_vol = [v for v in spec["volumes"] if v["name"] == shm_mount["name"]][0]
        assert shm_vol["emptyDir"]["medium"] == "Memory"
        limit = int(shm_vol["emptyDir"]["sizeLimit"].rstrip("Gi")) << 30
        assert limit >= int(option(c[name]["command"], "--object-store-memory"))
        assert float(c[name]["resources"]["requests"]["cpu"]) \
            >= float(option(c[name]["command"], "--num-cpus"))
