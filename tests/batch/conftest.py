"""Fixtures for the batch job's tests: one real Ray cluster of two nodes on this machine, shared by the tests that
join it, and ``intgrads-batch`` run as the user runs it (a child process).

The cluster is started as a user would: ``ray start --head`` (token auth, every port from a free block, in a short
private folder) and a second ``ray start --address`` with a resource of its own (``second_node``). It is stopped at
the end, and the fixture checks that no process of it is left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BATCH = [sys.executable, "-m", "intgrads.batch"]


@dataclass
class Cluster:
    folder: Path
    address: str
    token: Path

    def flags(self) -> list[str]:
        return ["--ray-address", self.address, "--ray-token-file", str(self.token)]


def short_folder(prefix: str) -> Path:
    """A private folder with a short path (Ray's Unix sockets)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(folder, 0o700)
    return folder


def _join(folder: Path, head, token: Path):
    from intgrads.launcher.ray_cluster import free_block, ray_env

    ports = free_block(head.base)
    low, high = ports.workers
    command = [str(Path(sys.executable).with_name("ray")), "start", "--address", f"127.0.0.1:{head.gcs}",
               "--temp-dir", str(folder / "n2"), "--node-manager-port", str(ports.node_manager),
               "--object-manager-port", str(ports.object_manager), "--metrics-export-port", str(ports.metrics_export),
               "--dashboard-agent-listen-port", str(ports.agent_listen),
               "--dashboard-agent-grpc-port", str(ports.agent_grpc),
               "--runtime-env-agent-port", str(ports.runtime_env_agent), "--min-worker-port", str(low),
               "--max-worker-port", str(high), "--num-cpus", "1", "--resources", '{"second_node": 1}',
               "--include-log-monitor=false", "--disable-usage-stats"]
    (folder / "n2").mkdir()
    result = subprocess.run(command, cwd=folder, env=ray_env(token, ports), capture_output=True, text=True,
                            timeout=300, start_new_session=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.fixture
def short_tmp():
    """A test's own short TMPDIR (a run's Ray head keeps its files there), removed afterwards."""
    folder = short_folder("i-")   # /tmp/i-XXXXXXXX: a run's folder in it still leaves room for Ray's sockets
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="package")
def two_nodes():
    """A Ray head (2 CPUs) and a second node (1 CPU, resource ``second_node``) on this machine, token auth on."""
    from intgrads.launcher.ray_cluster import cluster_processes, free_block, make_token, start_head, stop_cluster

    folder = short_folder("ib-")
    token = make_token(folder / "token")
    ports = free_block(0)
    try:
        start_head(folder / "head", ports, token, cpus=2, gpus=0, log=folder / "head.out",
                   extra_args=("--include-dashboard=false", "--include-log-monitor=false"), new_session=True)
        _join(folder, ports, token)
        yield Cluster(folder, f"127.0.0.1:{ports.gcs}", token)
    finally:
        stop_cluster(folder)
        assert cluster_processes(folder) == {}
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="package")
def oracle(hf_files):
    """``oracle(sentence, **options)``: the engine's answer in this process with the workers' one torch thread."""
    import intgrads

    bundle = intgrads.load_model("hf", hf_files.weights)

    def compute(sentence, **options):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return intgrads.attribute(bundle, sentence, **options)
        finally:
            torch.set_num_threads(before)

    compute.bundle = bundle
    return compute


def batch_env(tmp: Path) -> dict:
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "INTGRADS_TORCH_THREADS"):
        env.pop(name, None)
    return env


def run_batch(args, *, env: dict, timeout: float = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(BATCH + [str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def index_lines(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "index.jsonl").read_text(encoding="utf-8").splitlines()]


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path
