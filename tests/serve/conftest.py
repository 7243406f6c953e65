"""Fixtures for the end-to-end serving tests: real TorchServe servers started through the launcher.

Each server gets its own ports, run directory (config, logs, TMPDIR with TorchServe's pid file and worker
sockets) and model store under a pytest temporary directory, and is stopped with ``intgrads --stop`` at the
end. The models are the shared fixtures of ``tests/conftest.py`` (small seeded BERT, XLNet, DistilBERT).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
RAY_PORT = "8898"   # the README's Ray Serve block (tests/test_readme.py leaves it to test_ray_frontend.py)
LAUNCHER = [sys.executable, "-m", "intgrads.launcher"]
START_TIMEOUT = 600


def _port_block_free(base: int, count: int) -> bool:
    for port in range(base, base + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("", port))   # every interface: some tests serve on 0.0.0.0
            except OSError:
                return False
    return True


_used_bases: set = set()


def free_port_block(count: int = 5) -> int:
    """A port P with P..P+count-1 free on every interface (inference, management, metrics, 2 x gRPC), from
    10000-19999: below the kernel's ephemeral range (32768 up), so that no outgoing connection takes one of them
    before the server binds it, and below the blocks Ray clusters take theirs from (20000 up), whose worker ports
    are bound only when a worker starts."""
    rnd = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(200):
        base = rnd.randrange(10000, 20000 - count, 10)
        if base not in _used_bases and _port_block_free(base, count):
            _used_bases.add(base)
            return base
    raise RuntimeError("no free block of ports found")


def launcher_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["TMPDIR"] = str(tmp)
    env.pop("INTGRADS_TORCH_THREADS", None)
    env.pop("INTGRADS_PROG", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_launcher(args, *, cwd: Path, env: dict, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(LAUNCHER + [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@dataclass
class ManagementResponse:
    status_code: int
    body: object

    def json(self):
        return self.body

    @property
    def text(self) -> str:
        return self.body if isinstance(self.body, str) else json.dumps(self.body)


@dataclass
class Server:
    port: int
    run_dir: Path
    model_store: Path
    home: Path
    output: str
    start_seconds: float
    env: dict
    models: list = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def management(self) -> str:
        return f"http://127.0.0.1:{self.port + 1}"

    def url(self, model: str, route: str = "predictions") -> str:
        return f"{self.base}/{route}/{model}"

    def curl_line(self, model: str) -> str:
        """The curl the launcher printed for ``model``."""
        for line in self.output.splitlines():
            if line.strip().startswith("curl ") and f"/predictions/{model} " in line:
                return line.strip()
        raise AssertionError(f"no curl printed for {model}:\n{self.output}")

    def manage(self, method: str, path: str, timeout: float = 60) -> "ManagementResponse":
        """A management API call, wherever this server's management API listens (a loopback server's Unix
        socket, else its TCP port with the management key), through the launcher's own client."""
        from intgrads.launcher.management import call, management_target, read_keys

        state = json.loads((self.run_dir / "state.json").read_text())
        token = read_keys(self.run_dir).get("management") if state.get("token_auth") else None
        status, body = call(management_target(state, self.run_dir), path, method=method, token=token,
                            timeout=timeout)
        return ManagementResponse(status, body)

    def describe(self, model: str) -> dict:
        response = self.manage("GET", f"/models/{model}", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()[0]

    def worker_pids(self, model: str) -> list:
        return sorted(w["pid"] for w in self.describe(model)["workers"] if w.get("status") == "READY")

    def model_log(self) -> str:
        path = self.run_dir / "logs" / "model_log.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""

    def stop(self) -> subprocess.CompletedProcess:
        return run_launcher(["--stop", "-p", self.port, "--run-dir", self.run_dir], cwd=self.home, env=self.env,
                            timeout=120)


def start_server(tmp_path_factory, label: str, model_args: list, extra_args: list = (), env_edit=None) -> Server:
    """Start a server through the launcher; ``env_edit(env) -> env`` changes its environment (e.g. hides Java)."""
    home = tmp_path_factory.mktemp(f"serve-{label}")
    tmp = home / "tmp"
    tmp.mkdir()
    port = free_port_block()
    run_dir = home / "run"
    store = home / "model_store"
    env = launcher_env(tmp)
    if env_edit is not None:
        env = env_edit(env)
    args = list(model_args) + ["-p", port, "--model-store", store, "--run-dir", run_dir] + list(extra_args)
    started = time.time()
    result = run_launcher(args, cwd=home, env=env)
    seconds = time.time() - started
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"the launcher failed (exit {result.returncode}):\n{output}")
    server = Server(port=port, run_dir=run_dir, model_store=store, home=home, output=output, start_seconds=seconds,
                    env=env)
    match = re.search(r"ready in ([0-9.]+) s", output)
    print(f"\n[serve] {label}: launcher took {seconds:.1f} s (TorchServe ready in "
          f"{match.group(1) if match else '?'} s)")
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory, bert_files, xlnet_files, hf_files):
    """One TorchServe for most tests: bert (.pth + config + tokenizer dir), xlnet-base (a ``module.``-prefixed
    .pth + config + SentencePiece tokenizer), hf (a save_pretrained DistilBERT), the demo and the demo causal LM;
    batch size 4."""
    model_args = [
        "-bp", bert_files.weights, "--config", f"bert={bert_files.config}", "--tokenizer", f"bert={bert_files.tokenizer}",
        "-xlb", xlnet_files.extra["module_prefixed"], "--config", f"xlnet-base={xlnet_files.config}",
        "--tokenizer", f"xlnet-base={xlnet_files.tokenizer}",
        "--hf-model", hf_files.weights,
        "--demo", "--demo-lm",
        "--batch-size", "4", "--max-batch-delay", "100",
    ]
    server = start_server(tmp_path_factory, "main", model_args)
    server.models = ["bert", "xlnet-base", "hf", "demo"]   # the classifiers
    server.lm_models = ["demo-lm"]                         # the causal LMs
    try:
        yield server
    finally:
        result = server.stop()
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="session")
def engine_bundles(server, bert_files, xlnet_files, hf_files):
    """The engine loaded in the test process from the same files the server archived."""
    import intgrads
    from intgrads.launcher.demo import DEMO_NAME

    return {
        "bert": intgrads.load_model("bert", bert_files.weights, config=bert_files.config, tokenizer=bert_files.tokenizer),
        "xlnet-base": intgrads.load_model("xlnet-base", xlnet_files.extra["module_prefixed"], config=xlnet_files.config,
                                          tokenizer=xlnet_files.tokenizer),
        "hf": intgrads.load_model("hf", hf_files.weights),
        "demo": intgrads.load_model("hf", server.model_store / DEMO_NAME),
    }


@pytest.fixture(scope="session")
def worker_threads(server) -> int:
    """The torch thread count of the server's workers (from their load line in the model log)."""
    counts = {int(n) for n in re.findall(r"loaded on cpu with (\d+) torch threads", server.model_log())}
    assert len(counts) == 1, counts
    return counts.pop()


@pytest.fixture(scope="session")
def direct(engine_bundles, worker_threads):
    """``direct(model, sentence, **options)``: the engine's answer in this process, computed with the workers'
    thread count (another count sums in another order, which moves sums over the hidden size by ~1e-6)."""
    import intgrads
    import torch

    def compute(model, sentence, **options):
        before = torch.get_num_threads()
        torch.set_num_threads(worker_threads)
        try:
            return intgrads.attribute(engine_bundles[model], sentence, **options)
        finally:
            torch.set_num_threads(before)

    return compute


def post_json(url: str, payload, **kwargs) -> requests.Response:
    return requests.post(url, data=json.dumps(payload), headers={"Content-Type": "application/json",
                                                                  **kwargs.pop("headers", {})}, timeout=300, **kwargs)


# ---------------------------------------------------------------------------------------------- Ray Serve
# The Ray Serve front end's server: the README's own command (./scripts/intgrads.sh --demo --frontend ray -p 8898),
# started once, stopped by the README's stop command at the end of test_ray_frontend.py (or here, should a test
# fail before).
RUN_DIR = ROOT / "logs" / f"serve-{RAY_PORT}"
MADE = ("ray_answer.gzip",)


def bash(command: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@dataclass
class RayServer:
    port: int
    run_dir: Path
    output: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, model: str = "demo", route: str = "predictions") -> str:
        return f"{self.base}/{route}/{model}"

    @property
    def state(self) -> dict:
        return json.loads((self.run_dir / "state.json").read_text())

    def dashboard(self):
        from intgrads.launcher.ray_deploy import Dashboard

        state = self.state
        return Dashboard(state["dashboard"], Path(state["token_file"]).read_text().strip())

    def replicas(self, model: str = "demo") -> list[dict]:
        app = self.dashboard().details()["applications"][model]
        return app["deployments"]["ModelServer"]["replicas"]


@pytest.fixture(scope="session")
def ray_server():
    from test_readme import ray_commands

    commands = ray_commands()
    assert commands and "--frontend ray" in commands[0], commands
    with socket.socket() as probe:
        busy = probe.connect_ex(("127.0.0.1", int(RAY_PORT))) == 0
    if busy:
        pytest.skip(f"port {RAY_PORT} is taken: the README's Ray server cannot start here")
    started = bash(commands[0])
    server = RayServer(int(RAY_PORT), RUN_DIR, started.stdout + started.stderr)
    try:
        assert started.returncode == 0, server.output[-4000:]
        yield server
    finally:
        state = json.loads((RUN_DIR / "state.json").read_text()) if (RUN_DIR / "state.json").is_file() else {}
        if not state.get("stopped_at"):
            bash(f"./scripts/intgrads.sh --stop -p {RAY_PORT}", timeout=300)
        for name in MADE:
            (ROOT / name).unlink(missing_ok=True)
