"""The Ray Serve front end, end to end: real Ray (a head the launcher starts, then a second node), real HTTP.

In order (the tests share one cluster, started by the README's own command): the same contract as TorchServe,
request by request, against the TorchServe server of these tests on the same demo model; what TorchServe could not do; the client's hand-off
and a streamed answer; two nodes and a replica killed while the client runs; the README's Ray commands, whose
stop leaves no Ray process."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
import torch
import yaml

import intgrads
from intgrads.client import Client, read_index
from intgrads.engine.memory import REUSE_MEMORY_ENV
from intgrads.launcher.ray_cluster import RayPorts, cluster_processes, free_block, ray_env
from test_readme import ray_commands

from .conftest import MADE, RAY_PORT, ROOT, bash
from .test_serve_requests import BAD_REQUESTS

JSON = {"Content-Type": "application/json"}
LONG = ("the film was slow at first but the music and the acting made every scene feel honest and warm , "
        "and by the end the whole story seemed bright , charming and strangely moving")
GOOD_REQUESTS = [
    ("default", dict(json={"sequence": "The food was awful.", "n_steps": 8})),
    ("options", dict(json={"sequence": "A wonderful film.", "n_steps": 6, "method": "riemann_trapezoid",
                           "baseline": "pad", "target": "predicted", "keep_special_tokens": True,
                           "internal_batch_size": 4})),
    ("sequences", dict(json={"sequences": ["A fine film.", "Dull and far too long."], "n_steps": 4})),
    ("float16-some-outputs", dict(json={"sequence": "good", "n_steps": 4, "dtype": "float16",
                                        "outputs": ["integrated_gradients", "step_sizes", "tokens"]})),
    ("compact", dict(json={"sequence": "good", "n_steps": 4, "outputs": ["integrated_gradients", "layer_input",
                                                                       "layer_baseline", "logits"]})),
    ("bfloat16", dict(json={"sequence": "good", "n_steps": 4, "precision": "bfloat16"})),
    ("summary", dict(json={"sequence": "The food was awful.", "n_steps": 4},
                     headers={"Accept": "application/json"})),
    ("text-plain", dict(data="The food was awful.".encode(), headers={"Content-Type": "text/plain"})),
    ("form", dict(data={"sequence": "The food was awful.", "n_steps": "4"})),
    ("streamed", dict(json={"sequence": LONG})),
]
# the hints that name TorchServe's limits (it drops the query string) are not Ray's: compared by status only
STATUS_ONLY = {"empty-body"}


def _send(base: str, kwargs: dict, route: str = "predictions") -> requests.Response:
    return requests.post(f"{base}/{route}/demo", timeout=300, **kwargs)


def _comparable(response: requests.Response, base: str):
    kind = response.headers.get("Content-Type", "").split(";")[0]
    if kind == "application/gzip":
        return kind, gzip.decompress(response.content)   # torch.save's bytes (the gzip header holds a time)
    return kind, response.text.replace(base, "BASE")


def test_the_same_contract_as_torchserve(server, ray_server):
    """Every request of the list to both servers: the same status, content type, JSON error or answer bytes (CPU,
    float32, one torch thread per worker), summary header and timing headers; big answers streamed by both."""
    failures, compared = [], 0
    routes = [("predictions", name, kwargs) for name, kwargs in GOOD_REQUESTS]
    routes += [("predictions", name, kwargs) for name, kwargs, _, _ in BAD_REQUESTS]
    routes += [("explanations", "explanations", dict(json={"sequence": "The food was awful.", "n_steps": 4}))]
    for route, name, kwargs in routes:
        torchserve, ray = _send(server.base, kwargs, route), _send(ray_server.base, kwargs, route)
        compared += 1
        if torchserve.status_code != ray.status_code:
            failures.append(f"{name}: TorchServe {torchserve.status_code} {torchserve.text[:200]}, Ray "
                            f"{ray.status_code} {ray.text[:200]}")
            continue
        if name in STATUS_ONLY:
            continue
        if _comparable(torchserve, server.base) != _comparable(ray, ray_server.base):
            failures.append(f"{name}: different bodies ({torchserve.text[:150]!r} / {ray.text[:150]!r})")
        for header in ("X-Intgrads-Summary",):
            if torchserve.headers.get(header) != ray.headers.get(header):
                failures.append(f"{name}: {header} {torchserve.headers.get(header)} / {ray.headers.get(header)}")
        for header in ("X-Intgrads-Engine-Ms", "X-Intgrads-Encode-Ms"):
            if (header in torchserve.headers) != (header in ray.headers):
                failures.append(f"{name}: {header} on one server only")
        if name == "streamed" and not (torchserve.headers.get("Transfer-Encoding") == "chunked"
                                       == ray.headers.get("Transfer-Encoding") and len(ray.content) > 4 << 20):
            failures.append(f"{name}: not streamed by both ({len(ray.content)} bytes)")
    print(f"\n[ray] parity: {compared} requests compared, {len(failures)} differences")
    assert compared == len(GOOD_REQUESTS) + len(BAD_REQUESTS) + 1 and not failures, "\n".join(failures)


def test_what_torchserve_could_not_do(server, ray_server):
    bare = dict(data=b'{"sequence": "The food was awful.", "n_steps": 4}',   # what the old tool's bare curl -d sends
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert _send(server.base, bare).status_code == 400
    answer = intgrads.decode_answer(_send(ray_server.base, bare).content)
    assert answer["n_steps"] == 4 and answer["tokens"][1:5] == ["the", "food", "was", "awful"]
    url = ray_server.url()
    assert intgrads.decode_answer(requests.post(url + "?n_steps=5", json={"sequence": "good"}).content)["n_steps"] == 5
    for query, body, words in (("?n_steps=5", {"sequence": "good", "n_steps": 6}, "in the query string and 6 in the body"),
                               ("?n_steps=5&n_steps=6", {"sequence": "good"}, 'the query string gives "n_steps" twice'),
                               ("?colour=red", {"sequence": "good"}, "unknown field(s) 'colour' in the query string")):
        refused = requests.post(url + query, json=body)
        assert refused.status_code == 400 and words in refused.json()["error"], refused.text
    twice = requests.post(url, data="sequence=a&sequence=b", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert twice.status_code == 400 and 'the form gives "sequence" twice' in twice.json()["error"]
    metrics = requests.get(f"{ray_server.base}/metrics").text
    counted = re.search(r'^IntgradsRequests\{ModelName="demo",Status="200"\} (\d+)', metrics, re.M)
    assert counted and int(float(counted.group(1))) >= 10, metrics[:2000]
    for series in ("IntgradsEngineSeconds", "IntgradsEncodeSeconds", "IntgradsTokenSteps", "IntgradsAnswerBytes",
                   "IntgradsWarnings"):
        assert re.search(rf'^{series}\{{ModelName="demo"\}} [0-9.e+-]+$', metrics, re.M), series
    assert requests.get(f"{ray_server.base}/ping").json() == {"status": "Healthy"}
    described = requests.get(f"{ray_server.base}/models/demo").json()[0]
    assert described["limits"]["max_steps"] == 500 and described["family"] == "hf"
    assert requests.post(f"{ray_server.base}/predictions/nope", json={}).json()["message"] == "Model not found: nope"


def test_a_causal_lm_on_both_front_ends(server, ray_server, worker_threads, tmp_path):
    """The demo causal LM served by TorchServe and by Ray Serve: the same answer bytes, equal to the engine's in this
    process on the same files; its description says causal LM; a classifier's request is refused with a 400; a
    JSONL file of prompts through intgrads-client's Client and through the batch job's worker gives the same
    answers."""
    from intgrads.launcher.demo_lm import DEMO_LM_NAME

    request = {"sequence": "The movie was good but the", "target": " ending felt rushed", "n_steps": 6,
               "interpolate": "prompt", "outputs": ["token_attributions", "step_token_attributions",
                                                    "integrated_gradients"]}
    torchserve, ray = (requests.post(f"{base}/predictions/demo-lm", json=request, timeout=300)
                       for base in (server.base, ray_server.base))
    assert torchserve.status_code == ray.status_code == 200, (torchserve.text[:300], ray.text[:300])
    assert gzip.decompress(torchserve.content) == gzip.decompress(ray.content)
    served = intgrads.decode_answer(ray.content)
    bundle = intgrads.load_model("hf", server.model_store / DEMO_LM_NAME)
    before = torch.get_num_threads()
    torch.set_num_threads(worker_threads)
    try:
        local = intgrads.attribute_lm(bundle, request["sequence"], target=request["target"], n_steps=6,
                                      interpolate="prompt", outputs=["integrated_gradients"], chunk_tokens=3200)
    finally:
        torch.set_num_threads(before)
    assert served["kind"] == "causal_lm" and served["tokens"] == local["tokens"]
    for key in ("token_attributions", "step_token_attributions", "integrated_gradients", "scores"):
        torch.testing.assert_close(served[key], local[key], atol=1e-5, rtol=1e-5)
    assert "intermediates" not in served and served["warnings"] == local["warnings"]
    generated = requests.post(ray_server.url("demo-lm"), json={"messages": [{"role": "user", "content": "hi"}],
                                                               "max_new_tokens": 3, "n_steps": 4},
                              headers={"Accept": "application/json"}, timeout=300).json()
    assert generated["generated"] is True and 1 <= len(generated["target_ids"]) <= 3
    assert requests.get(f"{ray_server.base}/models/demo-lm", timeout=60).json()[0]["kind"] == "causal_lm"
    meta = server.manage("GET", "/models/demo-lm?customized=true").json()[0]["customizedMetadata"]
    assert (json.loads(meta) if isinstance(meta, str) else meta)["kind"] == "causal_lm"
    for base in (server.base, ray_server.base):
        refused = requests.post(f"{base}/predictions/demo-lm", json={"sequence": "x", "target": 1}, timeout=60)
        assert refused.status_code == 400 and "target must be text" in refused.json()["error"]
    _client_and_batch_agree(server, worker_threads, tmp_path, server.model_store / DEMO_LM_NAME)


def _client_and_batch_agree(server, worker_threads, tmp_path, model_dir):
    import numpy as np

    from intgrads.batch.worker import AnswerWriter
    from intgrads.client.inputs import read_sentences
    from intgrads.serving.request import DEFAULT_LIMITS

    source = tmp_path / "prompts.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in (
        {"sequence": "The movie was good but the", "target": " ending felt rushed"},
        {"messages": [{"role": "user", "content": "Is the movie good?"}], "target": " yes"})) + "\n")
    items = read_sentences(source)
    report = Client([server.url("demo-lm")]).run(items, tmp_path / "client", n_steps=4, progress=False)
    assert report.failed == 0, report.errors
    index = read_index(tmp_path / "client" / "index.jsonl")
    assert sorted(index) == [1, 2] and all(record.get("file") and record["kind"] == "causal_lm"
                                           for record in index.values()), index
    batch_out = tmp_path / "batch"
    batch_out.mkdir()
    from intgrads.batch import worker

    node_id, worker._node_id = worker._node_id, lambda: None   # outside Ray: asking Ray would start a cluster
    writer = AnswerWriter({"model": {"family": "hf", "weights": str(model_dir), "name": "demo-lm"}, "device": "cpu",
                           "threads": worker_threads, "output": str(batch_out), "fields": {"n_steps": 4},
                           "options": {"n_steps": 4}, "limits": {**DEFAULT_LIMITS, "max_work": 0,
                                                                 "chunk_tokens": 3200}})
    try:
        rows = writer({"line": np.array([1, 2]), "sentence": np.array([str(s) for _, s in items], dtype=object)})
    finally:
        worker._node_id = node_id
    records = {int(line): json.loads(record) for line, record in zip(rows["line"], rows["record"])}
    for line, record in index.items():
        assert records[line].get("file"), records[line]
        client_answer = intgrads.load_answer(tmp_path / "client" / record["file"])
        batch_answer = intgrads.load_answer(batch_out / records[line]["file"])
        assert client_answer["tokens"] == batch_answer["tokens"]
        torch.testing.assert_close(client_answer["token_attributions"], batch_answer["token_attributions"],
                                   atol=1e-6, rtol=1e-5)


def test_control_ports_are_behind_the_token(ray_server):
    state = ray_server.state
    token = Path(state["token_file"])
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    api = f"http://{state['dashboard']}/api/serve/applications/"
    assert requests.get(api, timeout=30).status_code == 401
    assert requests.get(api, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 403
    assert state["dashboard"].startswith("127.0.0.1:")
    from intgrads.launcher.tsconfig import public_host

    public = public_host("0.0.0.0")
    if not public.startswith("127."):   # the dashboard and the proxy are not reachable from another address
        for port in (int(state["dashboard"].split(":")[1]), ray_server.port):
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://{public}:{port}/", timeout=5)
    # a driver without the token is refused by the GCS (two tries of its session name, not Ray's twenty)
    env = {**ray_env(None), "RAY_NUM_REDIS_GET_RETRIES": "2"}
    probe = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={state['gcs']!r})"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode != 0 and "Authentication token is missing or incorrect" in probe.stderr, probe.stderr[-2000:]


def test_the_client_takes_files_and_streamed_answers(ray_server, tmp_path):
    sentences = ["A wonderful, moving film.", "The food was awful.", LONG]
    client = Client(ray_server.url(), retries=0)
    report = client.run(sentences, tmp_path / "out", n_steps=6, concurrency=2, progress=False)
    assert (report.answered, report.failed) == (3, 0) and client.handoff_fallbacks == []
    assert list((ray_server.run_dir / "handoff").iterdir()) == []   # every file was taken
    bodies = Client(ray_server.url(), retries=0, handoff=False)
    report = bodies.run(sentences, tmp_path / "bodies", n_steps=6, progress=False)
    assert report.answered == 3
    for line in (1, 2, 3):
        assert gzip.decompress((tmp_path / "out" / f"{line:06d}.gzip").read_bytes()) == \
            gzip.decompress((tmp_path / "bodies" / f"{line:06d}.gzip").read_bytes())


def test_the_kuberay_export_holds_the_config_the_launcher_deployed(ray_server, tmp_path):
    """scripts/export_kuberay.py with the README command's flags: its RayService's serveConfigV2 holds the same
    applications the launcher deployed here, but for where the archives are (the volume's) and the hand-off
    folder (a cluster has none)."""
    from intgrads.system import usable_cores

    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "export_kuberay.py"), "--demo", "--demo-lm", "-o",
                             str(tmp_path / "out"), "--node-cpus", str(usable_cores()), "--nodes", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = yaml.safe_load((tmp_path / "out" / "rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService" and (tmp_path / "out" / "model-store" / "demo.mar").is_file()
    exported = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"]
    deployed = {app["name"]: app for app in ray_server.dashboard().applications()}

    def comparable(app):
        args = {key: value for key, value in app["args"].items() if key not in ("handoff_dir", "handoff_max_bytes")}
        if "archive" in args:
            args["archive"] = Path(args["archive"]).name
        return {**app, "args": args}

    assert [app["name"] for app in exported] == ["demo", "demo-lm", "intgrads"]
    for app in exported:
        assert comparable(app) == comparable(deployed[app["name"]]), app["name"]


def _start_second_node(ray_server) -> RayPorts:
    state = ray_server.state
    folder = Path(state["ray_dir"]) / "n2"
    ports = free_block(ray_server.port)
    low, high = ports.workers
    command = [str(Path(sys.executable).with_name("ray")), "start", "--address", state["gcs"],
               "--temp-dir", str(folder), "--node-manager-port", str(ports.node_manager),
               "--object-manager-port", str(ports.object_manager), "--metrics-export-port", str(ports.metrics_export),
               "--dashboard-agent-listen-port", str(ports.agent_listen),
               "--dashboard-agent-grpc-port", str(ports.agent_grpc),
               "--runtime-env-agent-port", str(ports.runtime_env_agent), "--min-worker-port", str(low),
               "--max-worker-port", str(high), "--num-cpus", "2", "--resources", '{"second_node": 1}']
    folder.mkdir(parents=True, exist_ok=True)
    env = ray_env(Path(state["token_file"]), ports)
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return ports


def test_two_nodes_and_a_replica_killed_while_the_client_runs(ray_server, tmp_path, engine_bundles, worker_threads):
    """A second Ray node joins; a third replica lands on it (the head's CPUs are taken). While intgrads-client
    sends 40 sentences, one replica is killed with SIGKILL: every sentence is answered once, each file equal to the
    engine's, and Serve replaces the replica."""
    _start_second_node(ray_server)
    scaled = bash(f"./scripts/intgrads.sh --scale demo=3 -p {RAY_PORT}", timeout=600)
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr
    replicas = ray_server.replicas()
    assert len({replica["node_id"] for replica in replicas}) == 2 and len(replicas) == 3
    for replica in replicas:   # each started with glibc told to reuse freed memory (the engine runs in a thread)
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{replica['pid']}/environ").read_text().split("\0") if "=" in item)
        assert {name: environ.get(name) for name in REUSE_MEMORY_ENV} == REUSE_MEMORY_ENV, replica
    sentences = [f"review number {i}: the {'plot' if i % 2 else 'music'} was {'fine' if i % 3 else 'dull'}"
                 for i in range(40)]
    victim = replicas[0]["pid"]
    client = Client(ray_server.url())   # the client's default retries (15-31 s of waits) while Serve routes round

    def kill_soon():
        time.sleep(1.5)
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    report = client.run(sentences, tmp_path / "out", n_steps=8, concurrency=4, progress=False)
    killer.join()
    records = read_index(tmp_path / "out" / "index.jsonl")
    assert (report.answered, report.failed) == (40, 0) and sorted(records) == list(range(1, 41))
    before = torch.get_num_threads()
    torch.set_num_threads(worker_threads)
    try:
        for line, sentence in enumerate(sentences, 1):
            served = intgrads.load_answer(tmp_path / "out" / records[line]["file"])
            expected = intgrads.attribute(engine_bundles["demo"], sentence, n_steps=8)
            for key in ("integrated_gradients", "intermediate_gradients", "logits"):
                assert torch.equal(served[key], expected[key]), (line, key)
    finally:
        torch.set_num_threads(before)
    deadline = time.time() + 300
    while time.time() < deadline:
        now = ray_server.replicas()
        if len(now) == 3 and all(r["state"] == "RUNNING" for r in now) and victim not in {r["pid"] for r in now}:
            break
        time.sleep(1)
    else:
        pytest.fail(f"the killed replica was not replaced: {ray_server.replicas()}")
    print(f"\n[ray] killed replica {victim}; retried requests: {sum(r['attempts'] > 1 for r in records.values())}")


def _owned(folder: Path) -> bool:
    """``folder`` is this user's (and still there: another run may sweep its own away meanwhile)."""
    try:
        return folder.lstat().st_uid == os.getuid()
    except OSError:
        return False


def test_the_readme_ray_commands_and_stop_leave_no_ray_process(ray_server):
    state = ray_server.state
    outputs = {}
    for command in ray_commands()[1:]:
        result = bash(command, timeout=600)
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-2000:])
        outputs[command] = result.stdout
    with gzip.open(ROOT / "ray_answer.gzip", "rb") as fobj:   # the old tool's snippet
        answer = torch.load(io.BytesIO(fobj.read()))
    assert answer["tokens"][1:5] == ["the", "food", "was", "awful"] and answer["n_steps"] == 50
    summary = next(json.loads(out) for command, out in outputs.items() if "n_steps=20" in command)
    assert summary["n_steps"] == 20 and summary["label"] == "negative"
    lm = next(json.loads(out) for command, out in outputs.items() if "demo-lm" in command)
    assert lm["kind"] == "causal_lm" and lm["n_steps"] == 8 and len(lm["token_attributions"]) == len(lm["target_ids"])
    assert any("IntgradsRequests{" in out for out in outputs.values())
    assert any("scaled to 1 replica" in out for out in outputs.values())
    assert cluster_processes(Path(state["ray_dir"])) == {}   # the head and the second node: nothing left
    from intgrads.system import OWNER_FILE, pid_alive

    unpacked = [folder for folder in Path(tempfile.gettempdir()).glob("intgrads-model-*")
                if _owned(folder) and (folder / OWNER_FILE).is_file()
                and not pid_alive(int((folder / OWNER_FILE).read_text()))]
    assert unpacked == []   # the replicas' unpacked archives went with them
    assert not (ray_server.run_dir / "private").exists() and not (ray_server.run_dir / "handoff").exists()
    for name in MADE:
        (ROOT / name).unlink(missing_ok=True)
