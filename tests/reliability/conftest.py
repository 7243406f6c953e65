"""Fixtures for the reliability suite: real TorchServe servers on the demo model, started through the
launcher like tests/serve (each server its own TMPDIR, ports and run directory), one model store shared by them
so the demo model and its archive are built once, and one Ray Serve server (``--frontend ray``) for the Ray
front end's categories; and the per-category tally printed at the end, by front end."""

from __future__ import annotations

import gzip
import io
import json
import os
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import requests
import torch

from conftest import TALLY_DIR
from serve.conftest import Server, free_port_block, launcher_env, post_json, run_launcher

DEMO = "demo"
REFERENCE = {"sequence": "the acting was wonderful but the plot was thin.", "n_steps": 8}

# category -> [cases tried, cases passed]; filled by the tests through the ``tally`` fixture
TALLY: "OrderedDict[str, list]" = OrderedDict()
FIGURES: list = []   # lines printed under the table (latencies...)
CATEGORIES = ("1 bad input", "2 load", "3 faults", "4 determinism", "5 security", "6 shared server",
              "ray 1 slow uploads", "ray 2 queue", "ray 3 folder", "ray 4 stop", "ray 5 batch job",
              "ray 6 keys, hints")


class Tally:
    def __init__(self, category: str):
        self.category = category
        TALLY.setdefault(category, [0, 0])

    def case(self, passed: bool) -> bool:
        TALLY[self.category][0] += 1
        TALLY[self.category][1] += int(bool(passed))
        return passed


@pytest.fixture
def tally():
    return Tally


def pytest_sessionfinish(session):
    """Leave this process's tally where the summary finds it (tests/conftest.py: one file per test process)."""
    folder = os.environ.get(TALLY_DIR)
    if TALLY and folder and os.path.isdir(folder):
        with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as handle:
            json.dump({"tally": TALLY, "figures": FIGURES}, handle)


def summary_lines(tallies: list) -> list:
    """The table of the reliability cases, by front end and category, from the tallies of every test process."""
    merged: dict = {}
    figures = []
    for tally in tallies:
        for category, (tried, passed) in tally["tally"].items():
            merged.setdefault(category, [0, 0])
            merged[category][0] += tried
            merged[category][1] += passed
        figures += tally["figures"]
    if not merged:
        return []
    lines = [f"{'front end':<10} {'category':<18} {'cases tried':>11} {'passed':>7}"]
    for category in sorted(merged, key=lambda c: CATEGORIES.index(c) if c in CATEGORIES else 99):
        tried, passed = merged[category]
        front, name = ("ray", category[4:]) if category.startswith("ray ") else ("torchserve", category)
        lines.append(f"{front:<10} {name:<18} {tried:>11} {passed:>7}")
    lines.append(f"{'total':<29} {sum(v[0] for v in merged.values()):>11} {sum(v[1] for v in merged.values()):>7}")
    return lines + figures


# ------------------------------------------------------------------------------------------------ servers
def decompressed(response: requests.Response) -> bytes:
    """The raw torch.save bytes of a gzip answer."""
    assert response.status_code == 200, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/gzip")
    return gzip.decompress(response.content)


def load(raw: bytes):
    return torch.load(io.BytesIO(raw), weights_only=True)


def same_tensors(a, b) -> bool:
    """Answers (dicts, or lists of them) equal key by key; tensors bitwise (dtype, shape and bytes)."""
    if isinstance(a, (list, tuple)):
        return isinstance(b, type(a)) and len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape):
            return False
        flat_a, flat_b = a.contiguous().reshape(-1), b.contiguous().reshape(-1)
        if a.dtype.is_floating_point:
            flat_a, flat_b = flat_a.view(torch.uint8), flat_b.view(torch.uint8)
        return torch.equal(flat_a, flat_b)
    return type(a) is type(b) and a == b


@pytest.fixture(scope="package")
def shared_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability-store")


def launch(home: Path, store: Path, args: list, port: int | None = None, run_dir: Path | None = None,
           check: bool = True):
    """Start the launcher in ``home`` (its own TMPDIR, ports, run dir); returns (Server, CompletedProcess)."""
    tmp = home / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    port = port or free_port_block()
    run_dir = run_dir or home / "run"
    env = launcher_env(tmp)
    started = time.time()
    result = run_launcher(list(args) + ["-p", port, "--model-store", store, "--run-dir", run_dir], cwd=home, env=env,
                          timeout=600)
    output = result.stdout + result.stderr
    if check and result.returncode != 0:
        pytest.fail(f"the launcher failed (exit {result.returncode}):\n{output}")
    server = Server(port=port, run_dir=run_dir, model_store=store, home=home, output=output,
                    start_seconds=time.time() - started, env=env, models=[DEMO])
    return server, result


@pytest.fixture(scope="package")
def demo_server(tmp_path_factory, shared_store):
    """The demo model, one CPU worker (``--workers 1``: the fault and determinism tests scale from one), otherwise
    default settings (batch size 1), bound to the default host."""
    home = tmp_path_factory.mktemp("rel-demo")
    server, _ = launch(home, shared_store, ["--demo", "--model-name", DEMO, "--workers", "1"])
    print(f"\n[reliability] demo server up in {server.start_seconds:.1f} s")
    holder = {"server": server}
    try:
        yield holder   # a holder: the restart test replaces the server in it
    finally:
        holder["server"].stop()


@pytest.fixture(scope="package")
def demo_bundle(demo_server, shared_store):
    """The demo model loaded in this process (for checking odd-but-valid answers)."""
    import intgrads
    from intgrads.launcher.demo import DEMO_NAME

    return intgrads.load_model("hf", shared_store / DEMO_NAME)


def answer_of(server: Server, payload: dict, **kwargs) -> bytes:
    return decompressed(post_json(server.url(DEMO), payload, **kwargs))


OPEN = "demo-open"
OPEN_LIMITS = {"max_steps": 64, "max_tokens": 32, "max_sequences": 3, "max_chars": 2000, "max_body_bytes": 8192}


@pytest.fixture(scope="package")
def open_server(tmp_path_factory, shared_store):
    """The demo model as ``demo-open`` bound to 0.0.0.0 (token auth on; requests still go to 127.0.0.1 only),
    from a copy of config.properties with job_queue_size=2, and with small --max-* caps."""
    from serve.conftest import ROOT

    home = tmp_path_factory.mktemp("rel-open")
    config = home / "config.properties"
    lines = [line for line in (ROOT / "config.properties").read_text().splitlines()
             if not line.startswith("job_queue_size=")]
    config.write_text("\n".join(lines + ["job_queue_size=2"]) + "\n")
    args = ["--demo", "--model-name", OPEN, "-h", "0.0.0.0", "--ts-config", config]
    for name, value in OPEN_LIMITS.items():
        args += ["--" + name.replace("_", "-"), value]
    server, _ = launch(home, shared_store, args)
    server.models = [OPEN]
    keys = __import__("json").loads((server.run_dir / "key_file.json").read_text())
    server.keys = {"inference": keys["inference"]["key"], "management": keys["management"]["key"]}
    print(f"\n[reliability] open server up in {server.start_seconds:.1f} s")
    try:
        yield server
    finally:
        server.stop()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


RAY_BODY_SECONDS = 5   # the Ray server's --body-timeout: a stalled upload is answered 408 and closed after it


@pytest.fixture(scope="package")
def ray_reliability_server(tmp_path_factory, shared_store):
    """The demo model on Ray Serve (``--frontend ray``): one replica, bound to 0.0.0.0 (the inference key on;
    requests still go to 127.0.0.1), uploads cut after RAY_BODY_SECONDS. Its own Ray head, started once for the
    Ray categories; its last test stops it with ``--stop``."""
    pytest.importorskip("ray")
    home = tmp_path_factory.mktemp("rel-ray")
    server, _ = launch(home, shared_store, ["--demo", "--model-name", DEMO, "--frontend", "ray", "--workers", "1",
                                            "-h", "0.0.0.0", "--body-timeout", RAY_BODY_SECONDS])
    server.state = lambda: __import__("json").loads((server.run_dir / "state.json").read_text())
    server.key = __import__("json").loads((server.run_dir / "key_file.json").read_text())["inference"]["key"]
    print(f"\n[reliability] Ray server up in {server.start_seconds:.1f} s")
    try:
        yield server
    finally:
        if not server.state().get("stopped_at"):
            server.stop()
