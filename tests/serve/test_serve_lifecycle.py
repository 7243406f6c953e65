"""The launcher's life cycle against real TorchServe: foreground start and Ctrl-C, background start and --stop,
archive reuse, and failures that end with a message saying what to do (missing file, bad weights, port taken,
a worker that cannot load its model)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import requests

from intgrads.system import bind_error

from .conftest import LAUNCHER, ROOT, free_port_block, launcher_env, post_json, run_launcher


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _port_free(port: int) -> bool:
    """Nothing listens on ``port``: a server could bind it (a closed connection's TIME_WAIT does not count)."""
    return bind_error(port, "127.0.0.1") is None


@pytest.fixture
def place(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = free_port_block()
    return {"home": tmp_path, "env": launcher_env(tmp), "port": port, "run": tmp_path / "run",
            "store": tmp_path / "model_store",
            "common": ["-p", port, "--run-dir", tmp_path / "run", "--model-store", tmp_path / "model_store"]}


def _wait_for_line(process, needle: str, timeout: float) -> str:
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} never printed:\n{''.join(seen)}")


@pytest.fixture
def stop_afterwards(place):
    """Whatever happens in the test, no server is left running in its run directory."""
    yield
    run_launcher(["--stop", "-p", place["port"], "--run-dir", place["run"]], cwd=place["home"], env=place["env"],
                 timeout=120)


def test_foreground_ctrl_c_then_background_and_stop(place, hf_files, stop_afterwards):
    model = ["--hf-model", hf_files.weights, "--model-name", "tiny"]
    # --foreground: the launcher stays; Ctrl-C (SIGINT) stops TorchServe and its workers.
    # (SIGINT as a terminal sends it: a shell that started these tests in the background made them ignore it)
    process = subprocess.Popen(LAUNCHER + [str(a) for a in model + place["common"] + ["--foreground"]],
                               cwd=place["home"], env=place["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        output = _wait_for_line(process, "Ctrl-C stops the server", timeout=300)
        assert "built " in output
        built_at = (place["store"] / "tiny.mar").stat().st_mtime
        url = f"http://127.0.0.1:{place['port']}/predictions/tiny"
        assert post_json(url, {"sequence": "good", "n_steps": 3}).status_code == 200
        state = json.loads((place["run"] / "state.json").read_text())
        pids = [state["pid"]] + state["worker_pids"]
        assert all(_pid_alive(pid) for pid in pids)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert not any(_pid_alive(pid) for pid in pids)
    assert all(_port_free(place["port"] + i) for i in range(5))

    # Background (the default): the archive is reused, the launcher returns, --stop ends the server.
    started = run_launcher(model + place["common"], cwd=place["home"], env=place["env"])
    assert started.returncode == 0, started.stdout + started.stderr
    engine_changed = any(path.stat().st_mtime > built_at for path in (ROOT / "intgrads").glob("*.py"))
    assert "built " not in started.stdout or engine_changed   # (an edit of the engine meanwhile rebuilds)
    assert f"Stop:  intgrads --stop -p {place['port']}" in started.stdout
    state = json.loads((place["run"] / "state.json").read_text())
    assert post_json(url, {"sequence": "good", "n_steps": 3}).status_code == 200
    again = run_launcher(model + place["common"], cwd=place["home"], env=place["env"])
    assert again.returncode != 0 and "already running" in again.stderr
    # The frontend killed with SIGKILL: --stop still ends its workers and removes its hand-off answers and socket.
    os.kill(state["pid"], signal.SIGKILL)
    deadline = time.time() + 30
    while _pid_alive(state["pid"]) and time.time() < deadline:
        time.sleep(0.2)
    assert (place["run"] / "handoff").is_dir() and (place["run"] / "private").is_dir()
    stopped = run_launcher(["--stop", "-p", place["port"], "--run-dir", place["run"]], cwd=place["home"],
                           env=place["env"], timeout=120)
    assert stopped.returncode == 0 and "no server is running" in stopped.stdout, stopped.stdout
    assert "removed what a stopped one left" in stopped.stdout and "handoff/" in stopped.stdout
    assert not (place["run"] / "handoff").exists() and not (place["run"] / "private").exists()
    assert not any(_pid_alive(pid) for pid in [state["pid"]] + state["worker_pids"])
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{place['port']}/ping", timeout=5)
    nothing = run_launcher(["--stop", "-p", place["port"], "--run-dir", place["run"]], cwd=place["home"],
                           env=place["env"], timeout=120)
    assert nothing.returncode == 0 and nothing.stdout.strip() == f"intgrads: no server is running for {place['run']}"

    # A worker that cannot load its model (a damaged archive): a clear message, the log tail, nothing left running.
    mar = place["store"] / "tiny.mar"
    damaged = mar.with_suffix(".tmp")
    with zipfile.ZipFile(mar) as source, zipfile.ZipFile(damaged, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "weights/config.json":
                data = b"{ this is not json"
            target.writestr(item, data)
    os.replace(damaged, mar)
    failed = run_launcher(model + place["common"] + ["--ready-timeout", "240"], cwd=place["home"], env=place["env"])
    assert failed.returncode != 0
    assert "a worker failed to load its model" in failed.stderr and "model_log.log" in failed.stderr
    state = json.loads((place["run"] / "state.json").read_text())
    assert not _pid_alive(state["pid"])
    assert all(_port_free(place["port"] + i) for i in range(5))


def test_missing_file_bad_weights_no_model(place, tmp_path, minilm_dir):
    missing = run_launcher(["-bp", tmp_path / "nope.pth"] + place["common"], cwd=place["home"], env=place["env"])
    assert missing.returncode != 0 and "nope.pth: no such file" in missing.stderr
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    bad = run_launcher(["-bp", junk, "--tokenizer", minilm_dir] + place["common"], cwd=place["home"], env=place["env"])
    assert bad.returncode == 2 and "cannot load the bert model" in bad.stderr and "junk.pth" in bad.stderr
    none = run_launcher(place["common"], cwd=place["home"], env=place["env"])
    assert none.returncode == 2 and "no model given" in none.stderr
    hf_missing = run_launcher(["--hf-model", tmp_path] + place["common"], cwd=place["home"], env=place["env"])
    assert hf_missing.returncode != 0 and "not a save_pretrained directory" in hf_missing.stderr


def test_port_taken(place, hf_files, stop_afterwards):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", place["port"] + 1))
        squatter.listen(1)
        result = run_launcher(["--hf-model", hf_files.weights] + place["common"], cwd=place["home"], env=place["env"])
    assert result.returncode != 0
    assert f"management port {place['port'] + 1}" in result.stderr and "taken" in result.stderr


def test_help_lists_the_flags():
    result = subprocess.run(LAUNCHER + ["--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("-bp", "--bert-path", "-xlb", "--xlnet-base-path", "-xll", "--xlnet-large-path", "--cuda", "--cpu",
                 "-h HOST", "--host", "-p PORT", "--num-cuda-devs", "-b BASELINE", "--hf-model", "--demo", "--tokenizer",
                 "--config", "--model-name", "--workers-per-gpu", "--workers", "--n-steps", "--method", "--target",
                 "--management-port", "--metrics-port", "--model-store", "--foreground", "--stop", "--help"):
        assert flag in result.stdout, flag


def test_non_loopback_host_keeps_token_auth_on(place, hf_files, stop_afterwards):
    """-h 0.0.0.0: token auth stays on, the printed curl carries the inference key, a request without it is refused."""
    started = run_launcher(["--hf-model", hf_files.weights, "-h", "0.0.0.0"] + place["common"], cwd=place["home"],
                           env=place["env"])
    assert started.returncode == 0, started.stdout + started.stderr
    keys = json.loads((place["run"] / "key_file.json").read_text())
    inference, management = keys["inference"]["key"], keys["management"]["key"]
    curl = next(line for line in started.stdout.splitlines() if line.strip().startswith("curl "))
    assert f'-H "Authorization: Bearer {inference}"' in curl
    assert f"Inference key: {inference}" in started.stdout
    url = f"http://127.0.0.1:{place['port']}/predictions/hf"
    refused = post_json(url, {"sequence": "good", "n_steps": 3})
    assert refused.status_code in (400, 401, 403)
    answered = post_json(url, {"sequence": "good", "n_steps": 3}, headers={"Authorization": f"Bearer {inference}"})
    assert answered.status_code == 200 and answered.content[:2] == b"\x1f\x8b"
    described = requests.get(f"http://127.0.0.1:{place['port'] + 1}/models/hf", timeout=30,
                             headers={"Authorization": f"Bearer {management}"})
    assert described.status_code == 200
    stopped = run_launcher(["--stop", "-p", place["port"], "--run-dir", place["run"]], cwd=place["home"],
                           env=place["env"], timeout=120)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not (place["run"] / "key_file.json").exists()


@pytest.mark.parametrize("cores, models, workers", [(1, 1, 1), (2, 1, 2), (2, 2, 1), (2, 5, 1), (3, 1, 3), (4, 1, 4),
                                                    (8, 1, 4), (16, 1, 4), (16, 2, 2), (16, 3, 1), (16, 5, 1)])
def test_default_cpu_layout(cores, models, workers):
    """One worker per core, at most 4 in all, shared among the models, at least one each."""
    from intgrads.launcher import default_cpu_workers

    assert default_cpu_workers(cores, models) == workers


def test_workers_flag_and_cuda_override_the_default():
    from intgrads.launcher import build_parser, resolve_workers

    parser = build_parser()
    args = parser.parse_args(["--demo"])
    assert args.workers is None
    assert resolve_workers(args, 1, cores=2) == 2 and args.workers == 2
    assert resolve_workers(parser.parse_args(["--demo", "--workers", "1"]), 1, cores=2) == 1
    gpu = parser.parse_args(["--demo", "--cuda", "--num-cuda-devs", "2", "--workers-per-gpu", "3"])
    assert resolve_workers(gpu, 1, cores=2) == 6
    assert resolve_workers(parser.parse_args(["--demo", "--cuda"]), 1, cores=2) == 2    # two per GPU by default


def test_gzip_level_defaults_to_stored():
    from intgrads.launcher import build_parser
    from intgrads.launcher.archive import gzip_level

    parser = build_parser()
    assert gzip_level(parser.parse_args(["--demo"])) == 0
    assert gzip_level(parser.parse_args(["--demo", "--cuda"])) == 0
    assert gzip_level(parser.parse_args(["--demo", "--cuda", "--gzip-level", "1"])) == 1
    assert gzip_level(parser.parse_args(["--demo", "--gzip-level", "0"])) == 0
    assert gzip_level(parser.parse_args(["--demo", "--gzip-level", "1"])) == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["--demo", "--gzip-level", "5"])


def test_a_run_directory_too_deep_for_worker_sockets_is_refused(tmp_path):
    deep = tmp_path / ("d" * 100) / "run"
    result = run_launcher(["--demo", "--run-dir", deep, "-p", free_port_block()], cwd=tmp_path,
                          env=launcher_env(tmp_path), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "too deep for TorchServe's worker sockets" in result.stderr and "--run-dir" in result.stderr


def test_a_planted_link_in_the_run_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (run / "handoff").symlink_to(tmp_path / "elsewhere")
    result = run_launcher(["--demo", "--run-dir", run, "-p", free_port_block()], cwd=tmp_path,
                          env=launcher_env(tmp_path), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{run / 'handoff'} is a symbolic link" in result.stderr and "Traceback" not in result.stderr
    assert (run / "handoff").is_symlink() and (tmp_path / "elsewhere").is_dir()   # neither followed nor removed


def test_torchserve_only_flags_are_refused_on_ray(tmp_path):
    for flags in (["--batch-size", "4"], ["--metrics-port", "9999"], ["--ray-address", "127.0.0.1:8265"]):
        frontend = [] if flags[0] == "--ray-address" else ["--frontend", "ray"]
        result = run_launcher(["--demo", *frontend, *flags, "-p", free_port_block()], cwd=tmp_path,
                              env=launcher_env(tmp_path), timeout=120)
        assert result.returncode == 2 and flags[0] in result.stderr, result.stderr
